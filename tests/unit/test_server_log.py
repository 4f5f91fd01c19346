from abtest.server.log import parse_memory_breakdown

LOG = """
0.00.1 I load_tensors: offloaded 25/25 layers to GPU
0.00.1 I load_tensors:   CPU_Mapped model buffer size = 11223.61 MiB
0.00.1 I load_tensors:        CUDA0 model buffer size =  1234.50 MiB
0.00.2 I llama_kv_cache:      CUDA0 KV buffer size =    96.00 MiB
0.00.3 I sched_reserve:      CUDA0 compute buffer size =   210.00 MiB
0.00.3 I llama_context:  CUDA_Host  output buffer size =     0.58 MiB
9.99.9 I common_memory_breakdown_print: |   - CUDA0 (H100 80GB HBM3) | 81079 = 79302 + ( 1064 = 661 + 192 + 210) + 712 |
9.99.9 I common_memory_breakdown_print: |   - Host                   |                 11416 = 11223 +      96 +      97                |
"""


def test_parses_buffers_offload_and_exit_table() -> None:
    out = parse_memory_breakdown(LOG)
    assert out["offloaded_layers"] == 25 and out["total_layers"] == 25
    assert out["buffers"]["CUDA0"] == {"model_mib": 1234.5, "kv_mib": 96.0, "compute_mib": 210.0}
    assert out["buffers"]["CPU_Mapped"]["model_mib"] == 11223.61
    assert out["buffers"]["CUDA_Host"]["output_mib"] == 0.58
    cuda = out["exit_table"]["CUDA0"]
    assert cuda["self_mib"] == 1064 and cuda["model_mib"] == 661 and cuda["description"] == "H100 80GB HBM3"
    assert out["exit_table"]["Host"] == {"self_mib": 11416, "model_mib": 11223, "context_mib": 96, "compute_mib": 97}


def test_empty_log_gives_empty_breakdown() -> None:
    assert parse_memory_breakdown("nothing here") == {}
