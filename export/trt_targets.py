"""The GPUs transprune builds TensorRT engines for, and what each allows: pure data, no TensorRT.

A target fixes what the engine build may use (precisions the GPU has, the builder's workspace)
and how much memory a deployment may take. Jetson memory is shared between CPU and GPU, so the
budget leaves room for the OS and the Python process; a datacenter budget leaves room for the
CUDA context and fragmentation. ``estimate_memory`` checks a build against that budget before
anything is built, so an 8 GB Orin Nano is refused a 14 GB fp16 7B model on the export machine,
not after an hour of engine building on the device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transprune.errors import TransPruneError

GIB = 1 << 30
MIB = 1 << 20

PRECISIONS = ("fp16", "bf16", "fp8")


@dataclass(frozen=True)
class Target:
    name: str
    gpu: str
    compute_capability: tuple[int, int]  # what the runtime compares an engine against
    memory_gib: float  # device memory (Jetson: shared with the CPU)
    budget_gib: float  # what transprune's weights, KV caches and activations may use
    workspace_mib: int  # TensorRT builder workspace (tactic scratch memory) limit
    precisions: tuple[str, ...]
    tensorrt: str  # the TensorRT the platform ships (engines are built with the one on the device)
    jetson: bool

    def to_dict(self) -> dict:
        return asdict(self)


TARGETS: dict[str, Target] = {
    # JetPack 6.x: TensorRT 10.3, Orin's Ampere GPU is SM 8.7. Orin's TensorRT has no bf16 or fp8
    # kernels worth building for, so fp16 is the only choice there.
    "jetson-orin-nano": Target("jetson-orin-nano", "Jetson Orin Nano 8 GB (Ampere, SM 8.7)", (8, 7), 8, 6.0,
                               1024, ("fp16",), "10.3 (JetPack 6.x)", True),
    "jetson-orin-nx": Target("jetson-orin-nx", "Jetson Orin NX 16 GB (Ampere, SM 8.7)", (8, 7), 16, 13.0,
                             2048, ("fp16",), "10.3 (JetPack 6.x)", True),
    "jetson-agx-orin": Target("jetson-agx-orin", "Jetson AGX Orin 64 GB (Ampere, SM 8.7)", (8, 7), 64, 56.0,
                              4096, ("fp16",), "10.3 (JetPack 6.x)", True),
    # JetPack 7: Thor's Blackwell GPU (SM 11.0 under CUDA 13) has bf16 and fp8 tensor cores.
    "jetson-thor": Target("jetson-thor", "Jetson AGX Thor 128 GB (Blackwell, SM 11.0)", (11, 0), 128, 116.0,
                          8192, ("fp16", "bf16", "fp8"), "10.13 (JetPack 7.x)", True),
    "datacenter-ampere": Target("datacenter-ampere", "A100 80 GB (Ampere, SM 8.0)", (8, 0), 80, 76.0,
                                8192, ("fp16", "bf16"), "10.x (pip or NGC)", False),
    # fp8 tensor cores start with Ada (SM 8.9) and Hopper (SM 9.0).
    "datacenter-hopper": Target("datacenter-hopper", "H100 80 GB (Hopper, SM 9.0)", (9, 0), 80, 76.0,
                                8192, ("fp16", "bf16", "fp8"), "10.x (pip or NGC)", False),
}

# What TensorRT, the CUDA context and the runtime's host-side process take besides the engines'
# weights, caches and workspace (measured figures for a CUDA context on Orin are 0.5-1 GB).
RUNTIME_OVERHEAD_BYTES = 1 * GIB


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise TransPruneError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}") from None


def check_precision(target: Target, precision: str) -> None:
    """Refuses a precision the target's GPU cannot run, naming the ones it can."""
    if precision not in PRECISIONS:
        raise TransPruneError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision not in target.precisions:
        why = {"fp8": "fp8 needs Ada (SM 8.9) or newer", "bf16": "TensorRT on Orin has no bf16 kernels"}
        raise TransPruneError(f"{target.name} ({target.gpu}) cannot build {precision}: {why.get(precision, '')}; "
                              f"use --precision {' or '.join(target.precisions)}")


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
    """Engine weight bytes: TensorRT stores fp32 weights of an fp32 export at the build precision.

    fp8 without Q/DQ nodes in the graph quantizes nothing, so its weights stay 16-bit.
    """
    export_width = {"fp32": 4, "fp16": 2}[export_dtype]
    return export_weight_bytes * 2 // export_width


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
