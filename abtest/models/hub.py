"""Models from the Hugging Face Hub by name: resumable download, checked against the hub's published LFS SHA256.

`pull_from_hub` asks the hub (huggingface_hub, the optional extra ``abtest-llm[hub]``) for the
file's metadata at the repository's current commit (HEAD of ``/resolve``: commit, size, where the
bytes are) and for its published LFS SHA256 (``/api/models/REPO/paths-info/COMMIT``: the
``lfs.oid`` the hub stores with the file), then GETs the bytes into
``<dir>/.<file>.<sha256[:16]>.part``, resuming a part left by an interrupted pull with a Range
request (huggingface_hub's `http_get` also resumes within one call after a dropped connection).
The finished part is hashed; only a file whose size and SHA256 equal the published ones is
renamed to its name, and the checksum is recorded beside it (``.<file>.published.json``: digest,
source URL, repository, commit) for `published_checksum`, which the run manifest reads. A wrong
digest removes the part: nothing is left under the name, and the next pull starts over.

Nothing here runs unasked: `abtest run` never downloads (a missing file is ModelNotFound naming
``abtest model pull NAME``); only `abtest model pull` calls this.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigError, ProvisionError
from .hashing import ProgressFn, remember_sha256, sha256_file

EXTRA = "pip install 'abtest-llm[hub]'"
DEFAULT_ENDPOINT = "https://huggingface.co"
METADATA_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PublishedChecksum:
    """A digest someone else published for a file, and where: what the manifest records beside our own."""

    sha256: str
    source: str  # where it was published (a URL, or the catalog's citation)
    repo: str | None = None
    revision: str | None = None  # the commit it was read at
    size_bytes: int | None = None


@dataclass(frozen=True)
class HubFile:
    """What the hub says about one file at one commit."""

    repo: str
    filename: str
    commit: str
    size_bytes: int
    sha256: str  # the LFS oid from paths-info
    url: str  # where the bytes are (after the hub's redirect)
    source: str  # the paths-info URL the digest came from


@dataclass(frozen=True)
class Pulled:
    path: Path
    sha256: str
    size_bytes: int
    published: PublishedChecksum
    resumed_from_bytes: int  # 0: a fresh download; -1: already cached, nothing fetched


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ProvisionError(f"downloading from the Hugging Face Hub needs huggingface_hub: {EXTRA}") from None
    return huggingface_hub


def endpoint_url(endpoint: str | None = None) -> str:
    """The hub to ask: `endpoint`, else $HF_ENDPOINT (read now, not at import), else huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def hub_file(repo: str, filename: str, revision: str = "main", endpoint: str | None = None,
             token: str | bool | None = None) -> HubFile:
    """The file's commit, size, download URL and published LFS SHA256; ProvisionError in one line
    when the hub cannot be reached, the repo or file does not exist, or the file has no LFS digest."""
    hf = _hub()
    from huggingface_hub import errors as hf_errors

    base = endpoint_url(endpoint)
    where = f"{repo}/{filename} on {base}"
    try:
        url = hf.hf_hub_url(repo, filename, revision=revision, endpoint=base)
        meta = hf.get_hf_file_metadata(url, token=token, timeout=METADATA_TIMEOUT_S, endpoint=base)
        if not meta.commit_hash:
            raise ProvisionError(f"{base} answered for {repo}/{filename} without X-Repo-Commit: not a Hugging Face "
                                 "Hub endpoint (check $HF_ENDPOINT)")
        infos = hf.HfApi(endpoint=base, token=token).get_paths_info(repo, [filename], revision=meta.commit_hash)
    except ProvisionError:
        raise
    except hf_errors.GatedRepoError:
        raise ProvisionError(f"{repo} is gated: accept its terms on {base}/{repo} and log in (hf auth login) "
                             "or set $HF_TOKEN") from None
    except hf_errors.RepositoryNotFoundError:
        raise ProvisionError(f"no repository {repo} on {base} (or it is private: set $HF_TOKEN)") from None
    except hf_errors.RevisionNotFoundError:
        raise ProvisionError(f"{repo} has no revision {revision!r} on {base}") from None
    except hf_errors.EntryNotFoundError:
        raise ProvisionError(f"{repo} on {base} has no file {filename}") from None
    except Exception as exc:  # network (httpx / requests, by version), HTTP errors, bad answers: one line
        raise ProvisionError(f"cannot get the metadata of {where} ({_one_line(exc)}); "
                             "check the network, or fetch the file elsewhere and pass its path") from None
    files = [i for i in infos if getattr(i, "path", None) == filename]
    lfs = getattr(files[0], "lfs", None) if files else None
    if not files:
        raise ProvisionError(f"{repo} on {base} has no file {filename}")
    if lfs is None or not getattr(lfs, "sha256", None):
        raise ProvisionError(f"{where} has no published LFS SHA256 (not an LFS file): cannot check the download")
    size = int(lfs.size)
    if meta.size is not None and int(meta.size) != size:
        raise ProvisionError(f"{where}: the hub says {int(meta.size):,} bytes in one place and {size:,} in another; "
                             "try again later")
    return HubFile(repo=repo, filename=filename, commit=meta.commit_hash, size_bytes=size, sha256=str(lfs.sha256),
                   url=meta.location, source=f"{base}/api/models/{repo}/paths-info/{meta.commit_hash} (lfs.oid of {filename})")


