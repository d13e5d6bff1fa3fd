"""Engine metadata: what each TensorRT engine was built for, written beside it and checked at load.

A serialized engine runs only under the TensorRT version that built it and on GPUs of the compute
capabilities it was built for; loading it anywhere else fails deep inside TensorRT or, worse,
works with a graph that no longer matches the build. So every ``<graph>.engine`` gets a
``<graph>.engine.json``: the module that built it (``tensorrt`` or ``tensorrt_rtx``) and its
version, the compute capabilities it runs on (TensorRT: the building GPU's; TensorRT-RTX: the
list it was built ahead of time for), precision, profiles (by phase), and the sha256 of the ONNX
graph and of the engine file. ``check_metadata`` compares it with what is running and refuses a
mismatch with a message that says to rebuild. The runtime picks the module to load from the
metadata (``engine_module``), so one backend runs both kinds of engine set.

``python -m transprune.runtime.tensorrt.engines record DIR`` writes the metadata after a trtexec build
(the script ``transprune-build`` writes ends with it); it needs the ``tensorrt`` module.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from transprune.errors import TransPruneError
from transprune.files import write_atomic

from ..build import Build
from ..manifest import resolve_inside, sha256

METADATA_SCHEMA = 2  # 2: the building module and a list of compute capabilities
# The build plan beside the engines (written by transprune.export.tensorrt.plan, which imports this
# name: the runtime cannot import the export side).
PLAN_FILE = "plan.json"


class EngineMismatch(TransPruneError):
    """An engine that cannot run here or does not belong to this build."""


# name -> (product name, where to get it when the import fails)
MODULES = {
    "tensorrt": ("TensorRT", "On a Jetson it comes with JetPack (apt install python3-libnvinfer; use the system "
                             "python3); on x86 install it from NVIDIA's index (pip install tensorrt "
                             "--extra-index-url https://pypi.nvidia.com): PyPI alone has only a placeholder"),
    "tensorrt_rtx": ("TensorRT-RTX", "Install it from PyPI: pip install tensorrt-rtx-cu12 (or transprune's `rtx` "
                                     "extra); it builds engines without a GPU and runs them on RTX GPUs"),
}


@dataclass(frozen=True)
class Platform:
    """What is running (or building): the TensorRT module and version, and the GPU's compute
    capability (``None`` for a TensorRT-RTX build on a machine without a GPU)."""

    tensorrt_version: str
    compute_capability: tuple[int, int] | None
    gpu_name: str = ""
    module: str = "tensorrt"

    @property
    def product(self) -> str:
        return MODULES[self.module][0]


def metadata_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def runs_on(plan: dict, platform: Platform) -> list[list[int]]:
    """The compute capabilities an engine of ``plan`` built on ``platform`` runs on: TensorRT-RTX's
    are the target's list (built ahead of time), TensorRT's the building GPU's own."""
    if platform.module == "tensorrt_rtx":
        return [list(cc) for cc in plan["target"]["compute_capabilities"]]
    if platform.compute_capability is None:
        raise TransPruneError("TensorRT builds engines for the GPU it runs on, and none was found")
    return [list(platform.compute_capability)]


def make_metadata(engine: dict, plan: dict, platform: Platform, *, engine_sha256: str, built_with: str,
                  build_seconds: float | None = None) -> dict:
    return {
        "schema": METADATA_SCHEMA,
        "graph": engine["graph"],
        "engine": engine["engine"],
        "engine_sha256": engine_sha256,
        "onnx": engine["onnx"],
        "onnx_sha256": engine["onnx_sha256"],
        "tensorrt_module": platform.module,
        "tensorrt_version": platform.tensorrt_version,
        "compute_capabilities": runs_on(plan, platform),
        "gpu_name": platform.gpu_name,
        "build_seconds": None if build_seconds is None else round(build_seconds, 2),
        "target": plan["target"]["name"],
        "precision": plan["precision"],
        "builder_optimization_level": plan.get("builder_optimization_level"),  # None: the builder's default
        "limits": plan["limits"],
        "memory": plan.get("memory"),  # the whole set's device-memory estimate, as planned
        "profiles": engine["profiles"],
        "built_with": built_with,
    }


def _version_key(version: str) -> tuple[str, ...]:
    # 10.3.0.30 and 10.3.0 are the same release for engine compatibility; 10.3.1 is not
    return tuple(version.split(".")[:3])


