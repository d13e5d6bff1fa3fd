"""Model presets by name: the facts transprune needs about each supported LLaVA model.

Pure data, no torch. Hub ids are for users who download weights themselves; tests never do.
``tiny``, ``tiny-next``, ``bench`` and ``bench-next`` are synthetic: seeded random weights built
offline by ``transprune.synthetic`` (the tiny ones for tests, the bench ones for CPU benchmarks
only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import TransPruneError
from .family import ModelFamily, family_named, family_of_model_type


@dataclass(frozen=True)
class TextSpec:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class VisionSpec:
    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    feature_layer: int = -2

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class ModelPreset:
    name: str
    architecture: str  # "llava" (LlavaForConditionalGeneration) or "llava-next"
    text: TextSpec
    vision: VisionSpec
    n_image_tokens: int  # image tokens per image the paper counts (NeXT: 5 tiles x 576)
    hub_id: str | None = None
    synthetic: bool = False
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def family(self) -> ModelFamily:
        return family_named(self.architecture)


_VICUNA_7B = TextSpec(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                      intermediate_size=11008, vocab_size=32064)
_CLIP_L_336 = VisionSpec(image_size=336, patch_size=14, hidden_size=1024, num_layers=24,
                         num_heads=16, intermediate_size=4096)

PRESETS: dict[str, ModelPreset] = {
    "llava-1.5-7b": ModelPreset(
        name="llava-1.5-7b", architecture="llava", hub_id="llava-hf/llava-1.5-7b-hf",
        text=_VICUNA_7B, vision=_CLIP_L_336, n_image_tokens=576,
    ),
    "llava-1.5-13b": ModelPreset(
        name="llava-1.5-13b", architecture="llava", hub_id="llava-hf/llava-1.5-13b-hf",
        text=TextSpec(hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40,
                      intermediate_size=13824, vocab_size=32064),
        vision=_CLIP_L_336, n_image_tokens=576,
    ),
    "llava-next-7b": ModelPreset(
        name="llava-next-7b", architecture="llava-next", hub_id="llava-hf/llava-v1.6-vicuna-7b-hf",
        text=_VICUNA_7B, vision=_CLIP_L_336, n_image_tokens=2880,
    ),
    # Tests: >= 14 decoder layers so the paper schedule (prune after 7, 9, 12) applies unchanged,
    # and the real 576-token image geometry (336 px, patch 14); everything else is tiny. Grouped
    # query attention (4 heads, 2 KV heads) so every code path handles it.
    "tiny": ModelPreset(
        name="tiny", architecture="llava", synthetic=True, seed=1234,
        text=TextSpec(hidden_size=64, num_layers=14, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, vocab_size=1024, max_position_embeddings=2048),
        vision=VisionSpec(image_size=336, patch_size=14, hidden_size=32, num_layers=2,
                          num_heads=2, intermediate_size=64),
        n_image_tokens=576,
    ),
    # LLaVA-NeXT tests: tiny's widths with NeXT's anyres geometry (336 px tiles on LLaVA-NeXT-7B's
    # grid pinpoints, so 1..5 tiles and up to 2928 image tokens per image) and room for them.
    "tiny-next": ModelPreset(
        name="tiny-next", architecture="llava-next", synthetic=True, seed=2468,
        text=TextSpec(hidden_size=64, num_layers=14, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, vocab_size=1024, max_position_embeddings=4096),
        vision=VisionSpec(image_size=336, patch_size=14, hidden_size=32, num_layers=2,
                          num_heads=2, intermediate_size=64),
        n_image_tokens=2880,
    ),
    # CPU benchmarks only (never CI): LLaVA-1.5 geometry, 32 layers, scaled-down widths.
    "bench": ModelPreset(
        name="bench", architecture="llava", synthetic=True, seed=4321,
        text=TextSpec(hidden_size=1024, num_layers=32, num_heads=16, num_kv_heads=16,
                      intermediate_size=2752, vocab_size=32064),
        vision=VisionSpec(image_size=336, patch_size=14, hidden_size=256, num_layers=4,
                          num_heads=4, intermediate_size=1024),
        n_image_tokens=576,
    ),
    # CPU benchmarks of LLaVA-NeXT only (never CI): NeXT's anyres geometry (up to 2928 image tokens
    # per image), 32 layers, and text widths small enough that a ~3000-token prefill takes seconds
    # on 2 cores; vision as bench.
    "bench-next": ModelPreset(
        name="bench-next", architecture="llava-next", synthetic=True, seed=8642,
        text=TextSpec(hidden_size=512, num_layers=32, num_heads=8, num_kv_heads=8,
                      intermediate_size=1376, vocab_size=32064, max_position_embeddings=4096),
        vision=VisionSpec(image_size=336, patch_size=14, hidden_size=256, num_layers=4,
                          num_heads=4, intermediate_size=1024),
        n_image_tokens=2880,
    ),
}


# LLaVA-NeXT's anyres resolutions (height, width) for 336 px tiles: llava-v1.6-vicuna-7b's
# image_grid_pinpoints. An image is resized onto the best fitting one and cut into tiles.
NEXT_GRID_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def model_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise TransPruneError(
            f"unknown model preset {name!r}; use one of {', '.join(PRESETS)}"
        ) from None


# transformers writes only the fields that differ from the config class defaults, so llava-hf's
# own config.json omits e.g. the text hidden size (LlamaConfig's default 4096). These are those
# defaults (LlamaConfig / CLIPVisionConfig), so a config can be read without importing them.
_TEXT_DEFAULTS = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      intermediate_size=11008, vocab_size=32000, rms_norm_eps=1e-6,
                      rope_theta=10000.0, max_position_embeddings=2048)
_VISION_DEFAULTS = dict(image_size=224, patch_size=32, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072)


def preset_from_hf_config(config: dict, name: str) -> ModelPreset:
    """The same facts read from a checkpoint's config.json (a local directory)."""
    if not isinstance(config.get("text_config"), dict) or not isinstance(config.get("vision_config"), dict):
        raise TransPruneError(
            f"{name}: config.json has no text_config/vision_config, so it is not a LLaVA config; "
            f"transprune supports LlavaForConditionalGeneration checkpoints in the llava-hf format"
        )
    text = {**_TEXT_DEFAULTS, **config["text_config"]}
    vision = {**_VISION_DEFAULTS, **config["vision_config"]}
    rope = text.get("rope_parameters") or {}
    if isinstance(rope, dict) and "rope_theta" in rope:
        text["rope_theta"] = rope["rope_theta"]
    feature_layer = config.get("vision_feature_layer", -2)
    if not isinstance(feature_layer, int):
        raise TransPruneError(
            f"{name}: vision_feature_layer {feature_layer!r} selects several layers; transprune "
            f"supports a single feature layer (LLaVA-1.5 uses -2)"
        )
    try:
        family = family_of_model_type(config.get("model_type"), where=name)
        vspec = VisionSpec(
            image_size=vision["image_size"], patch_size=vision["patch_size"],
            hidden_size=vision["hidden_size"], num_layers=vision["num_hidden_layers"],
            num_heads=vision["num_attention_heads"], intermediate_size=vision["intermediate_size"],
            feature_layer=feature_layer,
        )
        heads = text["num_attention_heads"]
        tspec = TextSpec(
            hidden_size=text["hidden_size"], num_layers=text["num_hidden_layers"], num_heads=heads,
            num_kv_heads=text.get("num_key_value_heads") or heads,
            intermediate_size=text["intermediate_size"], vocab_size=text["vocab_size"],
            rms_norm_eps=text["rms_norm_eps"], rope_theta=float(text["rope_theta"]),
            max_position_embeddings=text["max_position_embeddings"],
        )
    except (KeyError, TypeError) as exc:
        raise TransPruneError(
            f"{name}: config.json is not a LLaVA config (missing {exc}); transprune supports "
            f"LlavaForConditionalGeneration checkpoints in the llava-hf format"
        ) from None
    n_image = vspec.n_patches * (5 if family.anyres else 1)
    return ModelPreset(name=name, architecture=family.name, text=tspec, vision=vspec, n_image_tokens=n_image)
