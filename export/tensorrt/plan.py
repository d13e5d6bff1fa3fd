"""The build plan: what ``transprune-build`` builds, as JSON, and as a ``trtexec`` script for the device.

One plan feeds three consumers, so they cannot drift apart: the builder-API build (``engines``,
TensorRT or TensorRT-RTX), the shell script (``trtexec`` commands for a Jetson whose JetPack has
trtexec but no pip; for TensorRT-RTX, whose wheel ships no command-line builder, the same API
build as a command), and the engine metadata the runtime checks (``transprune.runtime.tensorrt.engines``,
which also owns the plan's file name, ``PLAN_FILE``: the runtime reads the plan and cannot import
this side).

Paths: the plan names each graph by its file inside the build directory and each engine by its
file inside the engine directory; the script takes the build directory from ``$BUILD_DIR``
(default: the directory the plan was written for, relative when it holds the engine directory),
so the pair can be copied to the device together.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from transprune.errors import TransPruneError
from transprune.files import write_atomic
from transprune.runtime.build import Build
from transprune.runtime.tensorrt.engines import PLAN_FILE

from .memory import engine_weight_bytes, estimate_memory
from .profiles import InputProfile, Profile, ShapeLimits, build_profiles, kv_cache_bytes
from .targets import Target, check_optimization_level

SCRIPT_FILE = "build_engines.sh"
TIMING_CACHE_FILE = "timing.cache"
PLAN_SCHEMA = 1


def make_plan(build: Build, *, target: Target, precision: str, limits: ShapeLimits,
              engine_dir: Path, optimization_level: int | None = None) -> dict:
    """The plan for building ``build``'s engines for ``target`` into ``engine_dir``, at the builder
    ``optimization_level`` (None: the builder's default; ``targets.OPTIMIZATION_LEVELS``)."""
    optimization_level = check_optimization_level(optimization_level)
    lint_failures = [g["name"] for g in build.manifest["graphs"] if not g.get("trt_lint", {}).get("ok", True)]
    if lint_failures:
        raise TransPruneError(f"graphs {lint_failures} failed the TensorRT lint at export (see the manifest's "
                              f"trt_lint entries); TensorRT would not parse them. Re-export with --opset 18..20")
    rejected = [g["name"] for g in build.manifest["graphs"] if not all(p["ok"] for p in g.get("trt_parse", []))]
    if rejected:
        raise TransPruneError(f"graphs {rejected} were rejected by a TensorRT parser at export (see the manifest's "
                              f"trt_parse entries); `transprune-export --check-trt {build.directory}` lists the nodes")
    profiles = build_profiles(build, limits, merge=target.module == "tensorrt_rtx")
    weights_section = build_weights(build.manifest)
    weights = sum(int(g.get("bytes", 0)) for g in build.manifest["graphs"])
    weights = engine_weight_bytes(weights, export_dtype=build.manifest["dtype"], precision=precision,
                                  weights_format=weights_section["format"])
    memory = estimate_memory(target=target, weights=weights, kv_cache=kv_cache_bytes(build, limits))
    warnings = []
    if precision == "fp8":
        warnings.append("the graphs carry no FP8 Q/DQ nodes, so TensorRT quantizes nothing to fp8 and runs "
                        "fp16 kernels; quantize the ONNX graphs (e.g. with TensorRT Model Optimizer) to gain from fp8")
    engines = []
    for graph in build.graphs.values():
        entry = next(g for g in build.manifest["graphs"] if g["name"] == graph.name)
        engines.append({
            "graph": graph.name, "kind": graph.kind,
            "onnx": entry["file"], "onnx_sha256": entry["sha256"][entry["file"]],
            "engine": f"{graph.name}.engine",
            "profiles": [p.to_dict() for p in profiles[graph.name]],
        })
    return {
        "schema": PLAN_SCHEMA,
        "target": target.to_dict(),
        "precision": precision,
        "limits": limits.to_dict(),
        "build_dir": _relative_build_dir(build.directory, engine_dir),
        "model": build.manifest["model"]["id"],
        "export_dtype": build.manifest["dtype"],
        "weights": weights_section,
        # TensorRT-RTX networks always are; TensorRT's are for int4 weights (trtexec --stronglyTyped)
        "strongly_typed": target.module == "tensorrt_rtx" or weights_section["format"] == "int4",
        # trtexec --builderOptimizationLevel; None: the builder's default (3), the engines one ships
        "builder_optimization_level": optimization_level,
        "memory": memory.to_dict(),
        "warnings": warnings,
        "timing_cache": TIMING_CACHE_FILE,
        "engines": engines,
    }


def build_weights(manifest: dict) -> dict:
    """How the build stores its weights (the manifest's ``weights`` section; builds that predate it
    store floats in their dtype)."""
    return dict(manifest.get("weights") or {"format": "float", "dtype": manifest["dtype"]})


def _relative_build_dir(build_dir: Path, engine_dir: Path) -> str:
    build_dir, engine_dir = build_dir.resolve(), engine_dir.resolve()
    if engine_dir.is_relative_to(build_dir):
        return os.path.relpath(build_dir, engine_dir)
    return str(build_dir)


def _shape(dims) -> str:
    # trtexec writes a 0-d shape as "scalar"; a shape tensor's values are written like dimensions
    return "x".join(str(d) for d in dims) if len(dims) else "scalar"


def _shapes_arg(profile: dict, which: str) -> str:
    return ",".join(f"{name}:{_shape(spec[which])}" for name, spec in profile["inputs"].items())


def precision_flags(plan: dict) -> list[str]:
    """trtexec's precision flags for the plan.

    A strongly typed plan (int4 weights) gets ``--stronglyTyped`` and no precision flag: the engines
    compute in the graph's own types (fp16 activations for an fp16 export), and trtexec refuses
    precision flags beside it ("Use of specific builder precision flags such as --int8 or --best
    with this option is not allowed": NVIDIA/TensorRT samples/trtexec/README.md, "Create a strongly
    typed plan file"). Strong typing is how NVIDIA's tools build weight-only INT4 Q/DQ graphs
    (Model Optimizer's ONNX PTQ builds its int4 output with trtexec --stronglyTyped,
    NVIDIA/Model-Optimizer#80; TensorRT-RTX, strongly typed only, builds these graphs here), while
    trtexec's ``--int4`` exists only from TensorRT 10.6 (JetPack 6 ships 10.3) and on its own left
    a weakly typed engine in FP32 (NVIDIA/TensorRT#4262).
    """
    if plan.get("strongly_typed"):
        return ["--stronglyTyped"]
    return {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"], "fp8": ["--fp16", "--fp8"]}[plan["precision"]]


def trtexec_command(engine: dict, plan: dict, *, build_dir: str = "$BUILD_DIR") -> list[str]:
    """One engine's trtexec argv; profiles in plan order (trtexec numbers them as given)."""
    argv = ["$TRTEXEC", f"--onnx={build_dir}/{engine['onnx']}", f"--saveEngine={engine['engine']}",
            *precision_flags(plan)]  # names from the build are quoted by _quote (and checked at load: SAFE_NAME)
    if plan.get("builder_optimization_level") is not None:
        argv.append(f"--builderOptimizationLevel={plan['builder_optimization_level']}")
    for profile in engine["profiles"]:
        for which, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            argv.append(f"{flag}={_shapes_arg(profile, which)}")
    argv += [f"--memPoolSize=workspace:{plan['target']['workspace_mib']}M",
             f"--timingCacheFile={plan['timing_cache']}", "--skipInference"]
    return argv


def build_script(plan: dict) -> str:
    """The plan's build as a bash script: trtexec commands for a TensorRT target (to run on the
    device), or, for TensorRT-RTX (whose wheel ships no command-line builder), the same API build
    ``transprune-build`` does, runnable on any machine."""
    if plan["target"].get("module", "tensorrt") == "tensorrt_rtx":
        return rtx_script(plan)
    return trtexec_script(plan)


def rtx_script(plan: dict) -> str:
    """A bash script that rebuilds a TensorRT-RTX plan through transprune's builder API."""
    target, limits = plan["target"], plan["limits"]
    command = ["$PYTHON", "-m", "transprune.cli.build", "$BUILD_DIR", "--target", target["name"], "--out", "."]
    if plan.get("builder_optimization_level") is not None:
        command += ["--optimization-level", str(plan["builder_optimization_level"])]
    sizes = ["--max-batch", str(limits["max_batch"]), "--max-text-tokens", str(limits["max_text_tokens"]),
             "--max-new-tokens", str(limits["max_new_tokens"]), "--memory-gib", f"{target['memory_gib']:g}"]
    lines = [
        "#!/usr/bin/env bash",
        f"# Builds the TensorRT-RTX engines of a transprune build for {target['name']} ({target['gpu']}),",
        f"# {plan['precision']} (the export's types: TensorRT-RTX networks are strongly typed). Any machine will",
        "# do, GPU or not: the engines are built ahead of time and specialised on the RTX GPU at first run.",
        "# TensorRT-RTX's pip wheel has no command-line builder, so this is transprune-build's API build",
        "# (pip install tensorrt-rtx-cu12); it writes the engine metadata itself.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"BUILD_DIR=\"${{BUILD_DIR:-{plan['build_dir']}}}\"",
        'PYTHON="${PYTHON:-python3}"',
        " ".join(_quote(a) for a in command) + " \\",
        "    " + " ".join(_quote(a) for a in sizes),
        "",
    ]
    return "\n".join(lines)


def trtexec_script(plan: dict) -> str:
    """A bash script that builds every engine with trtexec, then records the engine metadata."""
    target = plan["target"]
    typing = []
    if plan.get("strongly_typed"):
        typing = ["# int4 weights: built strongly typed (--stronglyTyped), so the engines compute in the export's",
                  f"# own types ({plan['precision']}) and keep the int4 weights packed."]
    lines = [
        "#!/usr/bin/env bash",
        f"# Builds the TensorRT engines of a transprune build for {target['name']} ({target['gpu']}),",
        f"# {plan['precision']}, on the device itself: engines are tied to its TensorRT version and GPU.",
        *typing,
        "# Generated by transprune-build from plan.json; profile 0 of every engine is prefill, profile 1",
        "# (where there is one) is decode. The scorers' `keep` is a shape-tensor value (TopK's K).",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"BUILD_DIR=\"${{BUILD_DIR:-{plan['build_dir']}}}\"",
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        'PYTHON="${PYTHON:-python3}"',
        "",
    ]
    total = len(plan["engines"])
    for number, engine in enumerate(plan["engines"], 1):
        # graph and file names come from a build, which is untrusted input: quoted, never expanded
        lines.append(f"echo {shlex.quote(f'[{number}/{total}] ' + engine['graph'])} >&2")
        argv = trtexec_command(engine, plan)
        quoted = [_quote(a) for a in argv]
        lines.append(" \\\n    ".join(quoted))
    lines += ["", "# engine metadata (TensorRT version, GPU, profiles) beside each engine, for the runtime's checks",
              '"$PYTHON" -m transprune.runtime.tensorrt.engines record . --built-with trtexec', ""]
    return "\n".join(lines)


_EXPANDED = ("$BUILD_DIR", "$TRTEXEC", "$PYTHON")


def _quote(arg: str) -> str:
    """One shell word for ``arg``: the script's own variables stay expandable (in double quotes),
    everything else, names from the build included, is single-quoted (``shlex.quote``)."""
    for variable in _EXPANDED:
        if variable in arg:
            before, _, after = arg.partition(variable)
            return "".join([shlex.quote(before) if before else "", f'"{variable}"', _quote(after) if after else ""])
    return shlex.quote(arg)


def parse_trtexec_script(text: str) -> dict[str, dict]:
    """{engine file: {"onnx": path, "flags": valueless options (precision), "optimization_level": int
    or None, "profiles": [{"min"/"opt"/"max": {input: dims}}]}} read back from a script written by
    ``trtexec_script``: what trtexec will actually be told."""
    joined = text.replace("\\\n", " ")
    engines = {}
    for line in joined.splitlines():
        words = shlex.split(line, comments=True, posix=True)
        if not words or words[0] != "$TRTEXEC":
            continue
        options: dict[str, list[str]] = {}
        for word in words[1:]:
            key, _, value = word.partition("=")
            options.setdefault(key, []).append(value)
        mins, opts, maxs = options.get("--minShapes", []), options.get("--optShapes", []), options.get("--maxShapes", [])
        if not len(mins) == len(opts) == len(maxs):
            raise TransPruneError(f"{line[:80]}...: unbalanced --minShapes/--optShapes/--maxShapes")
        profiles = [{"min": _parse_shapes(a), "opt": _parse_shapes(b), "max": _parse_shapes(c)}
                    for a, b, c in zip(mins, opts, maxs)]
        engine = options["--saveEngine"][0]
        level = options.get("--builderOptimizationLevel")
        engines[engine] = {"onnx": options["--onnx"][0], "profiles": profiles,
                           "flags": sorted(k for k, v in options.items() if v == [""]),
                           "optimization_level": int(level[-1]) if level else None}
    return engines


def _parse_shapes(spec: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for item in spec.split(","):
        name, _, dims = item.rpartition(":")
        out[name] = () if dims == "scalar" else tuple(int(d) for d in dims.split("x"))
    return out


def write_plan(plan: dict, engine_dir: Path) -> tuple[Path, Path]:
    """Writes plan.json and the build script into ``engine_dir`` (each atomically)."""
    engine_dir.mkdir(parents=True, exist_ok=True)
    plan_path, script_path = engine_dir / PLAN_FILE, engine_dir / SCRIPT_FILE
    elsewhere = "pass --out on another disk"
    write_atomic(plan_path, json.dumps(plan, indent=1) + "\n", what="the build plan", remedy=elsewhere)
    write_atomic(script_path, build_script(plan), what="the build script", remedy=elsewhere)
    script_path.chmod(0o755)
    return plan_path, script_path


def profiles_from_plan(engine: dict) -> list[Profile]:
    """Profiles of one plan entry as objects (for the polygraphy build)."""
    return [Profile(p["phase"], tuple(InputProfile(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]), s["value"])
                                      for name, s in p["inputs"].items())) for p in engine["profiles"]]