def check_metadata(meta: dict, *, platform: Platform, onnx_sha256: str, where: str) -> None:
    """Raises ``EngineMismatch`` unless the engine described by ``meta`` may run on ``platform`` for
    the graph whose ONNX file has ``onnx_sha256``."""
    if meta.get("schema") != METADATA_SCHEMA:
        raise EngineMismatch(f"{where}: engine metadata schema {meta.get('schema')!r}, this runtime reads "
                             f"{METADATA_SCHEMA}; rebuild the engines with transprune-build")
    module = meta["tensorrt_module"]
    if module not in MODULES:
        raise EngineMismatch(f"{where}: built with an unknown module {module!r}; rebuild with transprune-build")
    if module != platform.module:
        raise EngineMismatch(f"{where}: built with {MODULES[module][0]}, but {platform.product} is loading it; "
                             f"engines of one set must come from one builder: rebuild them with transprune-build")
    built, running = meta["tensorrt_version"], platform.tensorrt_version
    if _version_key(built) != _version_key(running):
        how = ("rebuild on the target with transprune-build (or its build_engines.sh)" if module == "tensorrt" else
               f"rebuild with this {platform.product} (transprune-build --target {meta.get('target')})")
        raise EngineMismatch(f"{where}: built with {platform.product} {built}, this is {platform.product} {running}; "
                             f"engines do not carry over between versions: {how}")
    capabilities = [tuple(cc) for cc in meta["compute_capabilities"]]
    here = platform.compute_capability
    if here is None or tuple(here) not in capabilities:
        built_for = ", ".join(f"{a}.{b}" for a, b in capabilities)
        running_on = "no GPU" if here is None else f"{here[0]}.{here[1]}"
        raise EngineMismatch(f"{where}: built for GPUs of compute capability {built_for} "
                             f"({meta.get('gpu_name') or meta.get('target')}), this GPU is {running_on}"
                             f"{' (' + platform.gpu_name + ')' if platform.gpu_name else ''}; rebuild "
                             f"{'on the target ' if module == 'tensorrt' else 'for this GPU '}with transprune-build")
    if meta["onnx_sha256"] != onnx_sha256:
        raise EngineMismatch(f"{where}: built from a different {meta['onnx']} than the build's (sha256 "
                             f"{meta['onnx_sha256'][:12]} vs {onnx_sha256[:12]}); the build was re-exported after "
                             f"the engines were built: rebuild them with transprune-build")
    phases = [phase for p in meta["profiles"] for phase in p["phase"].split("+")]
    if not phases or phases[0] != "prefill" or len(set(phases)) != len(phases):
        raise EngineMismatch(f"{where}: profiles {[p['phase'] for p in meta['profiles']]} are not prefill[, decode] "
                             f"or prefill+decode; rebuild with transprune-build")


@dataclass(frozen=True)
class EngineSet:
    """The checked engines of one build: {graph name: (engine path, metadata)} plus the plan."""

    directory: Path
    plan: dict
    engines: dict[str, tuple[Path, dict]]


def find_engine_dir(build: Build, engine_dir: Path | None) -> Path:
    """``engine_dir``, or the one engine directory inside the build (``trt-<target>``)."""
    if engine_dir is not None:
        return Path(engine_dir)
    found = sorted(p.parent for p in build.directory.glob(f"*/{PLAN_FILE}"))
    if len(found) != 1:
        what = "no engine directory" if not found else f"{len(found)} engine directories ({', '.join(p.name for p in found)})"
        raise TransPruneError(f"{build.directory} holds {what}; build engines with `transprune-build "
                              f"{build.directory} --target ...` or name one with --engines DIR")
    return found[0]


def engine_module(engine_dir: Path) -> str:
    """The module (``tensorrt`` or ``tensorrt_rtx``) that built the engine set in ``engine_dir``,
    from its plan's target; the metadata of every engine is checked against it at load."""
    module = _read_plan(Path(engine_dir)).get("target", {}).get("module", "tensorrt")
    if module not in MODULES:
        raise EngineMismatch(f"{engine_dir}: the plan names an unknown TensorRT module {module!r}; rebuild the "
                             f"engines with transprune-build")
    return module


