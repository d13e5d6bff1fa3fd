"""Lazy access to a checkpoint's safetensors weights under one canonical naming.

The exporter builds one graph at a time and loads only that graph's tensors (safetensors maps the
file and reads a tensor when asked), so exporting a 14 GB model never holds it all in memory.

Checkpoints in the wild name the same tensor differently (llava-hf's original layout, the layout
transformers 5 writes, with or without ``vision_model.``); every name is mapped to:

    text.embed_tokens.weight   text.layers.{i}.…   text.norm.weight   lm_head.weight
    vision.embeddings.…        vision.pre_layrnorm.…   vision.encoder.layers.{i}.…   projector.…
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
]


def canonical_name(name: str) -> str | None:
    for pattern, replacement in _CANONICAL:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return None  # a tensor transprune does not use


class CheckpointWeights:
    """``weights["text.layers.3.mlp.up_proj.weight"]`` -> a torch tensor read on demand."""

    def __init__(self, directory: Path) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        files = self._shard_files()
        self._handles = {}
        self._where: dict[str, tuple[str, str]] = {}
        for file in files:
            try:
                handle = safe_open(str(file), framework="pt")
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise TransPruneError(f"{file}: not a readable safetensors file ({exc})") from None
            self._handles[file.name] = handle
            for key in handle.keys():
                canonical = canonical_name(key)
                if canonical is not None:
                    self._where[canonical] = (file.name, key)

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

    def __getitem__(self, name: str):
        try:
            file, key = self._where[name]
        except KeyError:
            raise TransPruneError(f"{self.directory}: checkpoint has no tensor for {name!r}") from None
        return self._handles[file].get_tensor(key)

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._where if n.startswith(prefix))

    def load_prefix(self, prefix: str) -> dict:
        """All tensors under ``prefix`` with the prefix stripped (a module's state dict)."""
        return {name[len(prefix):]: self[name] for name in self.names(prefix)}
