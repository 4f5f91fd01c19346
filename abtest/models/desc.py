"""One model description (`ModelDesc`): hyper-parameters and tensor sizes, read from a GGUF header or planned from a synth preset.

It serves every reader of a model's shape: the manifest's `models` entry (`to_dict`), `abtest
model info`, the VRAM prediction (`vram`, from the tensor list) and the sweep (`summary`). A
preset's description is the one reading the file it would write gives, less the file's path and
size (tests/unit/test_vram.py checks that), so the sweep can be planned without writing anything.

Bytes are tensor data sizes, without padding. Parameters are counted from the tensor shapes, the
same count llama.cpp prints as "model params". "Active" (per token) is every parameter outside
the routed experts -- attention, norms, the router, the dense leading layers of deepseek and
deepseek2, their *shared* experts (``ffn_*_shexp``, which every token runs), embeddings and the
output head -- plus n_expert_used / n_expert of the routed-expert parameters (``ffn_*_exps``,
weights and biases, `EXPERT_TENSOR_RE`). That is how Qwen, Microsoft and DeepSeek count their
published "activated" figures; OpenAI's gpt-oss model card leaves the input embedding table out
(a row lookup, not a matmul): `active_params_excl_embd`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from .gguf import EXPERT_TENSOR_RE, LAYER_RE, arch_int, check_gguf, gguf_constants, model_arch, vocab_size


class TensorLike(Protocol):
    """What a tensor needs for sizing: gguf.TensorInfo and synth.TensorSpec both fit."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def ggml_type(self) -> int: ...
    @property
    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # ggml order, ne0 (row length) first
    ggml_type: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for x in self.shape:
            n *= x
        return n


@dataclass(frozen=True)
class _Split:
    """The tensor list summed the ways the readers need it (computed once per description)."""

    total_params: int
    expert_params: int
    tensor_bytes: int
    nonlayer_bytes: int
    layer_expert_bytes: tuple[int, ...]
    layer_other_bytes: tuple[int, ...]
    quant: str


