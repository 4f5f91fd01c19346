"""SHA256 of model files, streamed in 1 MiB chunks and cached by (device, inode, size, mtime).

`sha256_file` caches the digest in ``<cache>/sha256-cache.json``, so re-checking a 12 GB file
costs a stat; `hash_stream` is the read itself (benchmarks/hash_speed.py times it against sha256sum)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cache import cache_root
from ..errors import ModelNotFound

HASH_CHUNK_BYTES = 1 << 20  # 1 MiB: measured as fast as 4 MiB (benchmarks/hash_speed.py)


HASH_CACHE_FILE = "sha256-cache.json"


HASH_CACHE_MAX_ENTRIES = 2000


ProgressFn = Callable[[int, int], None]  # (bytes_done, bytes_total)


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _cache_path() -> Path:
    return cache_root() / HASH_CACHE_FILE


def _load_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text())
        if isinstance(data, dict) and isinstance(data.get("entries"), dict):
            return data
    except (OSError, ValueError):
        pass  # a missing or corrupt cache is an empty one
    return {"version": 1, "entries": {}}


def _save_cache(data: dict[str, Any]) -> None:
    entries = data["entries"]
    if len(entries) > HASH_CACHE_MAX_ENTRIES:  # drop the oldest
        for k in sorted(entries, key=lambda k: entries[k].get("hashed_at", 0))[: len(entries) - HASH_CACHE_MAX_ENTRIES]:
            del entries[k]
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation; failing to write it must not fail a run


def cached_sha256(path: str | os.PathLike[str]) -> str | None:
    """The cached digest of `path` if its (dev, inode, size, mtime_ns) is unchanged; never reads the file."""
    p = Path(path)
    try:
        key = _stat_key(p)
    except OSError:
        return None
    hit = _load_cache()["entries"].get(key)
    return hit["sha256"] if hit else None


def remember_sha256(path: str | os.PathLike[str], digest: str) -> None:
    """Record a digest computed elsewhere (e.g. while synthesising) for the file as it is now."""
    p = Path(path)
    data = _load_cache()
    data["entries"][_stat_key(p)] = {"sha256": digest, "path": str(p.resolve()), "hashed_at": time.time()}
    _save_cache(data)


def hash_stream(path: str | os.PathLike[str], progress: ProgressFn | None = None, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """SHA256 of a file, read in `chunk_bytes` chunks into one reused buffer (no cache)."""
    p = Path(path)
    total = p.stat().st_size
    h = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    mv = memoryview(buf)
    done = 0
    with open(p, "rb", buffering=0) as f:
        while n := f.readinto(buf):  # type: ignore[attr-defined]
            h.update(mv[:n])
            done += n
            if progress is not None:
                progress(done, total)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str], rehash: bool = False, progress: ProgressFn | None = None) -> str:
    """SHA256 hex digest of `path`, from the cache unless the file changed or rehash=True."""
    p = Path(path)
    if not p.is_file():
        raise ModelNotFound(f"{p} not found (or not a file); check the path")
    if not rehash:
        hit = cached_sha256(p)
        if hit:
            return hit
    key_before = _stat_key(p)
    digest = hash_stream(p, progress=progress)
    if _stat_key(p) == key_before:  # don't cache a digest of a file that changed while we read it
        remember_sha256(p, digest)
    return digest
