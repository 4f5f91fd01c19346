"""Arms that place a model over several GPUs (-ts, -sm, -mg, per-GPU -ot): accepted as given, the
argv kept verbatim, and the placement they ask for read back from the argv into arm_start."""

from __future__ import annotations

import json

from abtest.argv import EXPERT_REGEX, gpu_placement
from abtest.config import ArmSpec, RunConfig, final_argv, load_arms_file, parse_arm, resolve_arms, validate
from abtest.evidence import read_evidence
from abtest.records import SCHEMA_VERSION, ArmStart

OT = r"blk\.(2[4-9]|3[0-9]|4[0-7])\.ffn_.*_exps=CUDA1"


def test_split_flags_from_the_command_line_reach_the_argv_untouched() -> None:
    arm = parse_arm(f"two=-ts 3,1 -sm layer -mg 1 --n-cpu-moe 4 -ot '{OT}'")
    assert arm.args == ("-ts", "3,1", "-sm", "layer", "-mg", "1", "--n-cpu-moe", "4", "-ot", OT)
    cfg = validate(RunConfig(model="m", arms=(arm,)))
    argv = final_argv(arm, cfg, "/bin/llama-server", "/m.gguf", 4096, supports_fit=True)
    i = argv.index("-ts")
    assert argv[i:i + 10] == list(arm.args)  # in order, not re-spelled
    assert argv.count("-ngl") == 1 and argv[argv.index("-ngl") + 1] == "99"  # pinned: every layer offloaded
    assert argv[argv.index("--fit") + 1] == "off"


def test_split_flags_from_an_arms_file(tmp_path) -> None:
    toml = tmp_path / "arms.toml"
    toml.write_text('[arms.even]\nargs = ["-ngl", "99", "--tensor-split", "1/1"]\n'
                    '[arms.one]\nargs = ["-sm", "none", "--main-gpu=1"]\n'
                    f'[arms.pinned]\nargs = ["-ot", {json.dumps(OT)}]\n', encoding="utf-8")
    arms = {a.name: a for a in load_arms_file(toml)}
    assert arms["even"].args[-1] == "1/1" and arms["one"].args == ("-sm", "none", "--main-gpu=1")
    assert arms["pinned"].args == ("-ot", OT)
    assert [a.name for a in resolve_arms(["ncmoe8"], str(toml))] == ["even", "one", "pinned", "ncmoe8"]


def test_gpu_placement_reads_what_llama_server_reads() -> None:
    p = gpu_placement(["-ts", "3,1", "-mg", "1", "-ot", f"{OT},token_embd=CUDA0", "--n-cpu-moe", "2"])
    assert p["split_mode"] == "layer" and p["tensor_split"] == [3.0, 1.0] and p["main_gpu"] == 1
    assert p["n_cpu_moe"] == 2
    # -ot items, then -ncmoe's per-layer patterns, in argv order (the first match wins)
    assert p["overrides"] == [[OT.rsplit("=", 1)[0], "CUDA1"], ["token_embd", "CUDA0"],
                              [f"blk\\.0{EXPERT_REGEX}", "CPU"], [f"blk\\.1{EXPERT_REGEX}", "CPU"]]
    assert gpu_placement(["--tensor-split=2/1/1", "--split-mode=none"])["tensor_split"] == [2.0, 1.0, 1.0]
    q = gpu_placement(["-ngl", "99", "--cpu-moe", "-sm", "row", "-dev", "CUDA0,CUDA1"])
    assert q["split_mode"] == "row" and q["overrides"] == [[EXPERT_REGEX, "CPU"]] and q["devices"] == ["CUDA0", "CUDA1"]
    assert gpu_placement(["-ngl", "99"]) == {"split_mode": "layer", "tensor_split": [], "main_gpu": 0,
                                             "overrides": [], "n_cpu_moe": None, "devices": []}
    assert gpu_placement(["-ts", "3,x"])["tensor_split"] == [3.0, "x"]  # the server rejects it, not us


def test_arm_start_records_the_placement_and_old_lines_read_as_empty(tmp_path) -> None:
    start = ArmStart("a", "/m", "0" * 64, "/s", {}, ["s", "-ts", "1,1"], 1, 2, 3.0, "t", "/l",
                     placement=gpu_placement(["-ts", "1,1"]))
    line = {"kind": "arm_start", "schema": SCHEMA_VERSION, **start.__dict__}
    old = {k: v for k, v in line.items() if k != "placement"}
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in (line, old)) + "\n", encoding="utf-8")
    ev = read_evidence(path)
    assert [s.placement.get("tensor_split") for s in ev.arm_starts] == [[1.0, 1.0], None]
    assert ev.arm_starts[1].placement == {}


def test_an_arm_without_split_flags_is_unchanged() -> None:
    cfg = RunConfig(model="m", arms=())
    argv = final_argv(ArmSpec("b", ("-ngl", "99")), cfg, "s", "m", 2048, supports_fit=False)
    assert not any(a in argv for a in ("-ts", "-sm", "-mg", "-ot"))
