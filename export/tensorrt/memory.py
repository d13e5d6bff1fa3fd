"""Device memory a TensorRT deployment needs: the estimate ``transprune-build`` checks, and the
per-target table ``scripts/trt_memory_table.py`` prints.

The estimate adds the engines' weights at the build precision, the KV caches of every layer at
the largest decode profile (one buffer each, ``profiles.kv_cache_bytes_for``), the builder
workspace (the most any engine may use for activations) and the runtime's overhead, and compares
the sum with the target's budget (``targets``). ``memory_rows`` computes it from a model preset
alone, so it covers models too big to export here. Pure arithmetic: no TensorRT, no onnx.

Weights: ``transprune-build`` starts from the graph files' bytes (the manifest's ``bytes``). A
float build's weights take the build precision's width (``weight_bytes_at``). An int4 build
(``--weights int4``) is built strongly typed (``targets.resolve_precision``), so its engines keep
the files' own types: TensorRT keeps weight-only INT4 weights packed, two values a byte, beside
their scales and the unquantized weights in the export's dtype, which is what the files hold
(``engine_weight_bytes``). From a preset, ``int4_weight_bytes`` counts the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from transprune.errors import TransPruneError
from transprune.presets import model_preset
from transprune.schedule import preset as schedule_preset

from ..int4 import DEFAULT_BLOCK_SIZE, DEFAULT_PARTS
from .profiles import ShapeLimits, kv_cache_bytes_for
from .targets import TARGETS, Target

GIB = 1 << 30
MIB = 1 << 20

# What TensorRT, the CUDA context and the runtime's host-side process take besides the engines'
# weights, caches and workspace (measured figures for a CUDA context on Orin are 0.5-1 GB).
RUNTIME_OVERHEAD_BYTES = 1 * GIB


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    activations: int  # the builder workspace: the most any engine may use for activations
    overhead: int
    budget: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    @property
    def headroom(self) -> int:
        """What the budget leaves after the estimate (negative: by how much it is exceeded)."""
        return self.budget - self.total

    def to_dict(self) -> dict:
        gib = lambda n: round(n / GIB, 3)  # noqa: E731
        return {"weights_gib": gib(self.weights), "kv_cache_gib": gib(self.kv_cache),
                "activations_gib": gib(self.activations), "overhead_gib": gib(self.overhead),
                "total_gib": gib(self.total), "budget_gib": gib(self.budget), "headroom_gib": gib(self.headroom),
                "fits": self.fits}

    def describe(self) -> str:
        d = self.to_dict()
        return (f"{d['total_gib']:.2f} GiB (weights {d['weights_gib']:.2f}, KV cache {d['kv_cache_gib']:.2f}, "
                f"activations {d['activations_gib']:.2f}, runtime {d['overhead_gib']:.2f}) of a "
                f"{d['budget_gib']:.2f} GiB budget")


def weight_bytes_at(export_weight_bytes: int, export_dtype: str, precision: str) -> int:
    """Engine weight bytes: TensorRT stores fp32 weights of an fp32 export at the build precision
    (TensorRT-RTX's fp32 "precision" keeps them at 4 bytes).

    fp8 without Q/DQ nodes in the graph quantizes nothing, so its weights stay 16-bit.
    """
    export_width = {"fp32": 4, "fp16": 2}[export_dtype]
    engine_width = 4 if precision == "fp32" else 2
    return export_weight_bytes * engine_width // export_width


def engine_weight_bytes(export_weight_bytes: int, *, export_dtype: str, precision: str, weights_format: str) -> int:
    """Engine weight bytes of a build whose graph files hold ``export_weight_bytes``.

    Float weights take the build precision's width (``weight_bytes_at``). An int4 build is strongly
    typed (its precision is the export's dtype), and TensorRT keeps weight-only INT4 weights packed
    (0.5 byte a value) with their scales and the unquantized weights in that dtype: the engines hold
    what the files hold. Converting an int4 build to another width would scale the packed values
    too, so that is refused rather than estimated.
    """
    if weights_format == "int4":
        if precision != export_dtype:
            raise TransPruneError(f"an int4 build is strongly typed: its precision is the export's {export_dtype}, "
                             f"not {precision}")
        return export_weight_bytes
    return weight_bytes_at(export_weight_bytes, export_dtype, precision)


def estimate_memory(*, target: Target, weights: int, kv_cache: int) -> MemoryEstimate:
    return MemoryEstimate(weights=weights, kv_cache=kv_cache, activations=target.workspace_mib * MIB,
                          overhead=RUNTIME_OVERHEAD_BYTES, budget=int(target.budget_gib * GIB))


def preset_parameters(preset) -> int:
    """Parameters of a model preset (decoder, embeddings, lm_head, CLIP tower, projector), for
    memory estimates before anything is exported."""
    text, vision = preset.text, preset.vision
    d, kv_width = text.hidden_size, text.num_kv_heads * text.head_dim
    layer = d * d * 2 + d * kv_width * 2 + 3 * d * text.intermediate_size + 2 * d
    decoder = text.num_layers * layer + d + 2 * text.vocab_size * d
    v = vision.hidden_size
    vision_layer = 4 * v * v + 4 * v + 2 * v * vision.intermediate_size + vision.intermediate_size + v + 4 * v
    tower = (vision.num_layers * vision_layer + 3 * vision.patch_size ** 2 * v + (vision.n_patches + 1) * v + 5 * v)
    projector = v * d + d + d * d + d
    return decoder + tower + projector


def quantizable_parameters(preset) -> dict[str, int]:
    """Parameters of each part ``export/int4.py`` can quantize (its ``PARTS``): the Linear weights
    only (biases and norms stay in the float dtype), as ``preset_parameters`` counts them."""
    text, vision = preset.text, preset.vision
    d, kv_width, v = text.hidden_size, text.num_kv_heads * text.head_dim, vision.hidden_size
    return {
        "decoder": text.num_layers * (2 * d * d + 2 * d * kv_width + 3 * d * text.intermediate_size),
        "lm_head": text.vocab_size * d,
        "vision": vision.num_layers * (4 * v * v + 2 * v * vision.intermediate_size),
        "projector": v * d + d * d,
    }


def int4_weight_bytes(preset, *, block_size: int = DEFAULT_BLOCK_SIZE, parts: tuple[str, ...] = DEFAULT_PARTS,
                      float_bytes: int = 2) -> int:
    """Weight bytes of a model preset exported with ``--weights int4`` (``parts`` quantized in
    blocks of ``block_size`` input channels) and ``float_bytes`` floats (2: fp16): each quantized
    value half a byte plus one scale per block, every other parameter a float. As TensorRT keeps
    them (packed) and as the graph files hold them."""
    quantized = sum(quantizable_parameters(preset)[part] for part in parts)
    values = quantized // 2 + quantized % 2
    scales = quantized // block_size * float_bytes
    return (preset_parameters(preset) - quantized) * float_bytes + values + scales


def kv_bytes_per_token(preset, itemsize: int = 2) -> int:
    """Bytes one token adds to every layer's keys and values."""
    return 2 * preset.text.num_layers * preset.text.num_kv_heads * preset.text.head_dim * itemsize


def largest_image(spec) -> int:
    """The image tokens the engines' caches are sized for: LLaVA-1.5's fixed count; for LLaVA-NeXT
    the largest image (a grid pinpoint filled edge to edge: 2928 for the 7B), as transprune-build
    sizes them, not the paper's nominal 2880."""
    if spec.architecture != "llava-next":
        return spec.n_image_tokens
    from transprune.presets import NEXT_GRID_PINPOINTS
    from transprune.runtime.anyres import AnyresPreprocess, image_feature_count

    tile = spec.vision.image_size
    geometry = AnyresPreprocess(grid_pinpoints=[list(p) for p in NEXT_GRID_PINPOINTS], tile_size=tile,
                                base_image="resize_to_tile", resample=3, rescale_factor=None, mean=None, std=None,
                                pad_colour=[0, 0, 0])  # only the pinpoints and tile size count tokens
    side = tile // spec.vision.patch_size
    return max(image_feature_count(tuple(p), geometry, patches_per_side=side) for p in NEXT_GRID_PINPOINTS)


INT4_PRECISION = "fp16"  # an int4 build is strongly typed: its engines compute in the export's fp16


def memory_rows(*, model: str, text_tokens: int, new_tokens: int, batch: int = 1,
                schedules: tuple[str, ...] = ("paper", "none"), block_size: int = DEFAULT_BLOCK_SIZE) -> list[dict]:
    """Per target, one row per precision it can build with 16-bit weights, then one with int4
    weights (an fp16 export with ``--weights int4``: the default parts, blocks of
    ``block_size``): {"target", "memory_gib", "weights" ("16-bit" or "int4"), "precision", and per
    schedule name the ``MemoryEstimate.to_dict()`` of ``model``}."""
    spec = model_preset(model)
    limits = ShapeLimits(batch, text_tokens, new_tokens)
    sixteen_bit = preset_parameters(spec) * 2  # fp16 and bf16; fp8 without Q/DQ nodes stays 16-bit
    int4 = int4_weight_bytes(spec, block_size=block_size)
    kv = {}
    for name in schedules:
        per_layer = schedule_preset(name).tokens_per_layer(num_layers=spec.text.num_layers,
                                                           n_image=largest_image(spec))
        kv[name] = kv_cache_bytes_for(image_tokens_per_layer=per_layer, kv_heads=spec.text.num_kv_heads,
                                      head_dim=spec.text.head_dim, itemsize=2, limits=limits)
    rows = []
    for target in TARGETS.values():
        for weights, weight_bytes in (("16-bit", sixteen_bit), ("int4", int4)):
            # TensorRT-RTX's fp32 exports: not how a 7B model is deployed; int4 builds are fp16 exports
            precisions = [p for p in target.precisions if p != "fp32"] if weights == "16-bit" else [INT4_PRECISION]
            for precision in precisions:
                row = {"target": target.name, "memory_gib": target.memory_gib, "weights": weights,
                       "precision": precision}
                for name in schedules:
                    row[name] = estimate_memory(target=target, weights=weight_bytes, kv_cache=kv[name]).to_dict()
                rows.append(row)
    return rows
