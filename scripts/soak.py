#!/usr/bin/env python3
"""Soak benchmark: 1,000 generations on one Pipeline with its RSS sampled, then threads sharing one
Pipeline, every answer checked against a single-threaded run.

    python scripts/soak.py [--model tiny] [--generations 1000] [--workers 4] [--per-worker 50]
        [--new-tokens 16] [--threads N] [--exports DIR | --build DIR] [--out FILE] [--reexport]
        [--temperature 0.8] [--rss-every 1] [--progress-every 100] [--max-rss-slope MIB]
        [--join-timeout S] [--skip-threads]

The build is ``--model`` exported with the paper schedule into ``DIR/<model>-paper`` (default DIR
``exports``, without validation) unless a build with the same schedule and checkpoint is already
there (the reuse rule of scripts/bench_runtime.py; ``--reexport`` forces a fresh one), or
``--build DIR`` used as it is. Every Pipeline is ``Pipeline.from_dir(build, backend="onnxruntime",
threads=--threads)`` with EOS ignored, so every answer is exactly ``--new-tokens`` long.

* requests: 4 images (transprune.sample_image's picture at two sizes, seeded noise, seeded shapes)
  x 3 prompts x {greedy, sampled at ``--temperature`` with a seed of its own} = 24;
* reference: each request answered once on a fresh Pipeline of its own, single-threaded (the
  answers must not all be alike, so that a wrong one can be seen; each request's streamed text
  must equal its generated text);
* soak: ONE Pipeline, a warm-up pass over the requests, then ``--generations`` generations cycling
  through them, each compared with the reference; RSS read after every ``--rss-every``-th:
  start (after the warm-up), end, max, and the least-squares slope over the second half in MiB
  per 100 generations ("flat" as a number; ``--max-rss-slope`` makes a larger one a failure);
* threads: ``--workers`` threads sharing ONE Pipeline, each making ``--per-worker`` generations
  of different requests side by side, every third through ``Pipeline.stream``: wrong answers,
  exceptions by type and message, wall time; then the same work with one Pipeline per thread as
  the control.

stdout: a few summary lines; stderr: progress (every ``--progress-every`` generations); ``--out``
(default ``exports/soak.json``, rewritten after every phase so a crash leaves what was done): the
configuration, the machine, the requests, the reference answers, every phase's counts, the first
wrong answers and exceptions in full, the RSS samples and the time of every soak generation.
Exits 1 if any answer was wrong, any exception was raised, a worker hung, the reference answers
were all alike or the RSS slope passed ``--max-rss-slope``; 0 otherwise.

The benchmark itself is ``transprune.bench.soak`` (its requests in ``soak_requests``, its verdict in
``soak_report``); this script is its command line.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
from pathlib import Path

from transprune.bench import soak, soak_report
from transprune.bench.output import log, write_json

DEFAULT_OUT = Path("exports") / "soak.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="model preset to export and run (default: tiny)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--exports", type=Path, default=Path("exports"),
                       help="where the build goes: DIR/<model>-paper (default: exports)")
    where.add_argument("--build", type=Path, default=None, help="use this build as it is (no export, no reuse check)")
    parser.add_argument("--reexport", action="store_true", help="export the build again even if it exists")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="onnxruntime threads of every Pipeline (default: os.cpu_count())")
    parser.add_argument("--generations", type=int, default=1000,
                        help="generations on the one soaked Pipeline, after a warm-up pass (default: 1000)")
    parser.add_argument("--workers", type=int, default=4,
                        help="threads sharing one Pipeline, and Pipelines in the control (default: 4)")
    parser.add_argument("--per-worker", type=int, default=50, help="generations each thread makes (default: 50)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens every answer has (default: 16)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="temperature of the sampled requests (default: 0.8; each has a seed of its own)")
    parser.add_argument("--rss-every", type=int, default=1,
                        help="read the RSS after every N-th generation (default: 1)")
    parser.add_argument("--progress-every", type=int, default=100,
                        help="a progress line on stderr every N generations (default: 100)")
    parser.add_argument("--max-rss-slope", type=float, default=None,
                        help="fail when the RSS grows faster than this many MiB per 100 generations over the "
                             "second half (default: report only)")
    parser.add_argument("--join-timeout", type=float, default=1800.0,
                        help="seconds to wait for the threads of one phase before calling them hung (default: 1800)")
    parser.add_argument("--skip-threads", action="store_true", help="only the reference and the soak")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report to write (default: {DEFAULT_OUT})")
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    for name in ("threads", "generations", "workers", "per_worker", "new_tokens", "rss_every", "progress_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.temperature > 0:
        parser.error("--temperature must be > 0 (the sampled requests sample)")
    if args.join_timeout <= 0:
        parser.error("--join-timeout must be > 0")


def main(argv: list[str] | None = None) -> int:
    if not faulthandler.is_enabled():  # a crash inside onnxruntime still prints where every thread was
        try:
            faulthandler.enable()
        except (AttributeError, ValueError, OSError):  # a stderr without a file descriptor (captured)
            pass
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    report = soak.run(soak.Settings.from_args(args), save=lambda report: write_json(args.out, report))
    for line in soak_report.summary(report):
        print(line)
    print(f"JSON: {args.out}")
    for failure in report["failures"]:
        log(f"FAILED: {failure}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
