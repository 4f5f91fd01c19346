"""A model as VRAM sizing sees it: hyper-parameters and tensor sizes, from a GGUF header or a synth preset."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .gguf import EXPERT_TENSOR_RE, LAYER_RE


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
    shape: tuple[int, ...]  # ggml order, ne0 first
    ggml_type: int
    nbytes: int


@dataclass(frozen=True)
class ModelLayout:
    """The hyper-parameters and tensors that decide where memory goes."""

    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int  # dense FFN width
    n_expert: int  # 0 for a dense model
    n_expert_used: int
    n_ff_exp: int
    n_vocab: int
    tensors: tuple[Tensor, ...] = field(repr=False)

    # -- tensor classes ------------------------------------------------------------------------
    def layer_of(self, t: Tensor) -> int | None:
        m = LAYER_RE.match(t.name)
        if m and int(m.group(1)) < self.n_layer:
            return int(m.group(1))
        return None

    @staticmethod
    def is_expert(t: Tensor) -> bool:
        return EXPERT_TENSOR_RE.search(t.name) is not None

    def layer_expert_bytes(self) -> list[int]:
        out = [0] * self.n_layer
        for t in self.tensors:
            i = self.layer_of(t)
            if i is not None and self.is_expert(t):
                out[i] += t.nbytes
        return out

    def has_output(self) -> bool:
        return any(t.name == "output.weight" for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def expert_fraction(self) -> float:
        """Share of each layer's expert bytes a token reads: n_expert_used / n_expert."""
        return self.n_expert_used / self.n_expert if self.n_expert else 0.0

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "tensors"}
        d["tensor_bytes"] = self.tensor_bytes
        d["layer_expert_bytes"] = self.layer_expert_bytes()
        return d


def _tensors(ts: Iterable[TensorLike]) -> tuple[Tensor, ...]:
    return tuple(Tensor(t.name, tuple(int(x) for x in t.shape), int(t.ggml_type), int(t.nbytes)) for t in ts)


def layout_from_gguf(path: str | os.PathLike[str]) -> ModelLayout:
    """Read a GGUF header (no tensor data) into a ModelLayout."""
    from .gguf import arch_int, model_arch, read_header, vocab_size

    h = read_header(path)
    kv = h.kv
    arch = model_arch(h, path)

    def a(key: str, default: int = 0) -> int:
        return arch_int(h, arch, key, default)

    n_embd, n_head = a("embedding_length"), a("attention.head_count")
    head_k = a("attention.key_length", n_embd // n_head if n_head else 0)
    n_vocab = vocab_size(h, arch)
    name = kv.get("general.name")
    return ModelLayout(
        name=name if isinstance(name, str) else os.path.basename(str(path)),
        arch=arch,
        n_layer=a("block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=a("attention.head_count_kv", n_head),
        head_dim_k=head_k,
        head_dim_v=a("attention.value_length", head_k),
        n_ff=a("feed_forward_length"),
        n_expert=a("expert_count"),
        n_expert_used=a("expert_used_count"),
        n_ff_exp=a("expert_feed_forward_length"),
        n_vocab=int(n_vocab),
        tensors=_tensors(h.tensors),
    )


def layout_from_preset(preset: str, qtype: str = "q4_0") -> ModelLayout:
    """The layout of a synth preset, from `synth.tensor_plan` (writes nothing)."""
    from . import presets, synth

    p = presets.get_preset(preset)
    return ModelLayout(
        name=f"{p.name} ({qtype})", arch=p.arch, n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head,
        n_head_kv=p.n_head_kv, head_dim_k=p.head_dim, head_dim_v=p.head_dim, n_ff=p.n_ff,
        n_expert=p.n_expert, n_expert_used=p.n_expert_used, n_ff_exp=p.n_ff_exp, n_vocab=p.n_vocab,
        tensors=_tensors(synth.tensor_plan(p, qtype)),
    )
