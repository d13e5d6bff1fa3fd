#!/usr/bin/env python3
"""One benchmark report: the paper's FLOPs figures and measured prefill/decode/memory, with plots.

    python scripts/report.py [--model tiny|bench] [--repeats N] [--new-tokens N] [--threads N]
        [--exports DIR] [--docs DIR] [--out JSON] [--schedules NAME ...] [--skip-rss] [--quick]
        [--load auto|all|each] [--reexport]

Writes ``DIR/BENCHMARKS.md`` (``--docs``, default ``docs``) with four PNG plots beside it, and the
JSON of everything (``--out``, default ``exports/report.json``). Progress goes to stderr.

1. FLOPs, paper convention (``transprune.flops``), always complete because it is arithmetic:
   LLaVA-1.5-7B and LLaVA-NeXT-7B under paper, ttv-only, iga-only, the paper's Table 9 layer
   shifts, a keep-ratio sweep and none; image-token baseline and pruned TFLOPs, ratio, whole-prompt
   ratio (64 text tokens), whole prompt + IGA ratio, and the paper's published figures beside them.
2. Measured on a runnable synthetic model (``--model``): one build per schedule in
   ``--exports`` (``<model>-<schedule>``; reused when its manifest's schedule and checkpoint
   match, otherwise exported without validation), then in this one process the torch-free
   runtime (onnxruntime backend, ``--threads``) times every schedule, interleaved within each
   repetition (order reversed every other repetition), EOS ignored so every run makes exactly
   ``--new-tokens`` tokens. Prefill (the runtime's ``timings['prefill_total']``) and decode
   ms/token are medians over ``--repeats``; ratios to ``none`` are medians of the ratios of runs
   made side by side, next to each schedule's whole-prompt + IGA FLOPs ratio for the prompt's real
   text-token count. Peak RSS: a fresh subprocess per schedule (``python -m
   transprune.bench.rss``), VmHWM of /proc/self/status.
3. Plots (matplotlib, Agg): prefill/none vs FLOPs ratio with y = x; FLOPs ratio vs final keep
   ratio for the sweep; decode ms/token per schedule; peak RSS per schedule.

``--quick`` (CI): measures only none and paper, 1 repetition, 2 new tokens (each extra tiny export
costs about 40 s on 2 cores). ``--load``: the bench model's builds do not all fit in 23 GiB at
once, so by default each pipeline is loaded, warmed up and timed in turn when they would not fit.

Exit status: 0; 2 for a bad argument or when the ``none`` build fails; 1 when another schedule's
build failed to export or load (the report names it and measures the rest) or when the kept
image-token counts differ from a schedule's keep counts. Timings are never judged here: on a shared machine they are noise,
which is why everything measured is compared as ratios of interleaved runs.

The report itself is ``transprune.bench.report`` (with ``schedules``, ``flops_table``,
``schedule_timing``, ``plots`` and ``report_markdown``); this script is its command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from transprune.bench.output import log
from transprune.bench.report import MODELS, Settings, run, write
from transprune.bench.schedules import MEASURED, QUICK, SCHEDULES
from transprune.errors import TransPruneError

DEFAULT_REPEATS, DEFAULT_NEW_TOKENS = 3, 16
QUICK_REPEATS, QUICK_NEW_TOKENS = 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench", choices=MODELS,
                        help="synthetic model to export and time (default: bench; tiny for CI)")
    parser.add_argument("--repeats", type=int, help=f"timed repetitions after a warm-up (default: "
                                                    f"{DEFAULT_REPEATS}, --quick {QUICK_REPEATS})")
    parser.add_argument("--new-tokens", type=int, help=f"tokens each timed generation makes (default: "
                                                       f"{DEFAULT_NEW_TOKENS}, --quick {QUICK_NEW_TOKENS})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="onnxruntime threads (default: os.cpu_count())")
    parser.add_argument("--exports", type=Path, default=Path("exports"),
                        help="where the builds go, DIR/<model>-<schedule> (default: exports)")
    parser.add_argument("--docs", type=Path, default=Path("docs"),
                        help="where BENCHMARKS.md and the plots go (default: docs)")
    parser.add_argument("--out", type=Path, default=Path("exports") / "report.json",
                        help="JSON of everything (default: exports/report.json)")
    parser.add_argument("--schedules", nargs="+", metavar="NAME",
                        help=f"schedules to measure (none is always added, as the reference); one of "
                             f"{', '.join(SCHEDULES)} (default: {' '.join(MEASURED)}; --quick: {' '.join(QUICK)})")
    parser.add_argument("--skip-rss", action="store_true", help="do not measure peak RSS")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI smoke run: measure {' and '.join(QUICK)} only, {QUICK_REPEATS} repetition, "
                             f"{QUICK_NEW_TOKENS} new tokens (the FLOPs table stays complete)")
    parser.add_argument("--load", choices=("auto", "all", "each"), default="auto",
                        help="all: keep every pipeline loaded; each: load, warm up, time and close a "
                             "schedule's pipeline at each of its turns (for when they do not all fit in "
                             "memory); auto: all if they fit (default)")
    parser.add_argument("--reexport", action="store_true", help="export every build again even if it exists")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds to sleep before each timed run so the previous run's threads are idle "
                             "(default: 0.1)")
    return parser


def resolve_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parses and checks everything that can be checked before any work (exit 2 on a bad argument)."""
    from transprune.presets import model_preset

    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    if args.new_tokens is None:
        args.new_tokens = QUICK_NEW_TOKENS if args.quick else DEFAULT_NEW_TOKENS
    for name in ("repeats", "new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.pause < 0:
        parser.error(f"--pause must be >= 0, got {args.pause}")
    names = args.schedules or (QUICK if args.quick else MEASURED)
    unknown = [n for n in names if n not in SCHEDULES]
    if unknown:
        parser.error(f"unknown schedule(s) {', '.join(unknown)}; choose from {', '.join(SCHEDULES)}")
    if "none" not in names:  # every measured figure is relative to the unpruned build
        log("adding schedule none: measured timings are reported relative to it")
    args.schedules = ["none", *dict.fromkeys(n for n in names if n != "none")]
    facts = model_preset(args.model)
    for name in args.schedules:
        try:
            SCHEDULES[name].check_model(num_layers=facts.text.num_layers, n_image=facts.n_image_tokens)
        except TransPruneError as exc:
            parser.error(f"schedule {name} does not fit --model {args.model}: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = resolve_args(parser, argv)
    started = time.time()
    try:
        report = run(Settings.from_args(args), argv)
    except TransPruneError as exc:  # a user-facing problem (checkpoint, build, disk): one line, exit 2
        print(f"report.py: error: {exc}", file=sys.stderr)
        return 2
    plots = write(report, docs=args.docs, out=args.out, started=started)
    log(f"wrote {args.docs / 'BENCHMARKS.md'}, {len([p for p in plots.values() if p])} plots and {args.out}")
    status = 0
    if report["measured"]["failed"]:
        log(f"not measured: {', '.join(report['measured']['failed'])} (see the report)")
        status = 1
    if not report["checks"]["kept_matches_schedule"]:
        log("kept image tokens do NOT match the schedules' keep counts (see measured.kept)")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
