"""The one loading path every checkpoint takes: name or directory -> checked directory -> model.

``resolve_checkpoint`` turns what a user passes as ``--model`` into a local directory in the
llava-hf format and the facts about it (a ``ModelPreset``):

- a synthetic preset (``tiny``, ``bench``): built once into the transprune cache;
- a hub preset (``llava-1.5-7b``, ...) or a hub id (``owner/name``): looked up in the local
  Hugging Face cache only; nothing is ever downloaded;
- a local directory.

Every directory is checked the same way before anything is loaded: ``config.json`` of model type
``llava`` (or ``llava_next``) with a LLaMA language model, and safetensors weights (pickle
checkpoints are refused). ``load_llava`` then loads model and processor with ``from_pretrained``
from that directory, offline, with no remote code, so the synthetic models go through exactly the
code a real checkpoint does.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TransPruneError
from .family import check_text_model, family_of_model_type
from .presets import PRESETS, ModelPreset, preset_from_hf_config

__all__ = ["LoadedModel", "hf_hub_cache_dir", "load_llava", "read_config", "resolve_checkpoint"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
           "bf16": "bfloat16", "bfloat16": "bfloat16"}


@dataclass
class LoadedModel:
    """A loaded checkpoint: the model (eval mode), its processor, its facts and its directory."""

    model: Any  # transformers.LlavaForConditionalGeneration
    processor: Any  # transformers.LlavaProcessor
    preset: ModelPreset
    path: Path


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (as huggingface_hub does at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.path.expandvars(xdg)).expanduser() / "huggingface" / "hub"


def _download_hint(hub_id: str) -> str:
    return (
        f"no download is attempted. On a machine with internet access run "
        f"`hf download {hub_id} --local-dir DIR` (or `huggingface-cli download {hub_id} "
        f"--local-dir DIR`), copy DIR here and pass `--model DIR`"
    )


def _from_hub_cache(hub_id: str, what: str) -> Path:
    """The cached snapshot directory of ``hub_id``, or a TransPruneError; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hf_hub_cache_dir()
    try:
        return Path(snapshot_download(hub_id, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        raise TransPruneError(
            f"the weights for {what} (hub id {hub_id}) are not available locally "
            f"(Hugging Face cache {cache}); {_download_hint(hub_id)}"
        ) from None


def read_config(path: Path) -> dict:
    """A checkpoint directory's config.json as a dict, or a TransPruneError saying what is wrong."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TransPruneError(
            f"{path} has no config.json, so it is not a checkpoint directory; transprune needs a "
            f"LlavaForConditionalGeneration checkpoint in the llava-hf format (config.json, "
            f"*.safetensors weights, tokenizer and processor files)"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransPruneError(f"cannot read {config_file} as JSON: {exc}") from None
    if not isinstance(config, dict):
        raise TransPruneError(f"{config_file} does not hold a JSON object")
    return config


def _check_model_type(config: dict, path: Path) -> None:
    family_of_model_type(config.get("model_type"), where=str(path))
    text = config.get("text_config")
    if isinstance(text, dict):  # not a dict: preset_from_hf_config says the config is no LLaVA config
        check_text_model(text.get("model_type"), where=str(path))


def _check_weights(path: Path) -> None:
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise TransPruneError(
            f"{path} has only pickle weights ({', '.join(pickles)}); pickle checkpoints are "
            f"refused for safety (loading one can run arbitrary code). Convert it on a machine "
            f"where you trust the file: `LlavaForConditionalGeneration.from_pretrained(DIR)"
            f".save_pretrained(OUT)` writes model.safetensors (or download the safetensors "
            f"revision of the model), then pass `--model OUT`"
        )
    raise TransPruneError(f"{path} has no weights: no *.safetensors file")


def _check_directory(path: Path) -> dict:
    """Check a checkpoint directory; return its config.json contents."""
    if not path.exists():
        raise TransPruneError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise TransPruneError(f"{path} is a file; --model takes a checkpoint directory")
    config = read_config(path)
    _check_model_type(config, path)
    _check_weights(path)
    return config


def resolve_checkpoint(model: str, *, cache_dir: Path | None = None) -> tuple[Path, ModelPreset]:
    """The checked local directory of ``model`` and the facts about it.

    ``model`` is a preset name, a hub id (``owner/name``, local Hugging Face cache only) or a
    local directory; a preset name wins over a directory of the same name (write ``./tiny``
    for the directory). ``cache_dir`` is where synthetic presets are built (see
    ``transprune.synthetic.ensure_synthetic_checkpoint``).
    """
    model = str(model)
    if model in PRESETS:
        preset = PRESETS[model]
        if preset.synthetic:
            from .synthetic import ensure_synthetic_checkpoint

            return ensure_synthetic_checkpoint(model, cache_dir=cache_dir), preset
        path = _from_hub_cache(preset.hub_id, f"preset {model!r}")
        _check_directory(path)
        return path, preset
    local = Path(model).expanduser()
    if not local.exists() and _HUB_ID.match(model):
        try:
            path = _from_hub_cache(model, model)
        except TransPruneError as exc:
            raise TransPruneError(f"{exc}. (There is no local directory {model!r} either.)") from None
        return path, preset_from_hf_config(_check_directory(path), model)
    if not local.exists():
        raise TransPruneError(
            f"checkpoint directory {local} does not exist; --model takes a preset name "
            f"({', '.join(PRESETS)}), a Hugging Face hub id (owner/name) or a checkpoint directory"
        )
    return local, preset_from_hf_config(_check_directory(local), str(local))


def _torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise TransPruneError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16")
    return getattr(torch, name)


def _bad_safetensors(path: Path) -> list[str]:
    """The safetensors files under ``path`` whose header cannot be read (corrupt or truncated)."""
    from safetensors import SafetensorError, safe_open

    bad = []
    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            bad.append(f"{f} ({exc})")
    return bad


def load_llava(
    model: str,
    *,
    dtype: Any = "fp32",
    attn_implementation: str = "eager",
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Resolve ``model`` (see ``resolve_checkpoint``) and load model and processor from its directory."""
    from safetensors import SafetensorError
    from transformers import AutoProcessor

    from .synthetic import quiet_progress_bars

    path, preset = resolve_checkpoint(model, cache_dir=cache_dir)
    torch_dtype = _torch_dtype(dtype)
    try:
        with quiet_progress_bars():
            llava, info = preset.family.transformers_class("model").from_pretrained(
                path,
                dtype=torch_dtype,
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=False,
                attn_implementation=attn_implementation,
                output_loading_info=True,
            )
    except (SafetensorError, OSError) as exc:
        bad = _bad_safetensors(path)
        where = "; ".join(bad) if bad else f"the weights in {path} ({exc})"
        raise TransPruneError(f"cannot load the weights: corrupt or truncated file {where}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise TransPruneError(
            f"the weights in {path} do not match config.json: {len(missing)} tensors are missing "
            f"({shown}); is it a complete llava-hf checkpoint?"
        )
    try:
        # the PIL image backend: the one LLaVA was trained with and the torch-free runtime reproduces
        # (the torchvision backend, picked by default where torchvision is installed, resizes differently)
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                  backend="pil")
    except (OSError, ValueError) as exc:
        raise TransPruneError(
            f"cannot load the processor (tokenizer and image processor) from {path}: {exc}"
        ) from None
    llava.eval()
    return LoadedModel(model=llava, processor=processor, preset=preset, path=path)
