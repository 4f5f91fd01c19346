"""abtest.models.hub and `abtest model pull NAME` for hub models, against a local hub (tests/fakes/hfhub.py).

Real huggingface_hub, real HTTP over loopback; the real hub is never contacted (the endpoint is the
fake's, passed as HF_ENDPOINT). Checked: the download lands in the cache with the hub's published LFS
SHA256 recorded beside it (and in the run manifest's model entry); a part left by an interrupted pull
resumes with a Range request; a wrong digest is one line and leaves no file; huggingface_hub missing is
one line naming the extra; `abtest run` of an absent hub model names the pull command and downloads nothing.
"""

from __future__ import annotations

import builtins
import hashlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakes.hfhub import COMMIT, FakeHub

from abtest.cli import cli
from abtest.cli import main as cli_main
from abtest.errors import ModelNotFound, ProvisionError
from abtest.models import catalog, hashing, hub

pytest.importorskip("huggingface_hub")  # the [hub] extra; `.[dev]` installs it

REPO, FILE = "ggml-org/gpt-oss-20b-GGUF", "gpt-oss-20b-MXFP4.gguf"  # the catalog's gpt-oss-20b entry
BLOB = b"GGUF" + bytes(range(256)) * 4096  # 1 MiB + 4 bytes: several of http_get's chunks
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture(autouse=True)
def _cache(isolated_cache: Path) -> Path:
    return isolated_cache


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub(files={(REPO, FILE): BLOB}) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.base_url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield h


def _dest() -> Path:
    return catalog.cache_models_dir() / FILE


def test_pull_downloads_checks_and_records_the_published_sha(fake_hub: FakeHub) -> None:
    seen: list[tuple[int, int]] = []
    got = hub.pull_from_hub(REPO, FILE, _dest(), progress=lambda d, t: seen.append((d, t)))
    assert got.path.read_bytes() == BLOB and got.sha256 == SHA and got.resumed_from_bytes == 0
    assert got.published.sha256 == SHA and got.published.revision == COMMIT
    assert got.published.source == f"{fake_hub.base_url}/api/models/{REPO}/paths-info/{COMMIT} (lfs.oid of {FILE})"
    assert hub.published_checksum(got.path) == got.published  # the record beside the file
    assert hashing.cached_sha256(got.path) == SHA
    assert (len(BLOB), len(BLOB)) in seen  # the progress callback saw the whole download
    methods = [(r.method, r.path.split("?")[0]) for r in fake_hub.requests]
    assert ("HEAD", f"/{REPO}/resolve/main/{FILE}") in methods  # metadata: commit, size, location
    assert ("POST", f"/api/models/{REPO}/paths-info/{COMMIT}") in methods  # the published LFS sha256
    assert ("GET", f"/cdn/{SHA}") in methods and not list(_dest().parent.glob("*.part"))
    # pulled again: the cached file has the digest, nothing is fetched
    n = len([r for r in fake_hub.requests if r.method == "GET"])
    assert hub.pull_from_hub(REPO, FILE, _dest()).resumed_from_bytes == -1
    assert len([r for r in fake_hub.requests if r.method == "GET"]) == n


def test_a_partial_download_resumes_with_a_range_request(fake_hub: FakeHub) -> None:
    dest = _dest()
    dest.parent.mkdir(parents=True)
    half = len(BLOB) // 2 + 3
    hub.part_path(dest, SHA).write_bytes(BLOB[:half])  # what an interrupted pull leaves
    got = hub.pull_from_hub(REPO, FILE, dest)
    gets = [r for r in fake_hub.requests if r.method == "GET"]
    assert [r.range for r in gets] == [f"bytes={half}-"]  # only the rest was asked for
    assert got.resumed_from_bytes == half and got.sha256 == SHA and dest.read_bytes() == BLOB
    assert not hub.part_path(dest, SHA).exists()


def test_a_wrong_sha_is_one_line_and_leaves_no_file(fake_hub: FakeHub) -> None:
    fake_hub.published[(REPO, FILE)] = "0" * 64  # the hub publishes one digest, the CDN serves other bytes
    with pytest.raises(ProvisionError) as e:
        hub.pull_from_hub(REPO, FILE, _dest())
    msg = str(e.value)
    assert "\n" not in msg and "SHA256" in msg and "000000000000" in msg and "removed it" in msg
    assert not _dest().exists() and not list(_dest().parent.glob(f".{FILE}*"))


def test_missing_file_and_repo_are_one_line(fake_hub: FakeHub) -> None:
    with pytest.raises(ProvisionError, match="has no file nope.gguf"):
        hub.pull_from_hub(REPO, "nope.gguf", _dest())
    with pytest.raises(ProvisionError, match="no repository someone/else"):
        hub.pull_from_hub("someone/else", FILE, _dest())


def test_unreachable_hub_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ProvisionError) as e:
        hub.pull_from_hub(REPO, FILE, _dest())
    assert "\n" not in str(e.value) and "cannot get the metadata" in str(e.value)
    assert not _dest().exists()


def test_cli_pull_prints_the_digest_and_path(fake_hub: FakeHub) -> None:
    res = CliRunner().invoke(cli, ["model", "pull", "gpt-oss-20b"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"{SHA}  {_dest()}"
    assert "SHA256 matches the hub's published LFS SHA256" in res.stderr


def test_without_huggingface_hub_pull_names_the_extra(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    real_import = builtins.__import__

    def no_hub(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "huggingface_hub" or name.startswith("huggingface_hub."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "huggingface_hub" or m.startswith("huggingface_hub.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(SystemExit) as e:
        cli_main(["model", "pull", "gpt-oss-20b"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert e.value.code == ProvisionError.exit_code and lines, err
    assert lines[-1] == ("abtest: error: downloading from the Hugging Face Hub needs huggingface_hub: "
                         "pip install 'abtest-llm[hub]'"), err
    assert not fake_hub.requests and not _dest().exists()


def test_run_of_an_absent_hub_model_names_the_pull_and_downloads_nothing(fake_hub: FakeHub) -> None:
    from abtest.measure.arms import resolve_model

    with pytest.raises(ModelNotFound) as e:
        resolve_model("gpt-oss-20b", None, lambda _: None)
    assert str(e.value).endswith("fetch it with: abtest model pull gpt-oss-20b")
    assert not fake_hub.requests and not _dest().exists()


def test_the_manifest_records_the_published_sha_and_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from abtest.measure.arms import resolve_model
    from abtest.models.synth import write_synth

    gguf = write_synth(tmp_path / "t.gguf", "tiny-moe", "q4_0", seed=0).path.read_bytes()  # a real GGUF to describe
    with FakeHub(files={(REPO, FILE): gguf}) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.base_url)
        got = hub.pull_from_hub(REPO, FILE, _dest())
    entry = resolve_model("gpt-oss-20b", None, lambda _: None)
    assert entry["sha256"] == entry["published_sha256"] == got.sha256 == hashlib.sha256(gguf).hexdigest()
    assert entry["published_sha256_source"] == got.published.source and entry["published_sha256_matches"] is True
