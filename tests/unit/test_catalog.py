"""abtest.models.catalog: name resolution order (pure), provisioning synthetic models, cached SHA256; `abtest model` CLI."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from abtest.cli import cli
from abtest.errors import ModelNotFound
from abtest.models import catalog, hashing, synth


@pytest.fixture(autouse=True)
def _cache(isolated_cache: Path) -> Path:
    """Every test here runs on its own cache (tests/conftest.py's isolated_cache)."""
    return isolated_cache


def _found(name: str, models_dir: Path | None = None) -> catalog.ModelRef:
    ref = catalog.find_model(name, models_dir)
    assert isinstance(ref, catalog.ModelRef), ref
    return ref


def _fake_model(d: Path, name: str, content: bytes = b"GGUF fake") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / catalog.CATALOG[name].file_name
    p.write_bytes(content)
    return p


def test_catalog_lists_the_known_names_and_cites_every_hash() -> None:
    names = set(catalog.CATALOG)
    assert {"gpt-oss-20b", "qwen3-30b-a3b", "phi-3.5-moe", "deepseek-v2-lite", "tiny-moe"} <= names
    assert {"gpt-oss-20b-like", "qwen3-30b-a3b-like", "dense-small"} <= names
    # the seed's DeepSeek (arch deepseek) beside deepseek-v2-lite (deepseek2), and file names as the hub has them
    assert {"deepseek-moe-16b", "deepseek-moe-16b-f16", "phi-3.5-moe-q8_0"} <= names
    assert catalog.CATALOG["gpt-oss-20b"].file_name == "gpt-oss-20b-MXFP4.gguf"
    assert catalog.CATALOG["deepseek-moe-16b-f16"].file_name == "deepseek-moe-16b-f16.gguf"
    # no download entry has a published digest: none could be cited (docs/models.md)
    assert all(e.sha256 is None for e in catalog.catalog_entries() if e.hf_repo)
    for e in catalog.catalog_entries():
        assert (e.sha256 is None) == (e.sha256_source is None), e.name  # no uncited hashes
        assert e.hf_repo or e.synth_preset or e.wheel, e.name


def test_a_path_is_used_as_is(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGUF")
    ref = catalog.find_model(str(p))
    assert isinstance(ref, catalog.ModelRef)
    assert ref.path == p.resolve() and ref.size_bytes == 4 and ref.found_via == "path" and ref.name == "m"
    with pytest.raises(ModelNotFound, match="not found; check the path"):
        catalog.find_model(str(tmp_path / "absent.gguf"))


def test_name_resolution_order(tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = _fake_model(isolated_cache / "models", "gpt-oss-20b")
    assert _found("gpt-oss-20b").path == cached.resolve()
    env_dir = tmp_path / "env"
    monkeypatch.setenv("ABTEST_MODELS", str(env_dir))
    from_env = _fake_model(env_dir, "gpt-oss-20b")
    ref = _found("gpt-oss-20b")
    assert ref.path == from_env.resolve() and ref.found_via == "$ABTEST_MODELS"
    flag = _fake_model(tmp_path / "flag", "gpt-oss-20b")
    ref = _found("gpt-oss-20b", models_dir=tmp_path / "flag")
    assert ref.path == flag.resolve() and ref.found_via == "--models-dir"


def test_missing_download_names_where_it_looked_and_how_to_fetch(tmp_path: Path, isolated_cache: Path) -> None:
    found = catalog.find_model("gpt-oss-20b", models_dir=tmp_path / "mine")
    assert isinstance(found, catalog.Absent)
    msg = str(found.error())
    assert "\n" not in msg
    assert str(tmp_path / "mine" / "gpt-oss-20b-MXFP4.gguf") in msg
    assert str(isolated_cache / "models" / "gpt-oss-20b-MXFP4.gguf") in msg
    assert msg.endswith("fetch it with: abtest model pull gpt-oss-20b")


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ModelNotFound, match="unknown model name 'llama-9000'.*tiny-moe"):
        catalog.find_model("llama-9000")


def test_finding_a_missing_synthetic_name_writes_nothing(isolated_cache: Path, tmp_path: Path) -> None:
    found = catalog.find_model("tiny-moe", models_dir=tmp_path / "mine")
    assert isinstance(found, catalog.Absent) and found.entry.synth_preset == "tiny-moe"
    assert found.looked_in == (tmp_path / "mine" / "tiny-moe-q4_0-seed0.gguf",
                               isolated_cache / "models" / "tiny-moe-q4_0-seed0.gguf")
    assert found.fetch_command == f"abtest model synth {isolated_cache / 'models' / 'tiny-moe-q4_0-seed0.gguf'} --preset tiny-moe"
    assert not isolated_cache.exists()  # resolution is pure: no cache directory, no file, no hash cache


def test_tiny_moe_is_provisioned_into_the_cache_once(isolated_cache: Path) -> None:
    calls: list[tuple[int, int]] = []
    found = catalog.find_model("tiny-moe")
    assert isinstance(found, catalog.Absent)
    ref = catalog.provision(found, progress=lambda d, t: calls.append((d, t)))
    assert ref.found_via == "synthesised" and calls
    assert ref.path == (isolated_cache / "models" / "tiny-moe-q4_0-seed0.gguf").resolve()
    assert ref.sha256 == hashlib.sha256(ref.path.read_bytes()).hexdigest()
    again = catalog.find_model("tiny-moe")
    assert isinstance(again, catalog.ModelRef)
    assert again.found_via == "cache" and again.sha256 == ref.sha256  # digest known from the hash cache


def test_a_download_is_never_provisioned(isolated_cache: Path) -> None:
    found = catalog.find_model("gpt-oss-20b")
    assert isinstance(found, catalog.Absent)
    with pytest.raises(ModelNotFound, match="fetch it with: abtest model pull gpt-oss-20b") as e:
        catalog.provision(found)
    assert str(e.value) == str(found.error())
    assert not isolated_cache.exists()


def test_run_provisions_a_synthetic_model_on_first_use_and_says_so(isolated_cache: Path) -> None:
    from abtest.measure.arms import resolve_model

    notes: list[str] = []
    entry = resolve_model("tiny-moe", None, notes.append)
    assert entry["sha256"] == catalog.SYNTH_SHA256["tiny-moe"]
    assert entry["path"] == str((isolated_cache / "models" / "tiny-moe-q4_0-seed0.gguf").resolve())
    cache = isolated_cache / "models"
    assert notes == [f"synthesising tiny-moe (~0.003 GB, random weights, first use) into {cache}",
                     "hashing tiny-moe-q4_0-seed0.gguf (3 MiB)"]
    notes.clear()
    resolve_model("tiny-moe", None, notes.append)
    assert notes == ["hashing tiny-moe-q4_0-seed0.gguf (3 MiB)"]


def test_sha256_file_streams_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "blob.bin"
    data = os.urandom(3 * hashing.HASH_CHUNK_BYTES + 12345)
    p.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    seen: list[int] = []
    assert hashing.sha256_file(p, progress=lambda d, t: seen.append(d)) == want
    assert seen[-1] == len(data) and len(seen) == 4

    def boom(*a: object, **k: object) -> str:
        raise AssertionError("read the file despite a cache hit")

    monkeypatch.setattr(hashing, "hash_stream", boom)
    assert hashing.sha256_file(p) == want  # cache hit: no read
    with pytest.raises(AssertionError, match="despite"):
        hashing.sha256_file(p, rehash=True)  # --rehash forces a read


def test_rehash_and_changed_files_are_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "blob.bin"
    p.write_bytes(b"one")
    assert hashing.sha256_file(p) == hashlib.sha256(b"one").hexdigest()
    reads: list[Path] = []
    real = hashing.hash_stream
    monkeypatch.setattr(hashing, "hash_stream", lambda path, **k: reads.append(Path(path)) or real(path, **k))
    p.write_bytes(b"two")  # new size and mtime: a new key
    os.utime(p, ns=(1, 1))
    assert hashing.sha256_file(p) == hashlib.sha256(b"two").hexdigest()
    assert hashing.sha256_file(p, rehash=True) == hashlib.sha256(b"two").hexdigest()
    assert len(reads) == 2


def test_corrupt_hash_cache_is_ignored(tmp_path: Path, isolated_cache: Path) -> None:
    isolated_cache.mkdir(parents=True)
    (isolated_cache / hashing.HASH_CACHE_FILE).write_text("{not json")
    p = tmp_path / "x"
    p.write_bytes(b"x")
    assert hashing.sha256_file(p) == hashlib.sha256(b"x").hexdigest()
    assert json.loads((isolated_cache / hashing.HASH_CACHE_FILE).read_text())["entries"]


def test_sha256_file_missing_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        hashing.sha256_file(tmp_path / "nope")


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_synth_hash_info_list(tmp_path: Path) -> None:
    r = CliRunner()
    res = r.invoke(cli, ["model", "synth", str(tmp_path), "--preset", "tiny-moe"])
    assert res.exit_code == 0, res.output
    out_file = tmp_path / synth.synth_file_name("tiny-moe")
    digest = hashlib.sha256(out_file.read_bytes()).hexdigest()
    assert f"{digest}  {out_file}" in res.output
    res = r.invoke(cli, ["model", "hash", str(out_file), "--rehash"])
    assert res.exit_code == 0 and res.output.strip() == f"{digest}  {out_file}"
    res = r.invoke(cli, ["model", "info", str(out_file), "--json", "--n-cpu-moe", "2"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["n_expert"] == 8 and info["gpu_weight_bytes"] < info["tensor_bytes"]
    res = r.invoke(cli, ["model", "list", "--json"])
    assert {e["name"] for e in json.loads(res.output)} == set(catalog.CATALOG)


@pytest.mark.parametrize("sub", ["list", "synth", "hash", "info"])
def test_every_subcommand_help_has_an_example(sub: str) -> None:
    res = CliRunner().invoke(cli, ["model", sub, "--help"])
    assert res.exit_code == 0 and "Examples:" in res.output and f"abtest model {sub}" in res.output


def test_cli_list_fits_80_columns_and_names_every_model() -> None:
    """Piped (the CliRunner has no terminal: 80 columns), the list keeps every line within 80 characters
    and gives each known model its file and where it comes from, whole (no name broken over lines)."""
    res = CliRunner().invoke(cli, ["model", "list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines and max(len(x) for x in lines) <= 80
    for e in catalog.catalog_entries():
        assert any(x.split()[:1] == [e.name] for x in lines), e.name
        assert any(x.strip() == e.file_name for x in lines), e.file_name
