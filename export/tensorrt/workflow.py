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
from transprune.runtime.build import Build

from .engines import build_engines, compare_engines
from .plan import make_plan, write_plan
from .profiles import shape_limits
from .targets import Target, get_target, resolve_precision


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
               memory_gib: float | None = None, out: Path | None = None, verify: bool = True) -> PlannedBuild:
    """Checks the request and writes the plan and script into ``out`` (default:
    ``build_dir/trt-<target>``); nothing is written when the deployment would not fit.
    ``precision`` defaults to fp16 for TensorRT targets and is the export's dtype for TensorRT-RTX."""
    spec = resolve_target(name=target, memory_gib=memory_gib)
    build = Build.open(Path(build_dir), verify=verify)
    precision = resolve_precision(spec, precision, export_dtype=build.manifest["dtype"])
    limits = shape_limits(build, max_batch=max_batch, max_text_tokens=max_text_tokens, max_new_tokens=max_new_tokens)
    engine_dir = Path(out) if out is not None else build.directory / f"trt-{spec.name}"
    plan = make_plan(build, target=spec, precision=precision, limits=limits, engine_dir=engine_dir)
    memory = plan["memory"]
    if not memory["fits"]:
        raise TransPruneError(
            f"{build.manifest['model']['id']} at {precision} needs about {memory['total_gib']:.2f} GiB on "
            f"{spec.name} (weights {memory['weights_gib']:.2f}, KV cache {memory['kv_cache_gib']:.2f}, activations "
            f"{memory['activations_gib']:.2f}, runtime {memory['overhead_gib']:.2f}), more than its "
            f"{memory['budget_gib']:.2f} GiB budget; lower --max-batch/--max-text-tokens/--max-new-tokens, pick a "
            f"target with more memory, or use a model with 4-bit weights. Nothing was written")
    plan_path, script_path = write_plan(plan, engine_dir)
    return PlannedBuild(build, plan, engine_dir, plan_path, script_path)


def build_and_compare(*, planned: PlannedBuild, timing_cache: Path | None = None, compare: bool = False,
                      log=print) -> list[str]:
    """Builds the planned engines (needs the target's TensorRT module), then, with ``compare``, runs
    each against onnxruntime (TensorRT and polygraphy on a GPU); returns the failed comparisons as
    "graph (phase)" (empty: all passed)."""
    if compare and planned.plan["target"]["module"] != "tensorrt":
        raise TransPruneError(
            "--compare runs engines, which needs the GPU they are for; TensorRT-RTX builds here without one. On an "
            "RTX GPU, compare the chain instead: transprune-run BUILD --backend tensorrt against --backend onnxruntime")
    build_engines(planned.plan, planned.build, planned.engine_dir, timing_cache=timing_cache, log=log)
    if not compare:
        return []
    results = compare_engines(planned.plan, planned.build, planned.engine_dir, log=log)
    return [f"{g} ({p})" for g, phases in results.items() for p, ok in phases.items() if not ok]
