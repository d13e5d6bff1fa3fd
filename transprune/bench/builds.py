"""The benchmarks' builds: where each lives, whether one already there can be reused, and
exporting it when not.

A benchmark build is ``--model`` exported with one schedule in fp32 without validation into
``<exports>/<model>-<schedule>``. Exports take minutes, so a build already there is reused when
its manifest says it is what would be exported today: same manifest schema, schedule, checkpoint
and dtype, and the graphs' inputs and outputs of today's exporter. ``--reexport`` exports anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

from transprune.cli.export import ProgressBar
from transprune.schedule import preset

from .export_and_runtime import export_build, graph_signatures, manifest_schema_version
from .output import log

# The two builds bench_runtime.py and bench_next.py compare: kind -> schedule preset.
PAIR = {"pruned": "paper", "unpruned": "none"}


def build_dir(exports: Path, model: str, schedule_name: str, weight_format: str = "float") -> Path:
    """``<exports>/<model>-<schedule>``, with ``-int4`` appended for int4 weights (the name
    bench_weights.py gives its int4 build of the paper schedule too, so either script reuses it)."""
    suffix = "" if weight_format == "float" else f"-{weight_format}"
    return exports / f"{Path(model).name}-{schedule_name}{suffix}"


def stale_reason(out: Path, schedule, checkpoint: Path, *, dtype: str = "fp32",
                 weights: dict | None = None) -> str | None:
    """Why the build in ``out`` cannot be reused (None: it can). ``weights``: entries its manifest's
    ``weights`` section must hold (e.g. ``{"format": "int4", "block_size": 128}``); None: not checked."""
    manifest_file = out / "manifest.json"
    if not manifest_file.is_file():
        return "no build there"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc})"
    schema_version = manifest_schema_version()
    if manifest.get("schema_version") != schema_version:
        return f"its manifest schema is {manifest.get('schema_version')}, this transprune writes {schema_version}"
    if manifest.get("schedule") != schedule.to_dict():
        return f"its schedule is {manifest.get('schedule')}, not {schedule.to_dict()}"
    exported_from = (manifest.get("model") or {}).get("checkpoint")
    if not exported_from or Path(exported_from).resolve() != checkpoint.resolve():
        return f"it was exported from {exported_from}, not {checkpoint}"
    if manifest.get("dtype") != dtype:
        return f"its dtype is {manifest.get('dtype')}, not {dtype}"
    if weights is not None:
        found = manifest.get("weights") or {}
        differ = {key: found.get(key) for key, value in weights.items() if found.get(key) != value}
        if differ:
            return f"its weights are {found or 'float, unrecorded (an older exporter)'}, not {weights}"
    # an older exporter wrote other graphs (names, inputs, outputs): compare with today's specs
    try:
        wanted = graph_signatures(manifest["model"]["facts"], schedule)
        found = [(g["name"], [t["name"] for t in g["inputs"]], [t["name"] for t in g["outputs"]])
                 for g in manifest["graphs"]]
    except (KeyError, TypeError) as exc:
        return f"its manifest lacks {exc}"
    if found != wanted:
        return "an older exporter wrote it (its graphs' inputs or outputs differ from today's)"
    return None


def ensure_build(*, model: str, out: Path, schedule, checkpoint: Path, dtype: str = "fp32",
                 weight_format: str = "float", block_size: int | None = None, reexport: bool = False) -> dict:
    """Reuses the build in ``out`` when its schedule, checkpoint, dtype and weights match, else
    exports it there (without validation); int4 weights in blocks of ``block_size``.
    -> {path, reused, export_s}."""
    weights = {"format": weight_format, **({"block_size": block_size} if weight_format == "int4" else {})}
    reason = "--reexport" if reexport else stale_reason(out, schedule, checkpoint, dtype=dtype, weights=weights)
    if reason is None:
        log(f"reusing {out} (schedule {schedule.name})")
        return {"path": str(out), "reused": True, "export_s": None}
    log(f"exporting {model} ({dtype}, {weight_format} weights) with schedule {schedule.name} into {out} ({reason})")
    bar = ProgressBar()
    try:
        export_build(model=model, out=out, schedule=schedule, dtype=dtype, weight_format=weight_format,
                     block_size=block_size if weight_format == "int4" else None,
                     progress=lambda step, steps, label: bar(step, steps, f"{out.name}: {label}"))
    finally:
        bar.finish()
    log(f"exported {out} in {bar.elapsed():.0f} s")
    return {"path": str(out), "reused": False, "export_s": round(bar.elapsed(), 1)}


def ensure_pair(*, model: str, exports: Path, checkpoint: Path, weight_format: str = "float",
                block_size: int | None = None, reexport: bool = False) -> dict:
    """The :data:`PAIR` builds (both with ``weight_format`` weights, int4 in blocks of
    ``block_size``), exported where missing or stale; -> {kind: {path, reused, export_s}}."""
    return {kind: ensure_build(model=model, out=build_dir(exports, model, name, weight_format), schedule=preset(name),
                               checkpoint=checkpoint, weight_format=weight_format, block_size=block_size,
                               reexport=reexport)
            for kind, name in PAIR.items()}
