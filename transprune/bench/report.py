"""The benchmark report of ``scripts/report.py``, gathered into one dict and written out.

:func:`run`: part 1, the FLOPs table (:mod:`~transprune.bench.flops_table`); part 2, every measured
schedule built and timed (:mod:`~transprune.bench.schedule_timing`), with its FLOPs ratio for the
prompt's real text-token count, the kept-token checks and the peak RSS. :func:`write`: the plots
(:mod:`~transprune.bench.plots`), ``BENCHMARKS.md`` (:mod:`~transprune.bench.report_markdown`) and
the JSON of everything. Timings are never judged here: on a shared machine they are noise, which
is why everything measured is compared as ratios of interleaved runs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from transprune.errors import TransPruneError

from . import schedule_timing as timing
from .flops_table import flops_rows
from .machine import loadavg, machine_facts
from .output import log, write_json
from .plots import write_plots
from .report_markdown import markdown
from .schedules import SCHEDULES

MODELS = ("tiny", "bench")  # the runnable synthetic models the report measures


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one report measures (the script's command line, checked and with defaults resolved)."""

    model: str
    schedules: list  # names in SCHEDULES, "none" first
    repeats: int
    new_tokens: int
    threads: int
    exports: Path
    out: Path  # the JSON, named in the report
    load: str = "auto"  # all | each | auto
    reexport: bool = False
    pause: float = 0.1
    skip_rss: bool = False
    quick: bool = False

    @classmethod
    def from_args(cls, args) -> Settings:
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def run(settings: Settings, argv: list[str]) -> dict:
    """Everything but the plots: the report's JSON. TransPruneError when the ``none`` build fails."""
    from transprune.checkpoints import resolve_checkpoint
    from transprune.sample_image import sample_image

    started = time.time()
    load_before = loadavg()
    flops_table = flops_rows()
    checkpoint, model_facts = resolve_checkpoint(settings.model)
    failed: dict[str, str] = {}
    builds = timing.ensure_builds(model=settings.model, exports=settings.exports, schedules=settings.schedules,
                                  checkpoint=checkpoint, reexport=settings.reexport, failed=failed)
    keep_loaded, load_policy = timing.keep_all_loaded(settings.load, builds)
    log(f"pipelines: {load_policy}")
    measured = timing.measure(builds, sample_image(), threads=settings.threads, new_tokens=settings.new_tokens,
                              repeats=settings.repeats, pause=settings.pause, keep_loaded=keep_loaded, failed=failed)
    if "none" in failed:
        raise TransPruneError(f"schedule none is the reference of every measured figure and its {failed['none']}")
    names = list(measured["first"])  # the schedules that exported, loaded and ran
    first = measured["first"]["none"]
    text_tokens = len(first["input_ids"]) - first["n_image"]
    flops = timing.measured_flops(model_facts, names, text_tokens)
    summary = timing.summarize(measured["samples"], flops)
    kept = timing.kept_checks(measured["first"], measured["samples"])
    rss = None if settings.skip_rss else timing.measure_rss({n: builds[n] for n in names}, threads=settings.threads,
                                                            new_tokens=settings.new_tokens)
    t = model_facts.text
    return {
        "config": {
            "argv": argv, "model": settings.model, "checkpoint": str(checkpoint),
            "model_facts": f"{t.num_layers} layers, hidden {t.hidden_size}, FFN {t.intermediate_size}, "
                           f"{model_facts.n_image_tokens} image tokens",
            "threads": settings.threads, "repeats": settings.repeats, "new_tokens": settings.new_tokens,
            "quick": settings.quick, "prompt": timing.PROMPT, "prompt_tokens": len(first["input_ids"]),
            "text_tokens": text_tokens, "image_tokens": first["n_image"], "schedules": names,
            "requested_schedules": settings.schedules, "exports": str(settings.exports),
            "json": str(settings.out), "load_policy": load_policy, "keep_loaded": keep_loaded,
            "pause_s": settings.pause, "machine": machine_facts(), "loadavg_before": load_before,
            "loadavg_after": loadavg(), "loadavg_per_repetition": measured["loadavg"],
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)), "wall_s": None,
        },
        "flops_table": flops_table,
        "measured": {"schedules": {n: SCHEDULES[n].to_dict() for n in names}, "builds": builds, "failed": failed,
                     "flops": flops, "summary": summary, "kept": kept, "rss": rss, "load_s": measured["load_s"],
                     "tokens": {n: f["tokens"] for n, f in measured["first"].items()},
                     "samples": measured["samples"]},
        "checks": {"kept_matches_schedule": all(k["ok"] for k in kept.values()),
                   "every_run_made_new_tokens": all(s["new_tokens"] == settings.new_tokens
                                                    for runs in measured["samples"].values() for s in runs),
                   "flops_match_published": {f"{r['model']}/{r['schedule']}": r["matches_published"]
                                             for r in flops_table if r["published"]}},
    }


def write(report: dict, *, docs: Path, out: Path, started: float) -> dict:
    """Writes the plots and ``BENCHMARKS.md`` into ``docs`` and the JSON to ``out``; ``config.wall_s``
    counts from ``started`` (a ``time.time()``). -> {plot: file name in docs, or None}."""
    docs.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, docs)
    report["plots"] = {key: None if name is None else str(docs / name) for key, name in plots.items()}
    report["config"]["wall_s"] = round(time.time() - started, 1)
    (docs / "BENCHMARKS.md").write_text(markdown(report, plots))
    write_json(out, report)
    return plots
