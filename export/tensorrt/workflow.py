"""What ``transprune-build`` does, as library calls: check the request, plan, build, compare.

``plan_build`` refuses what cannot work before anything is written (a precision the GPU lacks,
sizes beyond the export, a deployment over the target's memory budget) and then writes the plan
and the trtexec script; ``build_and_compare`` builds the planned engines where TensorRT imports
and optionally compares them with onnxruntime. The CLI (``transprune.cli.build``) parses the
arguments, calls these and prints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

from transprune.errors import TransPruneError
from transprune.files import check_writable, create_parents, is_within, refuse_overlap, remove_created
from transprune.runtime.build import Build
from transprune.runtime.tensorrt.engines import PLAN_FILE, metadata_path

from .engines import build_engines, compare_engines
from .plan import SCRIPT_FILE, build_weights, make_plan, write_plan
from .profiles import shape_limits
from .targets import Target, check_optimization_level, get_target, resolve_precision


class PlannedBuild(NamedTuple):
    """What ``plan_build`` wrote, and for what."""

    build: Build
    plan: dict
    engine_dir: Path
    plan_path: Path
    script_path: Path


def resolve_target(*, name: str, memory_gib: float | None = None) -> Target:
    """The target preset ``name``; with ``memory_gib``, its budget moved to a device of that much
    memory (the system keeps what it keeps on the preset)."""
    spec = get_target(name)
    if memory_gib is None:
        return spec
    if memory_gib <= spec.memory_gib - spec.budget_gib:
        raise TransPruneError(f"--memory-gib {memory_gib} leaves nothing after the "
                              f"{spec.memory_gib - spec.budget_gib:g} GiB the system keeps")
    return dataclasses.replace(spec, budget_gib=memory_gib - (spec.memory_gib - spec.budget_gib),
                               memory_gib=memory_gib)


def plan_build(*, build_dir: Path, target: str, precision: str | None = None, max_batch: int = 1,
               max_text_tokens: int | None = None, max_new_tokens: int | None = None,
               memory_gib: float | None = None, out: Path | None = None, verify: bool = True,
               timing_cache: Path | None = None, optimization_level: int | None = None) -> PlannedBuild:
    """Checks the request and writes the plan and script into ``out`` (default:
    ``build_dir/trt-<target>``); nothing is written when the deployment would not fit, or when
    ``out`` (or ``timing_cache``, given here to be checked before anything is written) would
    overwrite an input (``check_engine_dir``, ``check_timing_cache``).
    ``precision`` defaults to fp16 for TensorRT targets and is the export's dtype for TensorRT-RTX.
    ``optimization_level`` is the builder's (0 fastest build .. 5; None: the builder's default, 3),
    kept in the plan for the API build and the script alike."""
    check_optimization_level(optimization_level)
    spec = resolve_target(name=target, memory_gib=memory_gib)
    build = Build.open(Path(build_dir), verify=verify)
    int4 = build_weights(build.manifest)["format"] == "int4"
    precision = resolve_precision(spec, precision, export_dtype=build.manifest["dtype"], int4=int4)
    limits = shape_limits(build, max_batch=max_batch, max_text_tokens=max_text_tokens, max_new_tokens=max_new_tokens)
    engine_dir = Path(out) if out is not None else build.directory / f"trt-{spec.name}"
    check_engine_dir(engine_dir, build)
    plan = make_plan(build, target=spec, precision=precision, limits=limits, engine_dir=engine_dir,
                     optimization_level=optimization_level)
    if timing_cache is not None:
        check_timing_cache(timing_cache, build=build, engine_dir=engine_dir, plan=plan)
    check_fits(plan)
    created = []
    try:
        create_parents(engine_dir / PLAN_FILE, created)
        plan_path, script_path = write_plan(plan, engine_dir)
    except BaseException:  # an interrupt too: an engine directory made for nothing goes again
        remove_created(created)
        raise
    return PlannedBuild(build, plan, engine_dir, plan_path, script_path)


def check_fits(plan: dict) -> None:
    """Refuses a plan whose memory estimate exceeds its target's budget, with the numbers: what it
    needs, part by part, and by how much it is over."""
    memory = plan["memory"]
    if memory["fits"]:
        return
    int4 = (plan.get("weights") or {}).get("format") == "int4"
    weights = "int4 weights" if int4 else f"{plan['export_dtype']} weights"
    smaller = ("quantize more of the model (--int4-parts)" if int4
               else "re-export with 4-bit weights (--dtype fp16 --weights int4)")
    fixed = memory["weights_gib"] + memory["activations_gib"] + memory["overhead_gib"]
    if fixed > memory["budget_gib"]:  # no KV cache is small enough
        remedy = (f"its weights, workspace and runtime alone take {fixed:.2f} GiB, so no shorter prompt or answer "
                  f"fits: pick a target with more memory, or {smaller}")
    else:
        remedy = f"lower --max-batch/--max-text-tokens/--max-new-tokens, pick a target with more memory, or {smaller}"
    raise TransPruneError(
        f"{plan['model']} at {plan['precision']} with {weights} needs about {memory['total_gib']:.2f} GiB on "
        f"{plan['target']['name']} (weights {memory['weights_gib']:.2f}, KV cache {memory['kv_cache_gib']:.2f}, "
        f"activations {memory['activations_gib']:.2f}, runtime {memory['overhead_gib']:.2f}), "
        f"{memory['total_gib'] - memory['budget_gib']:.2f} GiB more than its {memory['budget_gib']:.2f} GiB budget; "
        f"{remedy}. Nothing was written")


def build_and_compare(*, planned: PlannedBuild, timing_cache: Path | None = None, compare: bool = False,
                      log=print) -> list[str]:
    """Builds the planned engines (needs the target's TensorRT module), then, with ``compare``, runs
    each against onnxruntime (TensorRT and polygraphy on a GPU); returns the failed comparisons as
    "graph (phase)" (empty: all passed)."""
    if compare and planned.plan["target"]["module"] != "tensorrt":
        raise TransPruneError(
            "--compare runs engines, which needs the GPU they are for; TensorRT-RTX builds here without one. On an "
            "RTX GPU, compare the chain instead: transprune-run BUILD --backend tensorrt against --backend onnxruntime")
    if timing_cache is not None:
        check_timing_cache(timing_cache, build=planned.build, engine_dir=planned.engine_dir, plan=planned.plan)
    build_engines(planned.plan, planned.build, planned.engine_dir, timing_cache=timing_cache, log=log)
    if not compare:
        return []
    results = compare_engines(planned.plan, planned.build, planned.engine_dir, log=log)
    return [f"{g} ({p})" for g, phases in results.items() for p, ok in phases.items() if not ok]


def _checkpoint(build: Build):
    """The checkpoint the build was exported from, as its manifest records it (None if it does not)."""
    checkpoint = (build.manifest.get("model") or {}).get("checkpoint")
    return checkpoint if isinstance(checkpoint, str) and checkpoint else None


def check_engine_dir(engine_dir: Path, build: Build) -> None:
    """Refuses an engine directory that would overwrite what transprune-build did not write.

    It may lie inside the build (the default, ``BUILD/trt-TARGET``) but not be the build or hold it,
    nor be, hold or lie inside the checkpoint. An existing directory must be empty or an engine
    directory already (it has a plan.json): the plan, script and engines are written by name, and
    a directory of the user's could hold files of those names.
    """
    refuse_overlap(engine_dir, inputs={"the build directory": build.directory, "the checkpoint": _checkpoint(build)},
                   what="--out", may_lie_inside=("the build directory",))
    check_writable(engine_dir, what="--out", kind="directory", create_parents=True)
    if engine_dir.is_dir() and not (engine_dir / PLAN_FILE).is_file() and any(engine_dir.iterdir()):
        raise TransPruneError(f"--out {engine_dir} holds files but is no engine directory (it has no {PLAN_FILE}); "
                              f"engines and their plan would overwrite files of the same names there: choose a new or "
                              f"empty directory")


def check_timing_cache(timing_cache: Path, *, build: Build, engine_dir: Path, plan: dict) -> None:
    """Refuses a timing cache path (read, then rewritten) that is one of the build's files, the
    checkpoint's, or one the engine directory holds for another purpose (the plan, the script, an
    engine or its metadata, TensorRT-RTX's runtime cache). Inside the engine directory any other
    name is fine: the default is ``engine_dir/timing.cache``."""
    from transprune.runtime.tensorrt.backend import RUNTIME_CACHE_FILE

    timing_cache = Path(timing_cache)
    if is_within(timing_cache, engine_dir):
        taken = {PLAN_FILE, SCRIPT_FILE, RUNTIME_CACHE_FILE}
        for engine in plan["engines"]:
            taken.update({engine["engine"], metadata_path(Path(engine["engine"])).name})
        beside = is_within(timing_cache.parent, engine_dir) and is_within(engine_dir, timing_cache.parent)
        if beside and timing_cache.name in taken:
            raise TransPruneError(f"--timing-cache {timing_cache} is the engine directory's {timing_cache.name}, "
                                  f"which transprune-build writes itself; choose another --timing-cache (the default "
                                  f"is {engine_dir / plan['timing_cache']})")
        if timing_cache.is_dir():
            raise TransPruneError(f"--timing-cache {timing_cache} is a directory; name the file to write")
        return  # the engine directory, created with the plan, was checked by check_engine_dir
    refuse_overlap(timing_cache, inputs={"the build directory": build.directory, "the checkpoint": _checkpoint(build)},
                   what="--timing-cache")
    check_writable(timing_cache, what="--timing-cache", kind="file")
