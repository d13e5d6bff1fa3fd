"""Device memory a TensorRT deployment needs: the estimate ``transprune-build`` checks, and the
per-target table ``scripts/trt_memory_table.py`` prints.

The estimate adds the engines' weights at the build precision, the KV caches of every layer at
the largest decode profile (two buffers each, ``profiles.kv_cache_bytes_for``), the builder
workspace (the most any engine may use for activations) and the runtime's overhead, and compares
the sum with the target's budget (``targets``). ``memory_rows`` computes it from a model preset
alone, so it covers models too big to export here. Pure arithmetic: no TensorRT, no onnx.
"""

from __future__ import annotations

from dataclasses import dataclass

from transprune.presets import model_preset
from transprune.schedule import preset as schedule_preset

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

    def to_dict(self) -> dict:
        gib = lambda n: round(n / GIB, 3)  # noqa: E731
        return {"weights_gib": gib(self.weights), "kv_cache_gib": gib(self.kv_cache),
                "activations_gib": gib(self.activations), "overhead_gib": gib(self.overhead),
                "total_gib": gib(self.total), "budget_gib": gib(self.budget), "fits": self.fits}

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


def memory_rows(*, model: str, text_tokens: int, new_tokens: int, batch: int = 1,
                schedules: tuple[str, ...] = ("paper", "none")) -> list[dict]:
    """One row per target and precision it can build: {"target", "memory_gib", "precision", and per
    schedule name the ``MemoryEstimate.to_dict()`` of ``model`` with 16-bit weights}."""
    spec = model_preset(model)
    limits = ShapeLimits(batch, text_tokens, new_tokens)
    weights = preset_parameters(spec) * 2  # fp16 and bf16; fp8 without Q/DQ nodes stays 16-bit
    rows = []
    for target in TARGETS.values():
        for precision in target.precisions:
            if precision == "fp32":  # TensorRT-RTX's fp32 exports: not how a 7B model is deployed
                continue
            row = {"target": target.name, "memory_gib": target.memory_gib, "precision": precision}
            for name in schedules:
                per_layer = schedule_preset(name).tokens_per_layer(num_layers=spec.text.num_layers,
                                                                   n_image=largest_image(spec))
                kv = kv_cache_bytes_for(image_tokens_per_layer=per_layer, kv_heads=spec.text.num_kv_heads,
                                        head_dim=spec.text.head_dim, itemsize=2, limits=limits)
                estimate = estimate_memory(target=target, weights=weights, kv_cache=kv)
                row[name] = estimate.to_dict()
            rows.append(row)
    return rows
