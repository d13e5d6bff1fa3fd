"""One ONNX graph as a TensorRT network, for TensorRT and TensorRT-RTX alike: parse it (reporting
every node the parser rejects), check its inputs against the build's manifest, add the plan's
profiles, configure the builder and build.

The two modules share this API shape (``Builder``, ``OnnxParser``, profiles, builder config), so
everything here takes the imported module as ``trt`` and differs only where the products do:

- TensorRT 10 builds for the GPU it runs on, at the precision its builder flags allow
  (``FP16``/``BF16``/``FP8``: the network's fp32 layers may then run in 16 bits);
- TensorRT-RTX builds without a GPU, for the compute capabilities it is given, and its networks
  are strongly typed: precision follows the ONNX graph's types and there are no precision flags.
  A TensorRT network is made strongly typed too where the plan says so (int4 weights:
  ``plan.precision_flags`` says why), and then gets no precision flags either.

Nothing here imports onnx at module level: ``transprune-build`` runs on a Jetson with JetPack's
python3, where only the runtime's dependencies are installed. ``rejected_nodes`` uses onnx, when
it imports, only to name every node of an unsupported operator after a failed parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transprune.errors import TransPruneError

from .profiles import Profile
from .targets import check_optimization_level

# ComputeCapability enum members of tensorrt_rtx, by (major, minor)
_SM = {(7, 5): "SM75", (8, 0): "SM80", (8, 6): "SM86", (8, 9): "SM89", (12, 0): "SM120", (12, 1): "SM121"}


@dataclass(frozen=True)
class Rejection:
    """A node the parser refused: its index in the graph (when known), name, operator and why."""

    node: int | None
    name: str
    op: str
    reason: str

    def describe(self) -> str:
        where = f"node {self.node} " if self.node is not None and self.node >= 0 else ""
        return f"{where}{self.name or '(unnamed)'} ({self.op or 'model'}): {self.reason}"


@dataclass(frozen=True)
class NetworkInput:
    name: str
    dtype: str  # numpy name: float32, float16, int64, ...
    shape: tuple[int, ...]  # -1 for a dynamic axis
    is_shape_tensor: bool


@dataclass
class ParsedGraph:
    """A parsed network (or the reasons it is not one) and what the check reports."""

    trt: object
    builder: object
    network: object
    parser: object
    module: str
    version: str
    logger: object = None  # kept alive as long as the objects made with it (TensorRT holds a pointer)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejected

    @property
    def checker(self) -> str:
        return f"{self.module} {self.version} ONNX parser"

    def inputs(self) -> list[NetworkInput]:
        network = self.network
        return [NetworkInput(t.name, _dtype_name(self.trt, t.dtype), tuple(t.shape), bool(t.is_shape_tensor))
                for t in (network.get_input(i) for i in range(network.num_inputs))]


def _dtype_name(trt, dtype) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except (TypeError, ValueError):  # bf16, fp8, int4: no numpy type
        return str(dtype).rsplit(".", 1)[-1].lower()


def make_logger(trt, *, log=None, warnings: bool = False):
    """A TensorRT logger that passes errors (and, with ``warnings``, warnings) to ``log`` (default:
    stderr). Dropped: TensorRT-RTX's failed CUDA probes on a machine without a GPU (cudaError 35:
    its builder does not need one, and builds regardless)."""
    import sys

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    shown = {trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR} | ({trt.Logger.WARNING} if warnings else set())

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.no_gpu_probes = 0

        def log(self, severity, message) -> None:
            if _is_no_gpu_probe(message):
                self.no_gpu_probes += 1
            elif severity in shown:
                log(f"[{trt.__name__}] {str(severity).rsplit('.', 1)[-1]}: {message}")

    return Logger()


def parse_graph(trt, path: Path, *, logger=None, strongly_typed: bool = False) -> ParsedGraph:
    """Parses the ONNX file at ``path`` (external weights beside it) with ``trt``'s parser, into a
    strongly typed network with ``strongly_typed`` (TensorRT-RTX's always are)."""
    logger = logger or make_logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 10's networks are explicit-batch by default; TensorRT-RTX's are strongly typed
    flags = 0
    if strongly_typed and trt.__name__ != "tensorrt_rtx":
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parsed = ParsedGraph(trt, builder, network, parser, trt.__name__, trt.__version__, logger=logger)
    if not parser.parse_from_file(str(path)) or parser.num_errors:
        parsed.rejected = rejected_nodes(trt, parser, path)
    return parsed


def rejected_nodes(trt, parser, path: Path) -> list[Rejection]:
    """Every rejection a failed parse reports: the parser's own errors (it stops at the first node
    it cannot import), then each further node whose operator it says it does not support."""
    found = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        found.append(Rejection(int(error.node()), error.node_name(), error.node_operator(), _reason(error.desc())))
    try:
        import onnx
    except ImportError:
        return found
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - the parser already said what is wrong with the file
        return found
    named = {r.node for r in found}
    for index, node in enumerate(graph.node):
        if index in named:
            continue
        custom = node.domain not in ("", "ai.onnx")
        if custom or not parser.supports_operator(node.op_type):
            reason = (f"operator of domain {node.domain!r}: TensorRT parses standard ONNX operators only" if custom
                      else f"{trt.__name__} has no importer for {node.op_type}")
            found.append(Rejection(index, node.name, node.op_type, reason))
    return found


def _reason(description: str) -> str:
    """The parser's description on one line, without TensorRT-RTX's failed CUDA probes (no GPU)."""
    lines = [line.strip() for line in description.splitlines()]
    return " | ".join(line for line in lines if line and not _is_no_gpu_probe(line))


def _is_no_gpu_probe(message: str) -> bool:
    return "cudaError 35" in message or "CUDA driver version is insufficient" in message


def check_inputs(parsed: ParsedGraph, *, graph: str, manifest_inputs: list[dict], shape_tensors: set[str]) -> None:
    """Raises unless the network's inputs are the manifest's: the same names in the same order, the
    same dtypes, and exactly the planned shape-tensor inputs parsed as shape tensors."""
    got = parsed.inputs()
    names = [i.name for i in got]
    wanted = [t["name"] for t in manifest_inputs]
    if names != wanted:
        raise TransPruneError(f"{graph}: {parsed.module} parsed inputs {names}, the manifest lists {wanted}; the "
                              f"graph file does not belong to this build: re-export it")
    for net_input, spec in zip(got, manifest_inputs):
        if net_input.dtype != spec["dtype"] or len(net_input.shape) != len(spec["axes"]):
            raise TransPruneError(f"{graph}: input {spec['name']!r} parsed as {net_input.dtype} of rank "
                                  f"{len(net_input.shape)}, the manifest says {spec['dtype']} of rank "
                                  f"{len(spec['axes'])}; re-export the build")
    parsed_shape_tensors = {i.name for i in got if i.is_shape_tensor}
    if parsed_shape_tensors != shape_tensors:
        raise TransPruneError(f"{graph}: {parsed.module} parsed {sorted(parsed_shape_tensors) or 'no inputs'} as shape "
                              f"tensors, the plan expects {sorted(shape_tensors) or 'none'}; the profiles would not "
                              f"fit this network")


def add_profiles(parsed: ParsedGraph, config, profiles: list[Profile]) -> None:
    """Adds ``profiles`` in order (their index is the runtime's profile index): shape ranges, and
    value ranges for shape-tensor inputs (``check_inputs`` made sure those are the planned ones)."""
    for profile in profiles:
        trt_profile = parsed.builder.create_optimization_profile()
        for spec in profile.inputs:
            if spec.value:
                trt_profile.set_shape_input(spec.name, spec.min, spec.opt, spec.max)
            else:
                trt_profile.set_shape(spec.name, spec.min, spec.opt, spec.max)
        config.add_optimization_profile(trt_profile)


def configure(parsed: ParsedGraph, *, precision: str, workspace_bytes: int,
              compute_capabilities: list[tuple[int, int]] | None = None, timing_cache: bytes | None = None,
              strongly_typed: bool = False, optimization_level: int | None = None):
    """A builder config: workspace limit, the builder optimisation level (``None``: the builder's
    default, left unset; ``targets.OPTIMIZATION_LEVELS``), then precision flags (none for a
    ``strongly_typed`` network, whose types are the graph's) and the timing cache (TensorRT:
    ``timing_cache`` bytes, or a new one), or the target GPUs (TensorRT-RTX, which times nothing
    ahead of time)."""
    trt = parsed.trt
    optimization_level = check_optimization_level(optimization_level)
    config = parsed.builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level
    if parsed.module == "tensorrt_rtx":
        # strongly typed: the graph's own types are the precision, nothing to set
        capabilities = list(compute_capabilities or [])
        unknown = [cc for cc in capabilities if cc not in _SM]
        if unknown:
            raise TransPruneError(f"TensorRT-RTX cannot target compute capability {unknown}; it knows "
                                  f"{', '.join(f'{a}.{b}' for a, b in _SM)}")
        if capabilities:
            config.num_compute_capabilities = len(capabilities)
            for index, cc in enumerate(capabilities):
                config.set_compute_capability(getattr(trt.ComputeCapability, _SM[cc]), index)
    else:
        flags = [] if strongly_typed else {"fp16": ["FP16"], "bf16": ["BF16"], "fp8": ["FP16", "FP8"],
                                           "fp32": []}[precision]
        for flag in flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        cache = config.create_timing_cache(timing_cache or b"")
        config.set_timing_cache(cache, False)
    return config


def build_to_file(parsed: ParsedGraph, config, *, graph: str, path: Path) -> int:
    """Builds the engine straight into ``path`` (atomically) and returns its size. Where the builder
    has ``build_serialized_network_to_stream`` (TensorRT-RTX 1.7 has it; older TensorRT 10 may not),
    the engine is streamed out, so no host copy of it is made: a 7B segment's engine is about as big
    as its weights, and a copy of it is what would not fit."""
    from transprune.files import atomic_writer

    with atomic_writer(path) as file:
        if hasattr(parsed.builder, "build_serialized_network_to_stream"):
            writer = _stream_writer(parsed.trt, file)
            ok = parsed.builder.build_serialized_network_to_stream(parsed.network, config, writer)
            if writer.failure is not None:  # the builder reports success whatever write() did
                raise writer.failure
            written = writer.written
        else:
            serialized = parsed.builder.build_serialized_network(parsed.network, config)
            ok = serialized is not None
            written = file.write(memoryview(serialized)) if ok else 0
        if not ok:
            raise TransPruneError(f"{parsed.module} could not build {graph} (its log above says why)")
    return written


def _stream_writer(trt, file):
    class Writer(trt.IStreamWriter):
        def __init__(self) -> None:
            trt.IStreamWriter.__init__(self)
            self.written, self.failure = 0, None

        def write(self, data) -> int:
            # kept for build_to_file to raise: raised into the builder, an exception (a full disk,
            # Ctrl-C) is printed as a traceback and dropped, and the engine counts as built
            if self.failure is not None:
                return 0
            try:
                count = file.write(data)
            except BaseException as exc:
                self.failure = exc
                return 0
            self.written += count
            return count

    return Writer()


def timing_cache_bytes(config) -> bytes:
    cache = config.get_timing_cache()
    return bytes(cache.serialize()) if cache is not None else b""
