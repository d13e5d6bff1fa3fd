"""Which model family a checkpoint is, decided once, and the facts the graphs need from its config.

A family is what differs between LLaVA-1.5 and LLaVA-NeXT for this toolkit: the transformers
classes that load it and whether images are tiled (anyres: a base tile plus a grid of tiles, so
the image-token count depends on each image's size). Everything else reads the family (or the
``anyres`` fact derived from it) instead of testing ``model_type`` again; a new family is one
entry in ``FAMILIES`` (docs/DESIGN.md §4 says where the family is used).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TransPruneError


@dataclass(frozen=True)
class ModelFamily:
    name: str  # the presets' ``architecture``: "llava", "llava-next"
    model_type: str  # transformers' config.model_type
    anyres: bool  # images tiled (LLaVA-NeXT): image-token count per image, pack index into the vision graph
    config_class: str  # transformers class names, imported by the code that loads
    model_class: str
    label: str  # for people: "LLaVA-1.5"

    def transformers_class(self, role: str) -> type:
        """transformers' ``config`` or ``model`` class of this family (imports transformers)."""
        import transformers

        return getattr(transformers, {"config": self.config_class, "model": self.model_class}[role])


LLAVA = ModelFamily("llava", "llava", anyres=False, config_class="LlavaConfig",
                    model_class="LlavaForConditionalGeneration", label="LLaVA-1.5")
LLAVA_NEXT = ModelFamily("llava-next", "llava_next", anyres=True, config_class="LlavaNextConfig",
                         model_class="LlavaNextForConditionalGeneration", label="LLaVA-NeXT")
FAMILIES: tuple[ModelFamily, ...] = (LLAVA, LLAVA_NEXT)


def family_named(name: str) -> ModelFamily:
    """The family a preset names (``ModelPreset.architecture``)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise TransPruneError(f"unknown model family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def family_of_model_type(model_type, *, where: str = "the checkpoint") -> ModelFamily:
    """The family of a config's ``model_type`` (config.json), or a clear refusal."""
    for family in FAMILIES:
        if family.model_type == model_type:
            return family
    classes = " or ".join(f.model_class for f in FAMILIES)
    types = " or ".join(repr(f.model_type) for f in FAMILIES)
    raise TransPruneError(f"{where} holds a {model_type!r} model (config.json model_type); transprune needs a "
                          f"{classes} checkpoint (model_type {types}, llava-hf format)")


def family_of(config) -> ModelFamily:
    """The family of a transformers config object."""
    return family_of_model_type(getattr(config, "model_type", None))


# The language models the segment, scorer and head graphs implement (and the runtime's KV cache
# assumes): LLaMA's decoder layer, as in LLaVA-1.5 and LLaVA-NeXT-Vicuna. Another text model in a
# LLaVA config (Mistral's sliding window, GPT-2's layout) would export wrong graphs or fail deep in
# the exporter, so it is refused up front.
TEXT_MODEL_TYPES = ("llama",)


def check_text_model(model_type, *, where: str = "the checkpoint") -> None:
    """Refuses a LLaVA config whose language model (``text_config.model_type``) is not one the
    graphs implement. None (no model_type) is transformers' default for LLaVA: LLaMA."""
    if model_type is None or model_type in TEXT_MODEL_TYPES:
        return
    supported = " or ".join(repr(t) for t in TEXT_MODEL_TYPES)
    raise TransPruneError(f"{where}: the language model is {model_type!r} (config.json text_config.model_type), but "
                          f"transprune supports only LLaVA checkpoints with a LLaMA language model (model_type "
                          f"{supported}: LLaVA-1.5, LLaVA-NeXT Vicuna)")


@dataclass(frozen=True)
class ModelFacts:
    """What the graph specs, the manifest and the runtime need to know about the model."""

    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    image_size: int
    n_image: int | None  # image tokens per image; None for anyres models (it varies per image)
    image_token_id: int
    eos_token_id: int | None = None  # recorded for hosts; the graphs do not use them
    pad_token_id: int | None = None
    # LLaVA-NeXT: each image is a base tile plus a grid of tiles (anyres); its tiles' features are
    # unpadded and packed with newline tokens, so the image-token count depends on the image size
    anyres: bool = False
    tile_tokens: int | None = None  # anyres: vision features per tile (576 = 24 x 24)


def text_config_dict(config) -> dict:
    """transformers' text config as a plain dict with the few fields the graphs read, normalised."""
    text = config.text_config.to_dict()
    rope = text.get("rope_parameters") or {}
    if text.get("rope_theta") is None:
        text["rope_theta"] = rope.get("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        raise TransPruneError(f"RoPE scaling {rope.get('rope_type')!r} is not supported by the exporter yet")
    text["head_dim"] = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    text["num_key_value_heads"] = text.get("num_key_value_heads") or text["num_attention_heads"]
    return text


def model_facts(config) -> ModelFacts:
    """The facts of a transformers LLaVA config (its family decides whether images are tiled)."""
    anyres = family_of(config).anyres
    check_text_model(getattr(config.text_config, "model_type", None))
    text = text_config_dict(config)
    vision = config.vision_config
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise TransPruneError(f"vision_feature_select_strategy {strategy!r} is not supported by the exporter yet; "
                              f"LLaVA-1.5 and LLaVA-NeXT use 'default' (the CLS token dropped)")
    tile_tokens = (vision.image_size // vision.patch_size) ** 2
    return ModelFacts(
        hidden_size=text["hidden_size"], num_layers=text["num_hidden_layers"],
        num_kv_heads=text["num_key_value_heads"], head_dim=text["head_dim"], vocab_size=text["vocab_size"],
        image_size=vision.image_size, n_image=None if anyres else tile_tokens,
        image_token_id=config.image_token_id,
        eos_token_id=_first_id(text.get("eos_token_id")), pad_token_id=_first_id(text.get("pad_token_id")),
        anyres=anyres, tile_tokens=tile_tokens if anyres else None,
    )


def _first_id(value):
    """Token ids in configs are an int, a list of ints (several EOS ids) or None."""
    return value[0] if isinstance(value, list) and value else value
