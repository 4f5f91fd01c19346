"""Before anything launches: each arm's server binary and model found, hashed and checked; the host described."""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import ArmSpec, RunConfig
from .prompts import PromptCase
from .sampler import cpu_model


@dataclass(frozen=True)
class ResolvedArm:
    """An arm with its binary and model found, hashed and checked."""

    spec: ArmSpec
    server: dict[str, Any]  # {"path", "version_text", "build_id", "backend", "found_via"}
    model: dict[str, Any]  # the manifest's `models` entry: display name, path, size, SHA256, then ModelDesc.to_dict()


def host_info() -> dict[str, Any]:
    mem_kib = None
    try:
        with open("/proc/meminfo") as fh:
            mem_kib = int(fh.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "mem_total_mib": round(mem_kib / 1024) if mem_kib else None,
    }


def resolve_server(server_bin: str | None, build: str | None = None) -> dict[str, Any]:
    """The arm's llama-server, described: a cache build by name or id, else a path, else discovered."""
    from ..server.discover import find_build, find_server

    sb = find_build(build) if build is not None else find_server(server_bin)
    return {
        "path": str(sb.path),
        "version_text": sb.version_text,
        "build_id": sb.build_id,
        "backend": sb.backend,
        "found_via": sb.found_via,
    }


def resolve_model(name: str, models_dir: str | None, note: Callable[[str], None]) -> dict[str, Any]:
    """The manifest's `models` entry for a name or path: found (synthesised on first use), checked, hashed, described."""
    from ..models.catalog import Absent, find_model, provision
    from ..models.desc import read_model
    from ..models.hashing import sha256_file

    found = find_model(name, models_dir)
    if isinstance(found, Absent):
        if found.synthesisable:  # first use of a synthetic name: write it into the cache once
            note(f"synthesising {found.entry.name} (~{found.entry.approx_size_gb:g} GB, random weights, first use) "
                 f"into {found.dest.parent}")
        ref = provision(found)  # a missing download: ModelNotFound naming the command that fetches it
    else:
        ref = found
    path = Path(ref.path)
    desc = read_model(path)  # checks the file first (missing, not GGUF, truncated)
    note(f"hashing {path.name} ({path.stat().st_size / 2**20:.0f} MiB)")
    sha = sha256_file(path)
    fields = desc.to_dict()
    del fields["name"]  # general.name, None when the header has none: the display name stands for it
    return {
        "name": desc.display_name,
        "path": fields.pop("path"),
        "size_bytes": path.stat().st_size,
        "sha256": sha,
        **_published(ref, path, sha),
        **fields,
    }


def _published(ref: Any, path: Path, sha: str) -> dict[str, Any]:
    """The digest published for this file and where (recorded when it was pulled from the hub, else
    the catalog's citation), and whether the file has it; {} when none is known."""
    from ..models.catalog import CATALOG
    from ..models.hub import published_checksum

    pub = published_checksum(path)
    if pub is not None:
        digest, source = pub.sha256, pub.source
    elif ref.expected_sha256:
        entry = CATALOG.get(ref.name)
        digest, source = ref.expected_sha256, (entry.sha256_source if entry else None) or "abtest's catalog"
    else:
        return {}
    return {"published_sha256": digest, "published_sha256_source": source, "published_sha256_matches": digest == sha}


def resolve_arms(cfg: RunConfig, note: Callable[[str], None]) -> list[ResolvedArm]:
    """Each arm's binary (its build, its server_bin, else the run's) and model, each resolved once."""
    servers: dict[tuple[str, str | None], dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    out = []
    for arm in cfg.arms:
        bin_key = ("build", arm.build) if arm.build else ("path", arm.server_bin or cfg.server_bin)
        if bin_key not in servers:
            if arm.kind == "llama-server":
                servers[bin_key] = resolve_server(arm.server_bin or cfg.server_bin, arm.build)
            else:
                servers[bin_key] = {"path": bin_key[1] or arm.kind, "version_text": "unknown", "build_id": "unknown",
                                    "backend": "unknown", "found_via": "--arms-file"}
        model_key = arm.model or cfg.model
        if model_key not in models:
            models[model_key] = resolve_model(model_key, cfg.models_dir, note)
        out.append(ResolvedArm(arm, servers[bin_key], models[model_key]))
    return out


def longest_prompt_estimate(cases: Sequence[PromptCase]) -> int:
    """Upper bound of prompt tokens before any server is up: the target, or the UTF-8 bytes + 8
    for untargeted text (a byte-level BPE never needs more tokens than bytes, plus specials)."""
    return max(c.target_tokens + 8 if c.target_tokens else len(c.text.encode()) + 8 for c in cases)


def evidence_path(cfg: RunConfig, model_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(model_name).stem)
    return Path(cfg.out_dir) / f"{stamp}-{safe}.jsonl"
