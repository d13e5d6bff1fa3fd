#!/usr/bin/env python3
"""Serving benchmark: ``transprune-serve`` under 1, 4 and 16 concurrent clients, batching off and on.

    python scripts/bench_serve.py [--model bench] [--exports DIR | --build DIR] [--clients 1,4,16]
        [--modes off,on] [--rounds 1] [--min-requests 4] [--new-tokens 16] [--threads N] [--batch-wait-ms 20]
        [--timeout-s 1800] [--out FILE] [--reexport]

* build: ``--model`` with the paper schedule in fp32, reused from ``DIR/<model>-paper-fp32`` (default
  DIR ``exports``) when it is what would be exported today, else exported there without validation
  (``--reexport`` forces it); or ``--build DIR`` as it is;
* servers: for each of ``--modes`` (``off`` = ``--max-batch 1``, ``on`` = ``--max-batch 16``) one
  ``transprune-serve`` subprocess with ``--threads``, all started and warmed up by one request first;
* clients: for each of ``--clients`` c, one cell per mode side by side (order alternating), each
  c threads sending ``--rounds`` streamed greedy requests one after the other, at least
  ``--min-requests`` in all (the sample picture, prompts of four lengths, ``max_tokens`` =
  ``--new-tokens``);
* reported per (mode, c): requests/s and generated tokens/s over the wall time, p50/p95 time to
  first token and p50 latency as the client sees them, and the server's mean batch size.

stdout: a markdown table; stderr: progress; ``--out`` (default ``exports/bench_serve.json``): the
configuration, the machine and its load average before and after, every request's timings and each
cell's figures. Exits 1 if a request failed or a server did not stop cleanly. The servers' logs
go next to ``--out``.

The benchmark itself is ``transprune.bench.serve``; this script is its command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transprune.bench import serve as bench
from transprune.bench.output import log, write_json

DEFAULT_OUT = Path("exports") / "bench_serve.json"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every client count must be >= 1")
    return values


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(text.split(","))
    if not modes or set(modes) - set(bench.MODES):
        raise argparse.ArgumentTypeError(f"{text!r}: modes are {', '.join(bench.MODES)}")
    return modes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_serve.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench", help="model preset to export and serve (default: bench)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--exports", type=Path, default=Path("exports"),
                       help="where the build lives: DIR/<model>-paper-fp32 (default: exports)")
    where.add_argument("--build", type=Path, default=None, help="serve this build as it is (no export, no reuse check)")
    parser.add_argument("--reexport", action="store_true", help="export the build again even if it exists")
    parser.add_argument("--clients", type=_ints, default=(1, 4, 16), help="concurrent clients (default: 1,4,16)")
    parser.add_argument("--modes", type=_modes, default=("off", "on"),
                        help="batching off (--max-batch 1) and/or on (--max-batch 16) (default: off,on)")
    parser.add_argument("--rounds", type=int, default=1, help="requests each client sends in turn (default: 1)")
    parser.add_argument("--min-requests", type=int, default=4,
                        help="requests each cell sends at least: fewer clients send more rounds (default: 4)")
    parser.add_argument("--new-tokens", type=int, default=16, help="max_tokens of every request (default: 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="the server's CPU threads (default: os.cpu_count())")
    parser.add_argument("--batch-wait-ms", type=float, default=20.0, help="the server's --batch-wait-ms (default: 20)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per-request limit (default: 1800)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (default: {DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("rounds", "min_requests", "new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = bench.run(bench.Settings.from_args(args), log_dir=args.out.parent)
    write_json(args.out, report)
    for line in bench.table(report):
        print(line)
    print(f"load average before {report['load_before']}, after {report['load_after']}; JSON: {args.out}")
    for failure in report["failures"]:
        log(f"FAILED: {failure}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