@dataclass(frozen=True)
class ModelDesc:
    """A model's shape: what its GGUF header says (or a preset's would), and its tensors."""

    path: str | None  # the GGUF file read; None for a preset's plan
    name: str | None  # general.name: what the file calls itself (None if the header has none)
    arch: str  # general.architecture, e.g. "qwen3moe"
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int  # attention.key_length
    head_dim_v: int  # attention.value_length
    n_ff: int  # dense FFN width (0 if absent)
    n_expert: int  # 0 for a dense model
    n_expert_used: int
    n_ff_exp: int  # routed-expert FFN width: expert_feed_forward_length, else read off ffn_up_exps (phimoe has no key); 0 for dense
    n_vocab: int
    context_length: int
    file_size_bytes: int | None  # None for a preset's plan
    synth_preset: str | None  # abtest.synth.preset when abtest wrote (or would write) the file
    tensors: tuple[Tensor, ...] = field(repr=False)
    # Architecture extras (not in to_dict/summary, whose keys the evidence format pins):
    n_layer_dense_lead: int = 0  # leading_dense_block_count: blocks with a dense FFN (deepseek, deepseek2)
    n_expert_shared: int = 0  # expert_shared_count: always-active shared experts (deepseek, deepseek2)
    kv_lora_rank: int = 0  # attention.kv_lora_rank: deepseek2's compressed KV (MLA when head_dim_k_mla is set)
    head_dim_k_mla: int = 0  # attention.key_length_mla (0: no MLA)
    head_dim_v_mla: int = 0  # attention.value_length_mla
    n_swa: int = 0  # attention.sliding_window, in tokens (0: none)
    swa_layers: tuple[int, ...] = ()  # the blocks llama.cpp runs with sliding-window attention

    @property
    def display_name(self) -> str:
        """The model's name in evidence and reports: general.name, else the file's stem (docs/models.md)."""
        if self.name is not None:
            return self.name
        return Path(str(self.path)).stem

    # -- tensor classes ------------------------------------------------------------------------
    def layer_of(self, t: Tensor) -> int | None:
        """The block a tensor belongs to; None outside blocks (embeddings, output, nextn/MTP layers
        past block_count, which --n-cpu-moe never touches)."""
        m = LAYER_RE.match(t.name)
        if m and int(m.group(1)) < self.n_layer:
            return int(m.group(1))
        return None

    @staticmethod
    def is_expert(t: Tensor) -> bool:
        """A routed-expert tensor: what --cpu-moe / --n-cpu-moe keep in system RAM."""
        return EXPERT_TENSOR_RE.search(t.name) is not None

    def has_output(self) -> bool:
        return any(t.name == "output.weight" for t in self.tensors)

    @cached_property
    def _split(self) -> _Split:
        layer_expert = [0] * self.n_layer
        layer_other = [0] * self.n_layer
        nonlayer = total = expert = 0
        by_type: dict[int, int] = {}
        for t in self.tensors:
            n = t.n_elements
            total += n
            by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + t.nbytes
            is_expert = self.is_expert(t)
            if is_expert:
                expert += n
            layer = self.layer_of(t)
            if layer is None:
                nonlayer += t.nbytes
            else:
                (layer_expert if is_expert else layer_other)[layer] += t.nbytes
        main_type = max(by_type, key=lambda k: by_type[k]) if by_type else 0
        try:
            quant = gguf_constants().GGMLQuantizationType(main_type).name
        except ValueError:
            quant = f"type{main_type}"
        return _Split(total, expert, sum(by_type.values()), nonlayer, tuple(layer_expert), tuple(layer_other), quant)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def quant(self) -> str:
        """The ggml type holding the most bytes, e.g. "Q4_0"."""
        return self._split.quant

    @property
    def total_params(self) -> int:
        return self._split.total_params

    @property
    def expert_params(self) -> int:
        """Parameters in the tensors --n-cpu-moe moves to system RAM."""
        return self._split.expert_params

    @property
    def active_params(self) -> int:
        """Per token: non-expert parameters (shared experts and dense layers included) +
        n_expert_used / n_expert of the routed-expert parameters."""
        s = self._split
        return s.total_params - s.expert_params + (
            s.expert_params * self.n_expert_used // self.n_expert if self.n_expert else 0)

    @property
    def active_params_excl_embd(self) -> int:
        """`active_params` less the input embedding table, which a token only reads one row of
        (OpenAI's convention for gpt-oss). With tied embeddings the table is also the output
        matmul, so it stays in."""
        if not self.has_output():
            return self.active_params
        embd = sum(t.n_elements for t in self.tensors if t.name == "token_embd.weight")
        return self.active_params - embd

    @property
    def is_mla(self) -> bool:
        """deepseek2 with multi-head latent attention: the cache holds kv_lora_rank + n_rot per token."""
        return self.head_dim_k_mla > 0

    @property
    def tensor_bytes(self) -> int:
        return self._split.tensor_bytes

    @property
    def nonlayer_bytes(self) -> int:
        """Embeddings, output head, final norm (and layers past block_count)."""
        return self._split.nonlayer_bytes

    @property
    def layer_expert_bytes(self) -> tuple[int, ...]:
        """Per layer: the routed-expert tensors."""
        return self._split.layer_expert_bytes

    @property
    def layer_other_bytes(self) -> tuple[int, ...]:
        """Per layer: attention, norms, router, shared experts."""
        return self._split.layer_other_bytes

    @property
    def expert_fraction(self) -> float:
        """Share of each layer's expert bytes a token reads: n_expert_used / n_expert."""
        return self.n_expert_used / self.n_expert if self.n_expert else 0.0

    def gpu_weight_bytes(self, n_cpu_moe: int = 0) -> int:
        """Weight bytes left on the GPU with `-ngl 999 --n-cpu-moe N`: all but the experts of layers 0..N-1."""
        n = max(0, min(n_cpu_moe, self.n_layer))
        return self.tensor_bytes - sum(self.layer_expert_bytes[:n])

    # -- architecture extras ------------------------------------------------------------------
    def _width(self, suffix: str, dim: int) -> int:
        return next((t.shape[dim] for t in self.tensors if t.name.endswith(suffix) and len(t.shape) > dim), 0)

    def arch_extras(self) -> dict[str, Any]:
        """What the plain hyper-parameters do not say about the graph: the sliding-window layers,
        MLA's ranks, shared experts, dense leading blocks, attention sinks. Empty for a model
        with none of them (`abtest model info` prints these; to_dict's keys stay as they were)."""
        out: dict[str, Any] = {}
        if self.swa_layers:
            out["sliding_window"] = {"window": self.n_swa, "layers": list(self.swa_layers),
                                     "n_swa_layers": len(self.swa_layers), "n_full_layers": self.n_layer - len(self.swa_layers)}
        if self.is_mla:
            out["mla"] = {"kv_lora_rank": self.kv_lora_rank, "n_rot": self.head_dim_k - self.kv_lora_rank,
                          "head_dim_k_mla": self.head_dim_k_mla, "head_dim_v_mla": self.head_dim_v_mla,
                          "cached_per_token": self.n_head_kv * self.head_dim_k}
        if self.n_expert_shared:
            out["shared_experts"] = {"count": self.n_expert_shared, "ffn_width": self._width(".ffn_up_shexp.weight", 1)}
        if self.n_layer_dense_lead:
            out["dense_leading_blocks"] = {"count": self.n_layer_dense_lead, "ffn_width": self._width(".ffn_up.weight", 1)}
        if any(t.name.endswith(".attn_sinks.weight") for t in self.tensors):
            out["attention_sinks"] = True
        return out

    def arch_rows(self) -> list[tuple[str, str]]:
        """`arch_extras` as (label, text) rows for `abtest model info`."""
        x, rows = self.arch_extras(), []
        if "sliding_window" in x:
            w = x["sliding_window"]
            layers = w["layers"]
            shown = ", ".join(map(str, layers[:4])) + (", ..." if len(layers) > 4 else "")
            rows.append(("sliding window", f"{w['window']} tokens on {w['n_swa_layers']} of {self.n_layer} blocks "
                         f"({shown}); their KV cache holds the window + one micro-batch"))
        if "mla" in x:
            m = x["mla"]
            rows.append(("MLA", f"kv_lora_rank {m['kv_lora_rank']} + rope {m['n_rot']} cached per token "
                         f"({m['cached_per_token']} values, no V); per head K {m['head_dim_k_mla']}, "
                         f"V {m['head_dim_v_mla']}"))
        if "shared_experts" in x:
            e = x["shared_experts"]
            rows.append(("shared experts", f"{e['count']} (FFN {e['ffn_width']}), every token; "
                         "stay on the GPU with --cpu-moe"))
        if "dense_leading_blocks" in x:
            b = x["dense_leading_blocks"]
            rows.append(("dense blocks", f"the first {b['count']} (FFN {b['ffn_width']}), no experts"))
        if x.get("attention_sinks"):
            rows.append(("attention sinks", "one learned logit per head"))
        return rows

    # -- as data -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """What `abtest model info --json` prints and the manifest's `models` entry holds (its keys
        and order are part of the evidence format: tests/unit/test_model_desc.py pins them)."""
        return {
            "path": self.path, "name": self.name, "arch": self.arch, "quant": self.quant,
            "n_layer": self.n_layer, "n_embd": self.n_embd, "n_head": self.n_head, "n_head_kv": self.n_head_kv,
            "head_dim": self.head_dim_k, "n_ff": self.n_ff, "n_expert": self.n_expert,
            "n_expert_used": self.n_expert_used, "n_ff_exp": self.n_ff_exp, "n_vocab": self.n_vocab,
            "context_length": self.context_length, "total_params": self.total_params,
            "expert_params": self.expert_params, "active_params": self.active_params,
            "file_size_bytes": self.file_size_bytes, "tensor_bytes": self.tensor_bytes,
            "nonlayer_bytes": self.nonlayer_bytes, "layer_expert_bytes": list(self.layer_expert_bytes),
            "layer_other_bytes": list(self.layer_other_bytes), "synth_preset": self.synth_preset,
        }

    def summary(self) -> dict[str, Any]:
        """What the sweep plan records (config.extra.sweep.layout); the sweep report names the
        model by its "name"."""
        return {
            "name": self.display_name, "arch": self.arch, "n_layer": self.n_layer, "n_embd": self.n_embd,
            "n_head": self.n_head, "n_head_kv": self.n_head_kv, "head_dim_k": self.head_dim_k,
            "head_dim_v": self.head_dim_v, "n_ff": self.n_ff, "n_expert": self.n_expert,
            "n_expert_used": self.n_expert_used, "n_ff_exp": self.n_ff_exp, "n_vocab": self.n_vocab,
            "tensor_bytes": self.tensor_bytes, "layer_expert_bytes": list(self.layer_expert_bytes),
        }


def _tensors(ts: Iterable[TensorLike]) -> tuple[Tensor, ...]:
    return tuple(Tensor(t.name, tuple(int(x) for x in t.shape), int(t.ggml_type), int(t.nbytes)) for t in ts)


def read_model(path: str | os.PathLike[str]) -> ModelDesc:
    """Read a GGUF's header (never its tensor data) into a ModelDesc; fails first, with one line,
    if the file is missing, not GGUF, or truncated (`check_gguf`)."""
    h = check_gguf(path)
    arch = model_arch(h, path)

    def a(key: str, default: int = 0) -> int:
        return arch_int(h, arch, key, default)

    n_embd, n_head = a("embedding_length"), a("attention.head_count")
    head_k = a("attention.key_length", n_embd // n_head if n_head else 0)
    name = h.kv.get("general.name")
    preset = h.kv.get("abtest.synth.preset")
    n_layer = a("block_count")
    n_swa = a("attention.sliding_window")
    return ModelDesc(
        path=str(path),
        name=name if isinstance(name, str) else None,
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=a("attention.head_count_kv", n_head),
        head_dim_k=head_k,
        head_dim_v=a("attention.value_length", head_k),
        n_ff=a("feed_forward_length"),
        n_expert=a("expert_count"),
        n_expert_used=a("expert_used_count"),
        n_ff_exp=a("expert_feed_forward_length") or _expert_width(h.tensors),
        n_vocab=vocab_size(h, arch),
        context_length=a("context_length"),
        file_size_bytes=h.file_size_bytes,
        synth_preset=preset if isinstance(preset, str) else None,
        tensors=_tensors(h.tensors),
        n_layer_dense_lead=a("leading_dense_block_count"),
        n_expert_shared=a("expert_shared_count"),
        kv_lora_rank=a("attention.kv_lora_rank"),
        head_dim_k_mla=a("attention.key_length_mla"),
        head_dim_v_mla=a("attention.value_length_mla"),
        n_swa=n_swa,
        swa_layers=swa_layers(arch, n_layer, n_swa, h.kv.get(f"{arch}.attention.sliding_window_pattern")),
    )


def _expert_width(tensors: Iterable[TensorLike]) -> int:
    """n_ff_exp read off the first ffn_up_exps ([n_embd, n_ff_exp, n_expert]) or ffn_down_exps
    ([n_ff_exp, n_embd, n_expert]); 0 when there is none."""
    for t in tensors:
        if ".ffn_up_exps.weight" in t.name and len(t.shape) == 3:
            return int(t.shape[1])
        if ".ffn_down_exps.weight" in t.name and len(t.shape) == 3:
            return int(t.shape[0])
    return 0


def swa_layers(arch: str, n_layer: int, n_swa: int, pattern: Any = None) -> tuple[int, ...]:
    """The blocks llama.cpp runs with sliding-window attention. An explicit per-layer
    sliding_window_pattern array wins; gpt-oss otherwise alternates from block 0
    (openai-moe.cpp: load_swa_pattern(ml, 2), is_swa(il) = il % n < n - 1). phi3/phimoe files
    carry a window that llama.cpp ignores (phi3.cpp disables it), so they have none; other
    architectures are not modelled here."""
    if not n_swa:
        return ()
    if isinstance(pattern, list):
        return tuple(i for i, v in enumerate(pattern[:n_layer]) if v)
    if arch == "gpt-oss":
        n = int(pattern) if isinstance(pattern, int) and pattern > 0 else 2
        return tuple(i for i in range(n_layer) if i % n < n - 1)
    return ()


def preset_model(preset: str, qtype: str | None = None) -> ModelDesc:
    """The description of the file `synth.write_synth(…, preset, qtype)` would write, from its
    tensor plan (writes nothing; no path, no file size). qtype None: the preset's default."""
    from . import presets, synth

    p = presets.get_preset(preset)
    return ModelDesc(
        path=None, name=synth.header_name(p), arch=p.arch, n_layer=p.n_layer, n_embd=p.n_embd,
        n_head=p.n_head, n_head_kv=p.n_head_kv, head_dim_k=p.head_dim, head_dim_v=p.head_dim_value, n_ff=p.n_ff,
        n_expert=p.n_expert, n_expert_used=p.n_expert_used, n_ff_exp=p.n_ff_exp, n_vocab=p.n_vocab,
        context_length=p.context_length, file_size_bytes=None, synth_preset=p.name,
        tensors=_tensors(synth.tensor_plan(p, qtype)),
        n_layer_dense_lead=p.n_layer_dense_lead, n_expert_shared=p.n_expert_shared,
        kv_lora_rank=p.kv_lora_rank, head_dim_k_mla=p.head_dim_k_mla, head_dim_v_mla=p.head_dim_v_mla,
        n_swa=p.sliding_window, swa_layers=swa_layers(p.arch, p.n_layer, p.sliding_window),
    )
