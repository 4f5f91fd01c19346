"""Reading GGUF headers: key/values and tensor infos, and the cheap sanity check run before any launch.

`read_header` parses a header into a `GGUFHeader`; `check_gguf` also checks that the tensors fit
in the file; `models.desc.read_model` turns a header into the one model description.

Only the header is read (key/values and tensor infos, a few MB even for a 200k-token vocab),
never the tensor data. We parse the header here rather than through `gguf.GGUFReader`: the
reader builds numpy views for every element of every array, which costs ~3.5 s for a 50k-token
vocabulary and ~4x that for gpt-oss's 201k; this walk takes a fraction of a second. Type sizes
and names still come from the `gguf` package's constants (`gguf_constants`: that module alone,
not the package, whose import pulls in numpy, its reader and writer -- `abtest run`'s start-up).

Format (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv; n_kv
key/values (string key, u32 type, value); n_tensors infos (string name, u32 n_dims, u64 ne[n_dims],
u32 ggml type, u64 offset relative to the data section); padding to `general.alignment` (32);
then the tensor data.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigError, ModelNotFound

GGUF_MAGIC = b"GGUF"
# Tensors llama.cpp's --cpu-moe / --n-cpu-moe keep in system RAM (common/common.h LLM_FFN_EXPS_REGEX).
EXPERT_TENSOR_RE = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")
LAYER_RE = re.compile(r"^blk\.(\d+)\.")  # a block tensor's layer index
# Arrays longer than this are counted, not decoded (vocabularies, merges, scores).
_DECODE_ARRAY_MAX = 4096

_SCALAR = {  # GGUFValueType -> struct format
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9


_CONSTANTS = "_abtest_gguf_constants"  # its name in sys.modules when loaded alone


def gguf_constants() -> ModuleType:
    """gguf-py's `gguf.constants` (type ids, block sizes, names), without the `gguf` package's
    __init__, which imports numpy, its reader, writer and metadata (~0.4 s of CPU on a small box,
    most of `abtest run`'s start-up before it). Loaded alone under a name of its own, so the package
    itself is untouched: a later ``import gguf`` loads its own copy, whose `GGMLQuantizationType` (an
    IntEnum) equals this one's member for member. The package's own module once it is imported; the
    package where its constants cannot be read alone (a zip, a version whose constants import siblings)."""
    mod = sys.modules.get("gguf.constants") or sys.modules.get(_CONSTANTS)
    if mod is not None:
        return mod
    spec = importlib.util.find_spec("gguf")  # a top-level name: found, not imported
    where = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(where[0]) / "constants.py" if where else None
    if path is not None and path.is_file():
        sub = importlib.util.spec_from_file_location(_CONSTANTS, path)
        if sub is not None and sub.loader is not None:
            mod = importlib.util.module_from_spec(sub)
            sys.modules[_CONSTANTS] = mod  # enum and dataclass machinery look their module up by name
            try:
                sub.loader.exec_module(mod)
                return mod
            except Exception:
                del sys.modules[_CONSTANTS]
    import gguf.constants

    return gguf.constants


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class ArrayInfo:
    """A long array value, counted rather than decoded."""

    item_type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first
    ggml_type: int
    offset: int  # relative to the data section
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    kv: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size_bytes: int

    @property
    def data_end(self) -> int:
        """Where the last tensor's data ends: the file must be at least this long."""
        return self.data_offset + max((t.offset + t.nbytes for t in self.tensors), default=0)


class _Cursor:
    """Reads little-endian values from a buffer, raising _Truncated past its end."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise _Truncated
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > self.size:
            raise _Truncated
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def _strings(self, count: int) -> list[str]:
        """`count` strings in a row: `string` inlined (a vocabulary's tokens and merges)."""
        buf, pos, size, out = self.buf, self.pos, self.size, []
        u64 = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            (n,) = u64(buf, pos)
            pos += 8
            if pos + n > size:
                raise _Truncated
            out.append(bytes(buf[pos : pos + n]).decode("utf-8", errors="replace"))
            pos += n
        self.pos = pos
        return out

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        if self.pos + n > self.size:
            raise _Truncated
        self.pos += n

    def value(self, vtype: int) -> Any:
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.unpack("<I")
            count = self.unpack("<Q")
            if count <= _DECODE_ARRAY_MAX:
                if item_type in _SCALAR:  # one unpack for the whole array (a vocabulary's token types)
                    fmt = f"<{count}{_SCALAR[item_type][1]}"
                    n = struct.calcsize(fmt)
                    if self.pos + n > self.size:
                        raise _Truncated
                    items = list(struct.unpack_from(fmt, self.buf, self.pos))
                    self.pos += n
                    return items
                if item_type == _STRING:
                    return self._strings(count)
                return [self.value(item_type) for _ in range(count)]
            if item_type == _STRING:
                for _ in range(count):
                    self.skip_string()
            elif item_type in _SCALAR:
                n = struct.calcsize(_SCALAR[item_type]) * count
                if self.pos + n > self.size:
                    raise _Truncated
                self.pos += n
            else:  # arrays of arrays: walk them
                for _ in range(count):
                    self.value(item_type)
            return ArrayInfo(item_type, count)
        raise ValueError(f"unknown GGUF value type {vtype}")


def _tensor_nbytes(name: str, shape: tuple[int, ...], ggml_type: int, path: Path) -> int:
    c = gguf_constants()
    try:
        block, type_size = c.GGML_QUANT_SIZES[c.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise ConfigError(
            f"{path}: tensor {name!r} has ggml type {ggml_type}, unknown to the installed gguf package; "
            "upgrade it (pip install -U gguf)"
        ) from None
    n = 1
    for x in shape:
        n *= x
    return n // block * type_size


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse the GGUF header (metadata and tensor infos) of `path` without touching tensor data.

    Raises ModelNotFound if the file is missing, ConfigError if it is not a GGUF file or is cut
    short inside its header. Does not check the data section; `check_gguf` does.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ModelNotFound(f"model file {p} not found; check the path, or run `abtest model list` for names") from None
    if p.is_dir():
        raise ConfigError(f"{p} is a directory, not a GGUF file; give the .gguf file inside it")
    with open(p, "rb") as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            if len(magic) < 4:
                raise ConfigError(f"{p}: truncated ({size} bytes, no GGUF header); re-download or re-create the file")
            raise ConfigError(f"{p}: not a GGUF file (bad magic {magic!r}); check the path or re-download the model")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _parse(mm, p, size)
            except _Truncated:
                raise ConfigError(
                    f"{p}: truncated (the file ends inside its GGUF header, {size} bytes); "
                    "the download or write was interrupted: re-download or re-create it"
                ) from None


def _parse(buf: Any, path: Path, size: int) -> GGUFHeader:
    c = _Cursor(buf)
    c.pos = 4
    version = c.unpack("<I")
    if version not in (2, 3):
        raise ConfigError(f"{path}: GGUF version {version} is not supported (2 or 3 expected); re-convert the model")
    n_tensors = c.unpack("<Q")
    n_kv = c.unpack("<Q")
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        vtype = c.unpack("<I")
        try:
            kv[key] = c.value(vtype)
        except ValueError as exc:
            raise ConfigError(f"{path}: corrupt GGUF metadata at key {key!r} ({exc}); re-download the model") from None
    tensors = []
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.unpack("<I")
        shape = tuple(c.unpack("<Q") for _ in range(n_dims))
        ggml_type = c.unpack("<I")
        offset = c.unpack("<Q")
        tensors.append(TensorInfo(name, shape, ggml_type, offset, _tensor_nbytes(name, shape, ggml_type, path)))
    alignment = kv.get("general.alignment", gguf_constants().GGUF_DEFAULT_ALIGNMENT)
    data_offset = c.pos + (-c.pos % alignment)
    return GGUFHeader(version, kv, tuple(tensors), data_offset, size)


def check_gguf(path: str | os.PathLike[str]) -> GGUFHeader:
    """Fail early, with one line naming the fix, if `path` is missing, not GGUF, or truncated.

    Truncated means shorter than the data offset plus the furthest tensor's extent (an
    interrupted download), which llama-server would otherwise report only after a slow start.
    """
    h = read_header(path)
    if h.file_size_bytes < h.data_end:
        raise ConfigError(
            f"{path}: truncated ({h.file_size_bytes} bytes, its tensors need {h.data_end}); "
            "the download or write was interrupted: re-download or re-create it"
        )
    return h


def _int(v: Any, default: int = 0) -> int:
    """A scalar, or the max of a per-layer array (some archs vary heads/experts per layer)."""
    if v is None:
        return default
    if isinstance(v, list):
        return int(max(v)) if v else default
    if isinstance(v, ArrayInfo):
        return default
    return int(v)


def _count(v: Any) -> int:
    if isinstance(v, ArrayInfo):
        return v.count
    if isinstance(v, list):
        return len(v)
    return 0


def model_arch(h: GGUFHeader, path: str | os.PathLike[str]) -> str:
    """`general.architecture`, or a ConfigError for files that are not models."""
    arch = h.kv.get("general.architecture")
    if not isinstance(arch, str):
        raise ConfigError(f"{path}: GGUF has no general.architecture; it is not a model file (a LoRA or vocab-only file?)")
    return arch


def arch_int(h: GGUFHeader, arch: str, key: str, default: int = 0) -> int:
    """`<arch>.<key>` as an int (the largest entry of a per-layer array), `default` if absent."""
    return _int(h.kv.get(f"{arch}.{key}"), default)


def vocab_size(h: GGUFHeader, arch: str) -> int:
    """Tokenizer entries, else `<arch>.vocab_size`, else token_embd's second dimension."""
    tok_embd = next((t for t in h.tensors if t.name == "token_embd.weight"), None)
    return _count(h.kv.get("tokenizer.ggml.tokens")) or arch_int(h, arch, "vocab_size") or (
        int(tok_embd.shape[1]) if tok_embd else 0)
