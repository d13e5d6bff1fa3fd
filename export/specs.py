"""One declarative spec per graph: names, dtypes and named axes of every input and output.

The same specs drive the ONNX export (dynamic shapes), the manifest, validation, TensorRT
profiles and the runtime's feeds, so a tensor's name and axes are written down exactly once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from transprune.schedule import Schedule


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float" (the model dtype), "int64", "float32"
    axes: tuple  # each an int (fixed) or a str (named dynamic axis)


@dataclass(frozen=True)
class GraphSpec:
    name: str  # also the file stem: <name>.onnx
    kind: str  # vision | embed | prefill_inputs | segment | scorer | head
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layers: tuple[int, int] | None = None  # decoder layers (1-based, inclusive) a segment runs
    attrs: dict = field(default_factory=dict)  # kind-specific facts (prune layer, TTV layers, ...)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelFacts:
    """What the specs need to know about the model (from its config)."""

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


def _kv(layer: int, prefix: str, length_axis: str, facts: ModelFacts) -> list[TensorSpec]:
    return [TensorSpec(f"{prefix}_{part}.{layer}", "float", ("batch", facts.num_kv_heads, length_axis, facts.head_dim))
            for part in ("key", "value")]


def _vision(facts: ModelFacts) -> GraphSpec:
    side, d = facts.image_size, facts.hidden_size
    if not facts.anyres:
        return GraphSpec("vision", "vision", (TensorSpec("pixel_values", "float32", ("batch", 3, side, side)),),
                         (TensorSpec("image_features", "float", ("batch", facts.n_image, d)),))
    # every tile of every image of the batch in one stack; pack_index says, per image token, which
    # tile feature row (of the stack's [tiles * tile_tokens] rows) it is, -1 for the image_newline
    return GraphSpec("vision", "vision",
                     (TensorSpec("pixel_values", "float32", ("tiles", 3, side, side)),
                      TensorSpec("pack_index", "int64", ("batch", "image"))),
                     (TensorSpec("image_features", "float", ("batch", "image", d)),),
                     attrs={"anyres": True, "tile_tokens": facts.tile_tokens})


def graph_specs(facts: ModelFacts, schedule: Schedule) -> list[GraphSpec]:
    """Every graph of a build, in the order the chain runs them.

    Anyres (LLaVA-NeXT) builds have a dynamic ``image`` axis instead of a fixed image-token count:
    their scorers record the keep ratio (the chain keeps int(n_image * ratio) of each image) and
    their segments no fixed position shift (the chain derives it per prompt).
    """
    d = facts.hidden_size
    n = "image" if facts.anyres else facts.n_image
    specs = [
        _vision(facts),
        GraphSpec("embed", "embed",
                  (TensorSpec("input_ids", "int64", ("batch", "seq")),),
                  (TensorSpec("embeddings", "float", ("batch", "seq", d)),)),
        GraphSpec("prefill_inputs", "prefill_inputs",
                  (TensorSpec("embeddings", "float", ("batch", "seq", d)),
                   TensorSpec("input_ids", "int64", ("batch", "seq")),
                   TensorSpec("attention_mask", "int64", ("batch", "seq")),
                   TensorSpec("image_features", "float", ("batch", n, d))),
                  (TensorSpec("hidden", "float", ("batch", "seq", d)),
                   TensorSpec("position_ids", "int64", ("batch", "seq")),
                   TensorSpec("image_start", "int64", ("batch",))),
                  attrs={"image_token_id": facts.image_token_id}),
    ]
    segments = schedule.segments(facts.num_layers)
    keep_counts = (None,) * len(schedule.ratios) if facts.anyres else schedule.keep_counts(facts.n_image)
    for index, (first, last) in enumerate(segments):
        ttv_layers = tuple(l for l in schedule.accumulate if first <= l <= last) if schedule.uses_ttv else ()
        inputs = [TensorSpec("hidden", "float", ("batch", "seq", d)),
                  TensorSpec("position_ids", "int64", ("batch", "seq")),
                  TensorSpec("attention_mask", "int64", ("batch", "total"))]
        outputs = [TensorSpec("hidden_out", "float", ("batch", "seq", d))]
        for layer in range(first, last + 1):
            inputs += _kv(layer, "past", "past", facts)
            outputs += _kv(layer, "present", "total", facts)
        if ttv_layers and index < len(segments) - 1:
            outputs.append(TensorSpec("ttv", "float32", ("batch", "seq")))
        kv = [[f"past_{part}.{layer}", f"present_{part}.{layer}"] for layer in range(first, last + 1)
              for part in ("key", "value")]
        # a decoded token's position in this segment: its full position minus the image tokens
        # pruned before the segment (the cached sequence here is that much shorter)
        shift = 0 if index == 0 else None if facts.anyres else facts.n_image - keep_counts[index - 1]
        specs.append(GraphSpec(f"segment_{index}", "segment", tuple(inputs), tuple(outputs), layers=(first, last),
                               attrs={"ttv_layers": list(ttv_layers) if index < len(segments) - 1 else [],
                                      "kv": kv, "position_shift": shift}))
        if index == len(segments) - 1:
            break
        has_ttv_in = bool(ttv_layers)
        inputs = [TensorSpec("hidden", "float", ("batch", "seq", d)),
                  TensorSpec("position_ids", "int64", ("batch", "seq")),
                  TensorSpec("attention_mask", "int64", ("batch", "seq")),
                  TensorSpec("image_start", "int64", ("batch",)),
                  TensorSpec("alive", "int64", ("batch", "alive")),
                  TensorSpec("keep", "int64", ())]
        outputs = [TensorSpec("hidden_out", "float", ("batch", "kept_seq", d)),
                   TensorSpec("position_ids_out", "int64", ("batch", "kept_seq")),
                   TensorSpec("attention_mask_out", "int64", ("batch", "kept_seq")),
                   TensorSpec("kept", "int64", ("batch", "keep")),
                   TensorSpec("score", "float32", ("batch", "alive"))]
        if schedule.uses_ttv:
            inputs += [TensorSpec("ttv_sum", "float32", ("batch", "alive")),
                       TensorSpec("ttv", "float32", ("batch", "seq"))]
            outputs.append(TensorSpec("ttv_sum_out", "float32", ("batch", "keep")))
        # the two normalised parts of the score, for explanations (transprune-explain); with one
        # criterion the score is that part itself (and a second output of the same tensor would
        # come out of the exporter under another name)
        if schedule.uses_ttv and schedule.uses_iga:
            outputs += [TensorSpec("ttv_score", "float32", ("batch", "alive")),
                        TensorSpec("iga_score", "float32", ("batch", "alive"))]
        specs.append(GraphSpec(f"scorer_{index}", "scorer", tuple(inputs), tuple(outputs),
                               attrs={"after_layer": last, "keep": keep_counts[index],
                                      "keep_ratio": schedule.ratios[index],
                                      "uses_ttv": schedule.uses_ttv, "uses_iga": schedule.uses_iga,
                                      "ttv_from_segment": has_ttv_in, "alpha": schedule.alpha}))
    specs.append(GraphSpec("head", "head", (TensorSpec("hidden", "float", ("batch", "seq", d)),),
                           (TensorSpec("logits", "float32", ("batch", facts.vocab_size)),)))
    return specs
