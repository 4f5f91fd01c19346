"""The llama.cpp source a build starts from: its version, its commit, and the tree inside an sdist or tarball."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ProvisionError

_SDIST_NAME = re.compile(r"llama[_-]cpp[_-]python-(\d+(?:\.\d+)+)")


# Written by scripts/make-llama-tarball.sh at the tarball's llama.cpp root, e.g.
#   llama-cpp-python 0.3.36
#   llama.cpp commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f
#   llama.cpp build 1
VERSION_MARKER = ".abtest-source"


_SDIST_GIT = ".git/modules/vendor/llama.cpp"  # the sdist ships its submodule's git dir (39 MB)


_HEX = re.compile(r"\b([0-9a-f]{40})\b")


def version_of_source(path: Path) -> str:
    """The llama-cpp-python version a --source came from, or "local" when nothing says so."""
    m = _SDIST_NAME.search(str(path))
    if m:
        return m.group(1)
    marker: str | None = None
    if path.is_dir():
        for cand in (path / VERSION_MARKER, *(p / VERSION_MARKER for p in path.iterdir() if p.is_dir())):
            if cand.is_file():
                marker = cand.read_text()
                break
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            for member in tf:
                if (
                    member.isfile()
                    and Path(member.name).name == VERSION_MARKER
                    and member.name.count("/") <= 1
                ):
                    f = tf.extractfile(member)
                    marker = f.read().decode(errors="replace") if f else None
                    break
    if marker:
        m = re.search(r"(\d+(?:\.\d+)+)", marker)
        if m:
            return m.group(1)
    return "local"


def extract_llama_source(archive: Path, dest: Path) -> Path:
    if not tarfile.is_tarfile(archive):
        raise ConfigError(
            f"--source {archive} is neither a directory nor a tar archive; give a llama.cpp directory or .tar.gz"
        )
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            # An sdist carries the Python package too; only its vendored llama.cpp is needed.
            # Of its submodule's git dir, HEAD and shallow say which commit is vendored (and its
            # build number); the objects are not needed.
            vendored = [
                m
                for m in members
                if ("/vendor/llama.cpp/" in m.name and f"/{_SDIST_GIT}/" not in m.name)
                or m.name.endswith("/vendor/llama.cpp")
                or m.name.endswith((f"/{_SDIST_GIT}/HEAD", f"/{_SDIST_GIT}/shallow"))
            ]
            # filter="data" (refuse links out of dest, absolute paths) exists from 3.10.12/3.11.4 on.
            safe: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, members=vendored or members, **safe)
    except (tarfile.TarError, OSError) as exc:
        raise ProvisionError(
            f"could not extract {archive} ({exc}); re-download it or make a new tarball"
        ) from exc
    return locate_llama_source(dest)


def llama_commit(llama_src: Path) -> tuple[str | None, int | None, bool]:
    """(llama.cpp commit or None, its build number or None, whether cmake can read it from git itself).

    From the tarball's marker file, else from `.git`: a gitlink file ("gitdir: ...") in an sdist,
    whose target holds only HEAD and `shallow` after `extract_llama_source`, or a checkout's .git directory.
    The build number is what llama.cpp's cmake would stamp (`git rev-list --count HEAD`), known
    here only for a depth-1 clone (HEAD listed in `shallow`: 1), as the sdist's submodule is.
    """
    marker = llama_src / VERSION_MARKER
    if marker.is_file():
        text = marker.read_text()
        m = _HEX.search(text)
        n = re.search(r"llama\.cpp build (\d+)", text)
        if m:
            return m.group(1), (int(n.group(1)) if n else None), False
    dot_git = llama_src / ".git"
    if dot_git.is_file():
        text = dot_git.read_text().strip()
        git_dir = (llama_src / text.removeprefix("gitdir:").strip()) if text.startswith("gitdir:") else None
    elif dot_git.is_dir():
        git_dir = dot_git
    else:
        return None, None, False
    if git_dir is None or not (git_dir / "HEAD").is_file():
        return None, None, False
    head = (git_dir / "HEAD").read_text().strip()
    if head.startswith("ref:"):
        ref = git_dir / head[4:].strip()
        head = ref.read_text().strip() if ref.is_file() else ""
    m = _HEX.fullmatch(head) if head else None
    if not m:
        return None, None, False
    shallow = git_dir / "shallow"
    number = 1 if shallow.is_file() and m.group(1) in shallow.read_text().split() else None
    checkout = (git_dir / "objects").is_dir() and any((git_dir / "objects").iterdir())
    return m.group(1), number, checkout


def locate_llama_source(root: Path) -> Path:
    """The llama.cpp root under `root`: itself, one directory down, or <sdist>/vendor/llama.cpp."""
    candidates = [root]
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    candidates += subdirs
    candidates += [p / "vendor" / "llama.cpp" for p in [root, *subdirs]]
    for c in candidates:
        if (c / "CMakeLists.txt").is_file() and (c / "tools" / "server").is_dir() and (c / "ggml").is_dir():
            return c
    raise ConfigError(
        f"no llama.cpp source (CMakeLists.txt, ggml/, tools/server/) found in {root}; give a llama.cpp directory or .tar.gz"
    )
