"""Servers that fail to start: the arm fails with the server's own words and the next step, the
run goes on with the other arms, nothing is left running; a port taken between choosing and
binding is retried on another port."""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fakes.scripted import ScriptedServer
from faultkit import assert_no_orphans, only_jsonl, read_ok, write_wrapper

from abtest.config import ArmSpec
from abtest.errors import EXIT_PARTIAL
from abtest.measure.runner import Runner
from abtest.server import process as server_mod


def _with_healthy_arm(cfg, healthy: Path):  # type: ignore[no-untyped-def]
    return dataclasses.replace(cfg, arms=(*cfg.arms, ArmSpec("ok", ("-ngl", "99"), server_bin=str(healthy))))


def test_scripted_exit_while_loading_names_out_of_memory(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    oom = scripted({"load_s": 0.2, "load_fault": "exit", "exit_code": 1})
    cfg = _with_healthy_arm(cfg_for(oom, arms=["big"]), scripted({}))
    result = Runner(cfg).execute()
    ev = read_ok(result.evidence_path)
    end = {e.arm: e for e in ev.arm_ends}
    err = end["big"].error or ""
    assert end["big"].status == "failed"
    assert "exited (code 1) before /health was ready: llama_model_load: error loading model:" in err
    assert "out of memory — not enough memory for this arm" in err and "--arm cpu-moe" in err
    assert any("out of memory" in ln for ln in end["big"].log_tail)
    assert [s.arm for s in ev.arm_starts] == ["ok"] and end["ok"].status == "ok"  # the run went on
    assert not ev.partial and result.arms_failed == ["big"]
    assert_no_orphans(spawned, marker=tmp_path)


def test_real_llama_server_unknown_architecture(llama_server: Path, tiny_moe: Path, prompts: Path,
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                spawned) -> None:
    """A GGUF that passes check_gguf (header and sizes fine) but that llama-server cannot load: the
    CLI prints one line with llama-server's own reason and exits 4 (partial)."""
    from abtest.cli import main

    bad = tmp_path / "bad-arch.gguf"
    bad.write_bytes(tiny_moe.read_bytes().replace(b"qwen3moe", b"qwen9moe"))
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--model", str(bad), "--server-bin", str(llama_server), "--arm", "a=-ngl 99", "--runs", "1",
              "--warmup", "0", "--max-tokens", "4", "--prompts", str(prompts), "--out", str(out), "--quiet"])
    assert exc.value.code == EXIT_PARTIAL
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("abtest: arm a failed: server for arm 'a' on port ")
    assert "llama_model_load: error loading model: unknown model architecture: 'qwen9moe'" in err[0]
    assert "update it (abtest server install) or check --model" in err[0]
    ev = read_ok(only_jsonl(out))
    assert ev.arm_ends[0].status == "failed" and ev.arm_starts == []
    assert_no_orphans(spawned, marker=bad)


def test_real_llama_server_out_of_memory(llama_server: Path, cfg_for, spawned, tmp_path: Path) -> None:
    """The real llama-server under a 200 MB address-space limit, asked for a 200k context: its own
    allocation error reaches the arm's error."""
    limited = write_wrapper(tmp_path / "ulimit", prelude="ulimit -v 200000\n", target=str(llama_server))
    cfg = cfg_for(limited, arms=["a"], ctx_size=200_000)
    result = Runner(cfg).execute()
    ev = read_ok(result.evidence_path)
    err = ev.arm_ends[0].error or ""
    assert ev.arm_ends[0].status == "failed" and "before /health was ready" in err
    assert "not enough memory for this arm" in err, err
    assert_no_orphans(spawned)


def test_never_healthy_times_out(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    cfg = cfg_for(scripted({"load_fault": "never_healthy"}), arms=["a"], health_timeout_s=1.0)
    result = Runner(cfg).execute()
    ev = read_ok(result.evidence_path)
    err = ev.arm_ends[0].error or ""
    assert "did not become healthy within 1 s (--health-timeout)" in err
    assert "load_model: loading model" in err and "raise --health-timeout" in err
    assert result.arms_failed == ["a"]
    assert_no_orphans(spawned, marker=tmp_path)


@contextmanager
def occupied_port() -> Iterator[int]:
    """A port some other program listens on (it accepts and hangs up, as a stray service might)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        t.join()
        sock.close()


@pytest.mark.parametrize("which", ["scripted", "llama-server"])
def test_port_taken_between_choosing_and_binding_is_retried(which: str, scripted, llama_server: Path, cfg_for,
                                                            spawned, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    binary = scripted({}) if which == "scripted" else llama_server
    real_free_port = server_mod.free_port
    with occupied_port() as taken:
        ports = iter([taken])
        monkeypatch.setattr(server_mod, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port(host))
        result = Runner(cfg_for(binary, arms=["a"])).execute()
    ev = read_ok(result.evidence_path)
    assert len(spawned) == 2  # the first attempt could not bind; the second did
    log = Path(ev.arm_starts[0].log_path).read_text()
    assert f"couldn't bind HTTP server socket, hostname: 127.0.0.1, port: {taken}" in log
    assert ev.arm_starts[0].port != taken
    assert ev.arm_ends[0].status == "ok" and ev.arm_ends[0].n_failed == 0 and result.arms_failed == []
    assert_no_orphans(spawned, marker=tmp_path if which == "scripted" else None)


def test_port_taken_by_a_healthy_server_is_not_mistaken_for_ours(scripted, cfg_for, spawned,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """Another llama-server-like process answers /health 200 on the port we chose: abtest waits
    for a process of its own group to listen there, so ours fails to bind, is retried elsewhere, and
    no request goes to the squatter."""
    real_free_port = server_mod.free_port
    with ScriptedServer().start_in_thread() as squatter:
        ports = iter([squatter.port])
        monkeypatch.setattr(server_mod, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port(host))
        result = Runner(cfg_for(scripted({}), arms=["a"])).execute()
        assert squatter.n_requests == 0
    ev = read_ok(result.evidence_path)
    assert len(spawned) == 2 and ev.arm_starts[0].port != squatter.port
    assert ev.arm_ends[0].status == "ok" and ev.arm_ends[0].n_failed == 0
    assert_no_orphans(spawned, marker=tmp_path)
