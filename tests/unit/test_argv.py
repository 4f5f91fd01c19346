"""abtest.argv: flag spellings, values and the masked argv, on crafted command lines."""

from __future__ import annotations

import pytest

from abtest.argv import FLAGS, flag_value, has_flag, int_flag, normalize


def test_normalize_masks_port_model_and_log_file():
    x = normalize(["/a/llama-server", "-m", "/x.gguf", "--port", "1", "--log-file=/t/1.log", "-ngl", "99"])
    y = normalize(["/b/llama-server", "--model", "/y.gguf", "--port=2", "--log-file", "/t/2.log", "-ngl", "99"])
    assert x[0] == y[0] == "llama-server"
    assert x[-2:] == ("-ngl", "99") and "1" not in x and "2" not in y
    assert normalize(["s", "-ngl", "99", "--cpu-moe"]) != normalize(["s", "-ngl", "99"])


@pytest.mark.parametrize(("args", "want"), [
    (["-ngl", "99"], True), (["--n-gpu-layers=99"], True), (["--gpu-layers", "0"], True),
    (["-ngl99"], False), (["--cpu-moe"], False), ([], False),
])
def test_has_flag_every_spelling(args: list[str], want: bool) -> None:
    assert has_flag(args, *FLAGS["gpu_layers"]) is want


def test_flag_value_and_int_flag() -> None:
    args = ["-ngl", "99", "--batch-size=1024", "-ub", "256", "-c"]
    assert flag_value(args, FLAGS["batch_size"]) == "1024"
    assert flag_value(args, FLAGS["ubatch_size"]) == "256"
    assert flag_value(args, FLAGS["ctx_size"]) is None  # no value after the last flag
    assert flag_value(args, FLAGS["threads"]) is None
    assert int_flag(args, FLAGS["batch_size"], 2048) == 1024
    assert int_flag(["-b", "many"], FLAGS["batch_size"], 2048) == 2048  # not an integer: the default
    assert int_flag([], FLAGS["ubatch_size"], 512) == 512
