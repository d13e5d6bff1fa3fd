"""A random-weight fp16 LLaVA checkpoint with a real model's configuration, written streaming
(``scripts/make_synthetic_checkpoint.py`` is its command line).

The result is a llava-hf checkpoint directory like the one
:func:`.synthetic.build_synthetic_checkpoint` writes for ``tiny``: config.json,
generation_config.json, sharded safetensors + model.safetensors.index.json, tokenizer and
processor files. It loads with ``LlavaForConditionalGeneration.from_pretrained`` and with
``transprune.export.weights.CheckpointWeights``.

Why not reuse the synthetic builder: it materialises the whole model in fp32 and saves it with
``save_pretrained`` (28 GB of RAM for 7B). Here nothing bigger than a few chunk buffers is ever
in memory:

- tensor names and shapes come from the model built on the ``meta`` device (no storage), passed
  through the same helpers ``save_pretrained`` uses (tied-weight removal and the reverse weight
  renaming), so the files carry exactly the names ``save_pretrained`` would write;
- the safetensors files are written by hand, each tensor generated chunk by chunk and its bytes
  appended (:mod:`.streamed_safetensors`).

Values: seeded N(0, std) in fp16, with the stds of :mod:`.synthetic` (language model and
projector: ``text_initializer_range(hidden)``; CLIP: what CLIP's own init draws, with
``VISION_INIT_RANGE`` for its embeddings); norm weights 1, biases 0.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import TransPruneError
from .presets import PRESETS, ModelPreset
from .streamed_safetensors import GB, Progress, TensorPlan, write_weights
from .synthetic import (
    VISION_INIT_RANGE,
    _hf_tokenizer,
    _llava_config,
    _processor,
    build_tokenizer,
    text_initializer_range,
)

# Presets with real (downloadable) weights that LlavaForConditionalGeneration loads.
MODELS = sorted(n for n, p in PRESETS.items() if not p.synthetic and p.architecture == "llava")

SPACE_MARGIN = 1.05  # the tokenizer/config files, filesystem overhead


# --------------------------------------------------------------------------------------------
# Planning: config, tensor list


def model_preset_for(name: str, *, layers: int | None = None,
                     hidden_size: int | None = None) -> ModelPreset:
    """The preset ``name``, optionally shrunk by the test hooks: ``layers`` text and vision
    layers; a text width of ``hidden_size`` (head size kept, MLP width scaled alike)."""
    preset = PRESETS[name]
    text, vision = preset.text, preset.vision
    if layers is not None:
        text = dataclasses.replace(text, num_layers=layers)
        vision = dataclasses.replace(vision, num_layers=layers)
    if hidden_size is not None:
        heads = max(1, hidden_size // text.head_dim)
        text = dataclasses.replace(
            text, hidden_size=heads * text.head_dim, num_heads=heads,
            num_kv_heads=max(1, heads * text.num_kv_heads // text.num_heads),
            intermediate_size=8 * round(text.intermediate_size * heads / text.num_heads / 8),
        )
    return dataclasses.replace(preset, text=text, vision=vision)


def llava_config(preset: ModelPreset):
    """The LlavaConfig of ``preset``, as the synthetic builder makes it, marked fp16."""
    config = _llava_config(
        preset, text_init=text_initializer_range(preset.text.hidden_size),
        vision_init=VISION_INIT_RANGE,
    )
    # save_pretrained would record these from the model object; we never build a real one.
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = "float16"
    return config


def saved_tensors(config) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor ``save_pretrained`` would write for ``config``, in its order.

    The model is built on the meta device (shapes only, no memory). ``save_pretrained`` then
    drops keys the model asks to ignore, drops tied duplicates (for llava-1.5
    ``tie_word_embeddings`` is False, so lm_head stays), and reverts transformers 5's weight
    renaming (``model.language_model.*`` is saved as ``language_model.model.*``); we call the
    same helpers so the names cannot drift from what it writes.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    try:
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError as exc:  # private helpers of save_pretrained (transformers 5.x)
        import transformers

        raise RuntimeError(
            f"transformers {transformers.__version__} lacks the save_pretrained helpers this "
            f"script uses ({exc}); it was written against transformers 5.x"
        ) from None

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    state = model.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    state = remove_tied_weights_from_state_dict(state, model)
    state = revert_weight_conversion(model, state)
    return [(name, tuple(t.shape)) for name, t in state.items()]


_NORM_WEIGHT = re.compile(r"(norm|layrnorm|layer_norm\d*)\.weight$")  # RMSNorm and LayerNorm
_VISION = "vision_tower."


def init_for(name: str, preset: ModelPreset) -> tuple[str, float]:
    """How ``name`` is initialised: ("normal", std), ("ones", 0) or ("zeros", 0).

    Mirrors what the synthetic builder gets from transformers' init: the language model and the
    projector draw from text_initializer_range (LlavaConfig passes the text initializer_range
    to the projector); CLIP scales its Linear layers by width and depth (CLIPPreTrainedModel's
    init, initializer_factor 1) and draws its patch and position embeddings from
    VISION_INIT_RANGE.
    """
    if name.endswith(".bias"):
        return "zeros", 0.0
    if _NORM_WEIGHT.search(name):
        return "ones", 0.0
    if not name.startswith(_VISION):
        return "normal", text_initializer_range(preset.text.hidden_size)
    d, depth = preset.vision.hidden_size, preset.vision.num_layers
    in_proj = d**-0.5 * (2 * depth) ** -0.5
    for pattern, std in (
        ("class_embedding", d**-0.5),
        ("patch_embedding.", VISION_INIT_RANGE),
        ("position_embedding.", VISION_INIT_RANGE),
        ("self_attn.out_proj.", d**-0.5),
        ("self_attn.", in_proj),  # q/k/v
        ("mlp.fc1.", (2 * d) ** -0.5),
        ("mlp.fc2.", in_proj),
    ):
        if pattern in name:
            return "normal", std
    return "normal", VISION_INIT_RANGE  # a vision tensor this table does not know


def plan_tensors(preset: ModelPreset, config) -> list[TensorPlan]:
    plans = []
    for index, (name, shape) in enumerate(saved_tensors(config)):
        init, std = init_for(name, preset)
        plans.append(TensorPlan(name, shape, init, std, index))
    return plans


# --------------------------------------------------------------------------------------------
# The whole checkpoint


def write_side_files(out: Path, preset: ModelPreset, config, *, seed: int) -> None:
    """config.json, generation_config.json, tokenizer and processor files, as the synthetic
    builder writes them (its tokenizer: trained here in well under a second)."""
    from transformers import GenerationConfig

    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    tok = build_tokenizer(preset.text.vocab_size, seed=seed)
    if tok.get_vocab_size() > preset.text.vocab_size:
        raise AssertionError("tokenizer vocabulary larger than the model's")
    _processor(_hf_tokenizer(tok, preset), preset).save_pretrained(out)


class OutputRefused(TransPruneError):
    """The output directory exists and may not be replaced: no ``force``, or not a checkpoint."""


@dataclasses.dataclass(frozen=True)
class CheckpointPlan:
    """What :func:`write_checkpoint` writes, and where (:func:`prepare_checkpoint` makes it)."""

    out: Path  # absolute
    preset: ModelPreset
    config: object  # the LlavaConfig
    tensors: list[TensorPlan]
    label: str  # the model's name, with the test hooks' shrinking when there is any

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def prepare_checkpoint(*, out: Path, model: str, force: bool = False, layers: int | None = None,
                       hidden_size: int | None = None) -> CheckpointPlan:
    """Everything before the slow work: ``out`` refused when it cannot be written, the tensors of
    ``model`` planned (shrunk by the test hooks ``layers`` and ``hidden_size``, see
    :func:`model_preset_for`), the free disk space checked, and the checkpoint ``force`` replaces
    removed.

    Raises :class:`OutputRefused` when ``out`` exists without ``force``, or exists and is not a
    checkpoint directory (``force`` only ever deletes what looks like this module's output), and
    :class:`TransPruneError` on a big-endian host or when the disk is too full.
    """
    if sys.byteorder != "little":  # buffers are written as they lie in memory; F16 is LE
        raise TransPruneError("big-endian hosts are not supported")
    out = Path(out).expanduser().absolute()

    # Refuse before any slow work. --force only ever deletes what looks like our output.
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputRefused(f"{out} already exists; pass --force to replace it")
        if not out.is_dir() or out.is_symlink() or not (
            (out / "config.json").is_file() or not any(out.iterdir())
        ):
            raise OutputRefused(f"{out} exists and is not a checkpoint directory (no config.json); "
                                f"refusing to delete it even with --force")

    preset = model_preset_for(model, layers=layers, hidden_size=hidden_size)
    config = llava_config(preset)
    tensors = plan_tensors(preset, config)
    total = sum(t.nbytes for t in tensors)

    out.parent.mkdir(parents=True, exist_ok=True)
    need = int(total * SPACE_MARGIN)
    free = shutil.disk_usage(out.parent).free
    if out.exists() and out.stat().st_dev == out.parent.stat().st_dev:
        free += _dir_bytes(out)  # --force frees it before writing
    if free < need:
        raise TransPruneError(f"not enough free disk space under {out.parent}: need {need / GB:.2f} GB "
                              f"({total / GB:.2f} GB of weights + 5%), {free / GB:.2f} GB free")
    if out.exists():
        print(f"removing existing {out} (--force)", file=sys.stderr)
        shutil.rmtree(out)

    shrunk = []
    if layers is not None:
        shrunk.append(f"{layers} layers")
    if hidden_size is not None:
        shrunk.append(f"text width {preset.text.hidden_size}")
    label = f"{model} ({', '.join(shrunk)})" if shrunk else model
    return CheckpointPlan(out, preset, config, tensors, label)


def write_checkpoint(*, plan: CheckpointPlan, seed: int, shard_bytes: int) -> None:
    """The checkpoint of ``plan``, its weights and tokenizer seeded by ``seed``, in safetensors shards
    of at most ``shard_bytes`` (a larger tensor gets a shard of its own).

    Everything is written into a temporary sibling of ``plan.out``, renamed into place only when
    complete; on any failure (KeyboardInterrupt included) the temporary directory is removed and
    the exception re-raised, so nothing is left behind.
    """
    out = plan.out
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        write_side_files(tmp, plan.preset, plan.config, seed=seed)
        write_weights(tmp, plan.tensors, seed=seed, shard_bytes=shard_bytes,
                      progress=Progress(len(plan.tensors), plan.total_bytes))
        # Ordinary permissions (mkdtemp makes 0700), as the synthetic builder leaves them.
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.rename(tmp, out)  # atomic; fails if something appeared at out meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