def sidecar_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.published.json")


def part_path(dest: Path, sha256: str) -> Path:
    return dest.with_name(f".{dest.name}.{sha256[:16]}.part")


def published_checksum(path: str | os.PathLike[str]) -> PublishedChecksum | None:
    """The published checksum recorded when `path` was pulled from the hub, if any (never raises)."""
    try:
        data = json.loads(sidecar_path(Path(path)).read_text())
        return PublishedChecksum(**{k: data.get(k) for k in PublishedChecksum.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


class _Counting:
    """The part file as huggingface_hub's http_get writes it: bytes counted for our progress callback."""

    def __init__(self, f: BinaryIO, done: int, total: int, progress: ProgressFn | None) -> None:
        self.f, self.done, self.total, self.progress = f, done, total, progress

    def write(self, b: bytes) -> int:
        n = self.f.write(b)
        self.done += len(b)
        if self.progress is not None:
            self.progress(self.done, self.total)
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self.f.seek(offset, whence)
        self.done = pos
        return pos

    def tell(self) -> int:
        return self.f.tell()

    def truncate(self, size: int | None = None) -> int:
        return self.f.truncate(size)

    def flush(self) -> None:
        self.f.flush()


def _quiet_bar() -> type:
    """A tqdm class that draws nothing: the CLI draws its own bar from the progress callback."""
    from tqdm.auto import tqdm  # a dependency of huggingface_hub

    class Quiet(tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def pull_from_hub(repo: str, filename: str, dest: Path, *, revision: str = "main", endpoint: str | None = None,
                  token: str | bool | None = None, progress: ProgressFn | None = None, force: bool = False) -> Pulled:
    """`filename` of `repo` at `dest`, resumed from a part file if one is there, checked against the
    hub's published LFS SHA256. A dest that already has that digest is kept (unless force)."""
    info = hub_file(repo, filename, revision, endpoint, token)
    published = PublishedChecksum(sha256=info.sha256, source=info.source, repo=repo, revision=info.commit,
                                  size_bytes=info.size_bytes)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {dest.parent} ({exc.strerror}); set $ABTEST_CACHE to a writable directory") from None
    if dest.is_file() and not force and dest.stat().st_size == info.size_bytes \
            and sha256_file(dest, progress=progress) == info.sha256:
        _write_sidecar(dest, published)
        return Pulled(dest, info.sha256, info.size_bytes, published, resumed_from_bytes=-1)
    part = part_path(dest, info.sha256)
    for stale in dest.parent.glob(f".{dest.name}.*.part"):  # a part of another revision cannot be resumed
        if stale != part:
            stale.unlink(missing_ok=True)
    if part.exists() and part.stat().st_size > info.size_bytes:
        part.unlink()
    have = part.stat().st_size if part.exists() else 0
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=token)
    if not info.url.startswith(endpoint_url(endpoint)):
        headers.pop("authorization", None)  # a CDN's signed URL: the token stays with the hub (as hf_hub_download does)
    with open(part, "ab") as raw:
        f = _Counting(raw, have, info.size_bytes, progress)
        try:
            http_get(info.url, f, resume_size=have, headers=headers, expected_size=info.size_bytes,  # type: ignore[arg-type]
                     displayed_filename=filename, tqdm_class=_quiet_bar())
        except Exception as exc:  # not KeyboardInterrupt: Ctrl-C keeps the part for the next pull
            kept = part.stat().st_size if part.exists() else 0
            raise ProvisionError(f"download of {repo}/{filename} stopped at {kept:,} of {info.size_bytes:,} bytes "
                                 f"({_one_line(exc)}); run the same pull again to resume") from None
    size = part.stat().st_size
    digest = sha256_file(part, rehash=True, progress=progress)
    if size != info.size_bytes or digest != info.sha256:
        part.unlink(missing_ok=True)
        raise ProvisionError(f"{repo}/{filename}: downloaded {size:,} bytes with SHA256 {digest[:16]}…, the hub "
                             f"publishes {info.size_bytes:,} bytes, {info.sha256[:16]}…; removed it: pull again")
    os.replace(part, dest)
    remember_sha256(dest, digest)
    _write_sidecar(dest, published)
    return Pulled(dest, digest, size, published, resumed_from_bytes=have)


def _write_sidecar(dest: Path, published: PublishedChecksum) -> None:
    data = {**asdict(published), "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = sidecar_path(dest).with_suffix(f".tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, sidecar_path(dest))
    except OSError:
        tmp.unlink(missing_ok=True)  # the model is in place; only the manifest's citation is lost