def _read_plan(directory: Path) -> dict:
    try:
        plan = json.loads((directory / PLAN_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise TransPruneError(f"{directory}: cannot read {PLAN_FILE} ({exc}); build engines with "
                              f"transprune-build") from None
    if not isinstance(plan, dict):
        raise TransPruneError(f"{directory / PLAN_FILE}: not a plan (a JSON object); build engines with transprune-build")
    return plan


def load_engine_set(build: Build, engine_dir: Path | None, *, platform: Platform, verify: bool = True) -> EngineSet:
    """Reads the plan and every engine's metadata and checks them against ``build`` and ``platform``.

    Every graph of the build needs an engine; engine paths may not leave the engine directory.
    """
    directory = find_engine_dir(build, engine_dir)
    plan = _read_plan(directory)
    planned = {e["graph"]: e for e in plan.get("engines", [])}
    engines = {}
    for graph in build.graphs.values():
        if graph.name not in planned:
            raise EngineMismatch(f"{directory}: no engine for graph {graph.name!r}; the plan was made for another "
                                 f"build: rebuild with transprune-build")
        engine_path = resolve_inside(directory, planned[graph.name]["engine"])
        meta_path = metadata_path(engine_path)
        if not engine_path.is_file() or not meta_path.is_file():
            raise EngineMismatch(f"{directory}: {engine_path.name} or its metadata is missing (a plan-only build, or "
                                 f"build_engines.sh did not finish); build the engines on the target")
        entry = next(g for g in build.manifest["graphs"] if g["name"] == graph.name)
        try:
            meta = json.loads(meta_path.read_text())
            check_metadata(meta, platform=platform, onnx_sha256=entry["sha256"][entry["file"]],
                           where=str(engine_path))
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineMismatch(f"{meta_path}: malformed engine metadata ({type(exc).__name__}: {exc}); rebuild "
                                 f"the engines with transprune-build") from None
        if verify and sha256(engine_path) != meta["engine_sha256"]:
            raise EngineMismatch(f"{engine_path}: the file differs from the one its metadata describes (changed "
                                 f"or truncated); rebuild it with transprune-build")
        engines[graph.name] = (engine_path, meta)
    return EngineSet(directory, plan, engines)


def running_platform(module: str = "tensorrt") -> Platform:
    """The TensorRT module's version and the GPU of this machine (imports the module and the CUDA
    runtime)."""
    trt = import_tensorrt(module)
    from polygraphy import cuda

    handle = cuda.wrapper().handle
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    cuda.wrapper().check(handle.cudaGetDevice(ctypes.byref(device)))
    # cudaDevAttrComputeCapabilityMajor = 75, ...Minor = 76 (cuda_runtime_api.h)
    cuda.wrapper().check(handle.cudaDeviceGetAttribute(ctypes.byref(major), 75, device))
    cuda.wrapper().check(handle.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device))
    return Platform(trt.__version__, (major.value, minor.value), _gpu_name(), module)


def _gpu_name() -> str:
    model = Path("/proc/device-tree/model")  # Jetson boards name themselves here
    try:
        return model.read_text().strip("\0\n ") if model.is_file() else ""
    except OSError:
        return ""


def import_tensorrt(module: str = "tensorrt"):
    """The ``tensorrt`` or ``tensorrt_rtx`` module, or a TransPruneError that says where to get it."""
    if module not in MODULES:
        raise TransPruneError(f"unknown TensorRT module {module!r}; use one of {', '.join(MODULES)}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        product, hint = MODULES[module]
        raise TransPruneError(f"{product}'s Python module is not importable here ({exc}). {hint}") from None


def importable_modules() -> list[str]:
    """The TensorRT modules that import here, TensorRT first."""
    found = []
    for module in MODULES:
        try:
            import_tensorrt(module)
        except TransPruneError:
            continue
        found.append(module)
    return found


def record(engine_dir: Path, *, built_with: str, platform: Platform | None = None) -> list[Path]:
    """Writes metadata beside every engine the plan in ``engine_dir`` lists (after a trtexec build),
    after checking that TensorRT here deserializes each one."""
    engine_dir = Path(engine_dir)
    plan = _read_plan(engine_dir)
    if engine_module(engine_dir) != "tensorrt":
        raise TransPruneError(f"{engine_dir}: a TensorRT-RTX plan; its engines are built (and their metadata "
                              f"written) by transprune-build --target {plan['target']['name']}")
    platform = platform or running_platform()
    written = []
    for engine in plan["engines"]:
        path = resolve_inside(engine_dir, engine["engine"])
        if not path.is_file():
            raise TransPruneError(f"{path} is missing; run build_engines.sh to build it first")
        _deserializes(path)
        written.append(write_metadata(engine, plan, path, platform, built_with=built_with))
    return written


def write_metadata(engine: dict, plan: dict, path: Path, platform: Platform, *, built_with: str,
                   build_seconds: float | None = None) -> Path:
    """Writes ``<engine>.json`` beside the engine at ``path`` (atomically)."""
    meta = make_metadata(engine, plan, platform, engine_sha256=sha256(path), built_with=built_with,
                         build_seconds=build_seconds)
    out = metadata_path(path)
    write_atomic(out, json.dumps(meta, indent=1) + "\n", what="the engine's metadata")
    return out


def _deserializes(path: Path) -> None:
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if runtime.deserialize_cuda_engine(path.read_bytes()) is None:
        raise TransPruneError(f"{path}: TensorRT {trt.__version__} cannot load this engine; rebuild it here")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transprune.runtime.tensorrt.engines",
                                     description="Write engine metadata after building engines with trtexec.")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="write <engine>.json beside every engine of a plan")
    rec.add_argument("engine_dir", type=Path)
    rec.add_argument("--built-with", default="trtexec")
    args = parser.parse_args(argv)
    try:
        for path in record(args.engine_dir, built_with=args.built_with):
            print(f"wrote {path}", file=sys.stderr)
    except TransPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
