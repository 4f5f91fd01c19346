"""The VRAM prediction per GPU (`models.split`) on the presets' tensor plans: the per-device shares
add up to the single-device prediction, the layers follow -ts as load_tensors assigns them, and
--n-cpu-moe takes expert bytes off the first devices."""

from __future__ import annotations

import dataclasses

import pytest

from abtest.errors import ConfigError
from abtest.models.desc import preset_model
from abtest.models.split import (
    HOST,
    Split,
    even_and_skews,
    layer_devices,
    parse_tensor_split_grid,
    predict_devices,
    tensor_devices,
)
from abtest.models.vram import ContextParams, kv_cache_bytes, placement, predict

TINY = ("tiny-moe", "gpt-oss-20b-arch-tiny", "qwen3-30b-a3b-arch-tiny", "phi-3.5-moe-arch-tiny",
        "deepseek-moe-16b-arch-tiny", "deepseek-v2-lite-arch-tiny")
CTX = ContextParams(n_ctx=4096)


def _ncmoes(n_layer: int) -> list[int]:
    return sorted({0, 1, n_layer // 2, n_layer})


@pytest.mark.parametrize("preset", TINY)
def test_the_shares_add_up_to_the_single_device_weights_and_kv(preset: str) -> None:
    m = preset_model(preset)
    for n in _ncmoes(m.n_layer):
        one = placement(m, n)
        for ts in [(1, 1), (3, 1), (1, 3), (2, 1, 1), (0, 1)]:
            p = predict_devices(m, Split.of(len(ts), ts, n), CTX)
            assert sum(d.weights_bytes for d in p.devices) == one.gpu_bytes, (preset, n, ts)
            assert abs(sum(d.kv_bytes for d in p.devices) - kv_cache_bytes(m, CTX)) <= len(ts), (preset, n, ts)
            assert round(p.host_weights_mib * 2**20) == pytest.approx(one.host_bytes, abs=0.01 * 2**20)


@pytest.mark.parametrize("preset", TINY)
def test_one_device_is_the_single_device_prediction(preset: str) -> None:
    m = preset_model(preset)
    for n in _ncmoes(m.n_layer):
        single = predict(m, n, CTX)
        (d,) = predict_devices(m, Split.of(1, (), n), CTX).devices
        assert (d.weights_mib, d.kv_mib, d.compute_mib, d.total_mib) == (
            single.weights_mib, single.kv_mib, single.compute_mib, single.total_mib)
        # -sm none -mg 1 over two devices: the whole model on device 1, the same figures
        (one,) = predict_devices(m, Split(2, "none", (), 1, Split.of(1, (), n).overrides), CTX).devices
        assert one.device == 1 and one.total_mib == single.total_mib


def test_layers_follow_the_cumulative_tensor_split_as_load_tensors_assigns_them() -> None:
    # 48 blocks + the output layer = 49 offloaded layers; layer il goes to the first device whose
    # cumulative share exceeds il / 49
    even = layer_devices(48, Split.of(2, (1, 1)))
    assert even[:25] == [0] * 25 and even[25:] == [1] * 24  # 0-24, then 25-47 and the output layer
    skew = layer_devices(48, Split.of(2, (3, 1)))
    assert skew.count(0) == 37 and skew[-1] == 1  # il/49 < 0.75 for il <= 36
    assert layer_devices(48, Split.of(2, (1, 0))) == [0] * 49  # a zero share: nothing on device 1
    three = layer_devices(48, Split.of(3, (1, 1, 1)))
    assert [three.count(d) for d in range(3)] == [17, 16, 16]
    assert layer_devices(48, Split.of(3, (1, 1))) == layer_devices(48, Split.of(3, (1, 1, 0)))
    # no -ts: by free memory, 3:1 free is -ts 3,1
    assert layer_devices(48, Split(2, free_mib=(30_000.0, 10_000.0))) == skew
    assert layer_devices(48, Split(2)) == even  # free memory unknown: even
    # -ngl 20: the first 29 layers (28 blocks and none of the output) stay on the host
    part = layer_devices(48, Split.of(2, (1, 1), n_gpu_layers=20))
    assert part[:29] == [HOST] * 29 and set(part[29:]) == {0, 1}


def test_weights_follow_the_proportions_of_tensor_split() -> None:
    m = preset_model("qwen3-30b-a3b-arch")
    for ts in even_and_skews(2):
        p = predict_devices(m, Split.of(2, ts), CTX)
        layers = [len(d.layers) for d in p.devices]
        assert abs(layers[0] / sum(layers) - ts[0] / sum(ts)) <= 1 / sum(layers)
        w = [d.weights_mib for d in p.devices]
        # blocks are equal in size; the output layer (lm head) is on the last device
        assert abs(w[0] / sum(w) - ts[0] / sum(ts)) < 0.05, (ts, w)


def test_n_cpu_moe_takes_experts_off_the_first_devices_layers() -> None:
    m = preset_model("qwen3-30b-a3b-arch")
    base = predict_devices(m, Split.of(2, (1, 1)), CTX)
    mib = [b / 2**20 for b in m.layer_expert_bytes]  # not all equal: Q4_K_M gives some layers more bits
    for n in (4, 12, 25):
        p = predict_devices(m, Split.of(2, (1, 1), n), CTX)
        assert p.devices[0].expert_mib == pytest.approx(base.devices[0].expert_mib - sum(mib[:n]), abs=0.05)
        assert p.devices[1].expert_mib == base.devices[1].expert_mib  # device 1's layers (25-47) untouched
        assert p.devices[0].layers == base.devices[0].layers  # the layers stay where they were
        assert not p.pipeline_parallel
    p = predict_devices(m, Split.of(2, (1, 1), 30), CTX)  # past device 0's 25 layers: device 1 loses 5
    assert p.devices[0].expert_mib == 0.0
    assert p.devices[1].expert_mib == pytest.approx(base.devices[1].expert_mib - sum(mib[25:30]), abs=0.05)
    # op offload: only the first device copies host-resident experts in for a prompt batch
    assert p.devices[0].compute_mib > base.devices[0].compute_mib
    assert p.devices[1].compute_mib < p.devices[0].compute_mib


def test_per_gpu_overrides_move_tensors_to_the_named_device() -> None:
    m = preset_model("qwen3-30b-a3b-arch-tiny")
    split = Split.from_argv(["-ts", "1,0", "-ot", r"blk\.[2-3]\.ffn_.*_exps=CUDA1"], 2)
    place = tensor_devices(m, split)
    assert {place[t.name] for t in m.tensors if m.is_expert(t) and m.layer_of(t) in (2, 3)} == {1}
    assert {place[t.name] for t in m.tensors if m.is_expert(t) and m.layer_of(t) in (0, 1)} == {0}
    p = predict_devices(m, split, CTX)
    assert p.devices[1].layers == () and p.devices[1].expert_mib == pytest.approx(
        sum(m.layer_expert_bytes[2:4]) / 2**20, abs=0.01)
    # the first match wins: -ot before -ncmoe keeps layer 0's experts on CUDA1
    first = Split.from_argv(["-ot", r"blk\.0\.ffn_.*_exps=CUDA1", "--n-cpu-moe", "2"], 2)
    assert {tensor_devices(m, first)[t.name] for t in m.tensors if m.is_expert(t) and m.layer_of(t) == 0} == {1}
    assert first.n_cpu_moe == 2


def test_pipeline_parallelism_only_without_overrides_and_its_copies() -> None:
    m = preset_model("qwen3-30b-a3b-arch")
    plain = predict_devices(m, Split.of(2, (1, 1)), CTX)
    assert plain.pipeline_parallel and plain.notes
    no_pp = dataclasses.replace(Split.of(2, (1, 1)), n_gpu_layers=48)  # -ngl <= n_layer: no pipeline
    assert not predict_devices(m, no_pp, CTX).pipeline_parallel
    single = predict(m, 0, CTX)
    assert all(d.compute_mib > single.compute_mib for d in plain.devices)


def test_from_argv_and_the_errors() -> None:
    assert Split.from_argv(["-ngl", "99", "-ts", "3/1", "--n-cpu-moe", "2"], 2) == Split.of(2, (3, 1), 2)
    m = preset_model("tiny-moe")
    with pytest.raises(ConfigError, match="split buffer"):
        predict_devices(m, Split.from_argv(["-sm", "row"], 2), CTX)
    with pytest.raises(ConfigError, match="not predicted"):
        predict_devices(m, Split.from_argv(["-sm", "tensor"], 2), CTX)
    with pytest.raises(ConfigError, match="main_gpu"):
        predict_devices(m, Split.from_argv(["-sm", "none", "-mg", "2"], 2), CTX)
    with pytest.raises(ConfigError, match="number"):
        Split.from_argv(["-ts", "3,x"], 2)


def test_the_tensor_split_grid() -> None:
    assert even_and_skews(2) == [(1.0, 1.0), (3.0, 2.0), (2.0, 3.0), (2.0, 1.0), (1.0, 2.0)]
    assert len(even_and_skews(3)) == 7 and even_and_skews(1) == [()]
    assert parse_tensor_split_grid("1,1;3/1", 2) == [(1.0, 1.0), (3.0, 1.0)]
    assert parse_tensor_split_grid(None, 2) == even_and_skews(2)
    for bad in ("1,1,1", "a,b", "0,0", ";"):
        with pytest.raises(ConfigError):
            parse_tensor_split_grid(bad, 2)


def test_the_prediction_reads_as_data() -> None:
    p = predict_devices(preset_model("gpt-oss-20b-arch-tiny"), Split.of(2, (1, 1), 1), CTX)
    d = p.to_dict()
    assert d["label"] == "ts 1,1 · ncmoe 1" and d["split"]["n_cpu_moe"] == 1 and d["split"]["overrides"] == []
    assert [x["layers"] for x in d["devices"]] == ["0-2", "3-4"]
    assert p.per_device_mib(3)[2] == 0.0 and p.total_mib == pytest.approx(sum(p.per_device_mib(2)), abs=0.2)
    assert p.over([p.devices[0].total_mib, p.devices[1].total_mib - 1]) == [1]


def test_an_override_to_a_device_outside_the_model_list_still_counts() -> None:
    m = preset_model("qwen3-30b-a3b-arch-tiny")
    split = Split.from_argv(["-sm", "none", "-mg", "1", "-ot", r"blk\.0\.ffn_.*_exps=CUDA0"], 2)
    p = predict_devices(m, split, CTX)
    assert [d.device for d in p.devices] == [1, 0]
    assert sum(d.weights_bytes for d in p.devices) == placement(m, 0).gpu_bytes
    assert p.share(0) is not None and p.share(0).expert_mib > 0 and p.share(0).layers == ()  # type: ignore[union-attr]
