"""The GPUs transprune builds TensorRT engines for, and what each allows: pure data, no TensorRT.

A target fixes what the engine build may use (precisions the GPU has, the builder's workspace)
and how much memory a deployment may take. Jetson memory is shared between CPU and GPU, so the
budget leaves room for the OS and the Python process; a datacenter budget leaves room for the
CUDA context and fragmentation. ``memory.estimate_memory`` checks a build against that budget
before anything is built, so an 8 GB Orin Nano is refused a 14 GB fp16 7B model on the export
machine, not after an hour of engine building on the device.

Two builders: ``tensorrt`` (TensorRT 10: Jetson and datacenter GPUs; engines are built on the
target, for its one GPU architecture) and ``tensorrt_rtx`` (TensorRT-RTX: desktop and
workstation RTX GPUs; engines are built ahead of time on any machine, no GPU needed, for a list
of compute capabilities, and specialised on the device by a JIT step). TensorRT-RTX networks are
strongly typed: an engine computes in the ONNX graph's own types, so its "precision" is the
export's dtype and nothing else (``resolve_precision``). A build with int4 weights
(``--weights int4``) is built strongly typed on TensorRT too (``trtexec --stronglyTyped``, the
form NVIDIA's tools build weight-only INT4 Q/DQ graphs in; ``plan.trtexec_command``), so its
precision is likewise the export's dtype, which the target must be able to run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transprune.errors import TransPruneError

PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
MODULES = ("tensorrt", "tensorrt_rtx")
# The builder's optimisation level (IBuilderConfig.builder_optimization_level, trtexec
# --builderOptimizationLevel), the same scale in TensorRT 10 and TensorRT-RTX 1.7: 0 builds fastest
# (no dynamic kernel generation, the first tactic that works, no timing cache), 3 is both builders'
# default, 4 and 5 always compile kernels. ``None``: the builder's own default, set nowhere.
OPTIMIZATION_LEVELS = range(6)


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
    module: str = "tensorrt"  # the Python module that builds and runs its engines (MODULES)
    # TensorRT-RTX only: the GPU generations one engine runs on (ahead-of-time, portable)
    portable_to: tuple[tuple[int, int], ...] = ()

    @property
    def compute_capabilities(self) -> tuple[tuple[int, int], ...]:
        """Every compute capability an engine built for this target runs on."""
        return self.portable_to or (self.compute_capability,)

    @property
    def builds_ahead_of_time(self) -> bool:
        """True where engines are built on any machine (TensorRT-RTX), not on the target itself."""
        return self.module == "tensorrt_rtx"

    def to_dict(self) -> dict:
        return {**asdict(self), "compute_capabilities": [list(cc) for cc in self.compute_capabilities]}


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
    # TensorRT-RTX 1.7: one engine for GeForce RTX 30 (Ampere, SM 8.6), 40 (Ada, SM 8.9), 50 (Blackwell,
    # SM 12.0) and the A-series/RTX PRO cards of those generations (SM 8.0 included: the builder's
    # default list). Turing (SM 7.5) needs an explicit request and is left out. Memory: a 24 GB card
    # (RTX 3090/4090) that also drives a display; --memory-gib moves the budget to another card.
    "rtx": Target("rtx", "GeForce RTX 30/40/50, RTX PRO (SM 8.0, 8.6, 8.9, 12.0)", (8, 6), 24, 21.0,
                  4096, ("fp32", "fp16"), "TensorRT-RTX 1.7 (pip tensorrt-rtx-cu12)", False,
                  module="tensorrt_rtx", portable_to=((8, 0), (8, 6), (8, 9), (12, 0))),
}

def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise TransPruneError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}") from None


def resolve_precision(target: Target, precision: str | None, *, export_dtype: str, int4: bool = False) -> str:
    """The engines' precision: ``precision`` checked against the target, or its default (fp16 for
    TensorRT; the export's dtype for TensorRT-RTX, whose strongly typed networks compute in the
    graph's own types, so any other request is refused with the re-export that gives it). A build
    with ``int4`` weights is built strongly typed on TensorRT as well: its precision is the export's
    dtype, refused (with the re-export that works) where the target cannot run it."""
    if int4 and target.module == "tensorrt":
        why = (f"this build has int4 weights, which TensorRT takes only in a strongly typed network: engines "
               f"compute in the export's own types ({export_dtype} here)")
        if export_dtype not in target.precisions:
            raise TransPruneError(f"{why}, and {target.name} builds {' or '.join(target.precisions)} engines; "
                                  f"re-export with --dtype fp16 --weights int4")
        if precision not in (None, export_dtype):
            raise TransPruneError(f"{why}, so --precision {precision} cannot apply; drop --precision")
        return export_dtype
    if target.module == "tensorrt_rtx":
        if precision not in (None, export_dtype):
            raise TransPruneError(
                f"{target.name} builds with TensorRT-RTX, whose networks are strongly typed: engines compute in the "
                f"export's own types ({export_dtype} here), so --precision {precision} cannot apply; re-export with "
                f"--dtype {precision} for {precision} engines, or drop --precision")
        return export_dtype
    precision = precision or "fp16"
    check_precision(target, precision)
    return precision


def check_precision(target: Target, precision: str) -> None:
    """Refuses a precision the target's GPU cannot run, naming the ones it can."""
    if precision not in PRECISIONS:
        raise TransPruneError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision not in target.precisions:
        why = {"fp8": "fp8 needs Ada (SM 8.9) or newer", "bf16": "TensorRT on Orin has no bf16 kernels",
               "fp32": "TensorRT targets build 16-bit engines (an fp32 build runs as fp32 on TensorRT-RTX: --target rtx)"}
        raise TransPruneError(f"{target.name} ({target.gpu}) cannot build {precision}: {why.get(precision, '')}; "
                              f"use --precision {' or '.join(target.precisions)}")


def check_optimization_level(level: int | None) -> int | None:
    """``level`` if it is a builder optimisation level (or None, the builder's default); else refused."""
    if level is None or (type(level) is int and level in OPTIMIZATION_LEVELS):
        return level
    raise TransPruneError(f"--optimization-level {level!r} is not one of TensorRT's builder optimisation levels: "
                          f"{OPTIMIZATION_LEVELS[0]} (fastest build) to {OPTIMIZATION_LEVELS[-1]} (longest search); "
                          f"leave it out for the builder's default (3)")
