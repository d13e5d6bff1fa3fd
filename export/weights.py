"""Lazy access to a checkpoint's safetensors weights under one canonical naming.

The exporter builds one graph at a time and reads each tensor only when that graph's file is
written, one tensor at a time, so exporting a 14 GB model never holds it all in memory.

Checkpoints in the wild name the same tensor differently (llava-hf's original layout, the layout
transformers 5 writes, with or without ``vision_model.``); every name is mapped to:

    text.embed_tokens.weight   text.layers.{i}.…   text.norm.weight   lm_head.weight
    vision.embeddings.…        vision.pre_layrnorm.…   vision.encoder.layers.{i}.…   projector.…
    image_newline (LLaVA-NeXT)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transprune.errors import TransPruneError

# (pattern, replacement) applied in order; the first match wins.
_CANONICAL = [
    (re.compile(r"^(?:model\.)?language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^(?:model\.)?language_model\.(?:model\.)?"), "text."),
    (re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?"), "vision."),
    (re.compile(r"^(?:model\.)?multi_modal_projector\."), "projector."),
    (re.compile(r"^lm_head\."), "lm_head."),
    (re.compile(r"^(?:model\.)?image_newline$"), "image_newline"),  # LLaVA-NeXT
]


def canonical_name(name: str) -> str | None:
    for pattern, replacement in _CANONICAL:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return None  # a tensor transprune does not use


# safetensors dtype codes -> (torch dtype name, bytes per element)
_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
           "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
           "BOOL": ("bool", 1)}
_MAX_HEADER = 100 << 20  # a real header is kilobytes; anything this large is corrupt or hostile


class _Entry:
    __slots__ = ("file", "key", "dtype", "shape", "begin", "end")

    def __init__(self, file: Path, key: str, dtype: str, shape: tuple, begin: int, end: int) -> None:
        self.file, self.key, self.dtype, self.shape, self.begin, self.end = file, key, dtype, shape, begin, end


def read_safetensors_header(file: Path) -> dict[str, _Entry]:
    """The tensor table of a safetensors file, checked: sizes, offsets and dtypes must be consistent."""
    import json as _json

    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        length = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < length <= min(_MAX_HEADER, size - 8):
            raise TransPruneError(f"{file}: not a readable safetensors file (bad header length)")
        try:
            header = _json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError):
            raise TransPruneError(f"{file}: not a readable safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise TransPruneError(f"{file}: not a readable safetensors file (header is not a table)")
    data_start, entries = 8 + length, {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            itemsize = _DTYPES[dtype][1]
        except (KeyError, TypeError, ValueError):
            raise TransPruneError(f"{file}: tensor {key!r} has an invalid or unsupported header entry") from None
        count = 1
        for dim in shape:
            count *= dim
        if not (0 <= begin <= end <= size - data_start and end - begin == count * itemsize):
            raise TransPruneError(f"{file}: tensor {key!r} has data offsets that do not match its shape "
                                  f"(file truncated or corrupt)")
        entries[key] = _Entry(file, key, dtype, shape, data_start + begin, data_start + end)
    return entries


class CheckpointWeights:
    """``weights["text.layers.3.mlp.up_proj.weight"]`` -> a torch tensor read on demand.

    Tensors are read with plain positioned reads, not memory-mapped: a mapping keeps every page
    it touched resident for as long as it is open, so exporting a 14 GB checkpoint through one
    would grow the process to 14 GB even though each tensor is needed only briefly.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._where: dict[str, _Entry] = {}
        for file in self._shard_files():
            for key, entry in read_safetensors_header(file).items():
                canonical = canonical_name(key)
                if canonical is not None:
                    self._where[canonical] = entry

    def _shard_files(self) -> list[Path]:
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [self.directory / name for name in shards]
            for file in files:
                if file.resolve().parent != self.directory.resolve():
                    raise TransPruneError(f"{index}: shard {file.name!r} points outside the checkpoint")
        else:
            files = sorted(self.directory.glob("*.safetensors"))
        missing = [f for f in files if not f.is_file()]
        if not files or missing:
            raise TransPruneError(
                f"{self.directory}: no safetensors weights found"
                + (f" (missing {', '.join(f.name for f in missing)})" if missing else "")
            )
        return files

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def _entry(self, name: str) -> _Entry:
        try:
            return self._where[name]
        except KeyError:
            raise TransPruneError(f"{self.directory}: checkpoint has no tensor for {name!r}") from None

    def __getitem__(self, name: str):
        import torch

        entry = self._entry(name)
        buffer = bytearray(entry.end - entry.begin)
        with open(entry.file, "rb") as f:
            f.seek(entry.begin)
            if f.readinto(buffer) != len(buffer):
                raise TransPruneError(f"{entry.file}: tensor {entry.key!r} is cut short (file truncated)")
        dtype = getattr(torch, _DTYPES[entry.dtype][0])
        if not buffer:
            return torch.empty(entry.shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(entry.shape)

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def describe(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, safetensors dtype such as "F16") of a tensor, from the header only."""
        entry = self._entry(name)
        return entry.shape, entry.dtype

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._where if n.startswith(prefix))


_SAFETENSORS_FLOAT = {"F16", "BF16", "F32", "F64"}
_SAFETENSORS_INT = {"I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class MetaWeights:
    """A weights view that hands out shape-only ``meta`` tensors and remembers where each came from.

    Graph modules are built and traced on these, so building a 20-layer segment of a 7B model
    costs no memory; the ONNX writer later streams each initializer's real values from the
    checkpoint (``load``), cast to the export dtype, one tensor at a time.
    """

    def __init__(self, weights: CheckpointWeights, dtype) -> None:
        self.weights, self.dtype = weights, dtype
        self._sources: dict[int, str] = {}  # storage identity of a handed-out tensor -> checkpoint name

    def __getitem__(self, name: str):
        import torch

        shape, kind = self.weights.describe(name)
        dtype = self.dtype if kind in _SAFETENSORS_FLOAT else getattr(torch, _SAFETENSORS_INT.get(kind, ""), None)
        if dtype is None:
            raise TransPruneError(f"{self.weights.directory}: tensor {name!r} has unsupported dtype {kind}")
        tensor = torch.empty(shape, dtype=dtype, device="meta")
        self._sources[tensor.untyped_storage()._cdata] = name
        return tensor

    def __contains__(self, name: str) -> bool:
        return name in self.weights

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def source(self, parameter) -> str | None:
        """The checkpoint name a module parameter was built from (nn.Parameter shares storage)."""
        return self._sources.get(parameter.untyped_storage()._cdata)

    def load(self, name: str):
        """The real values of checkpoint tensor ``name`` in the export dtype."""
        tensor = self.weights[name]
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor
