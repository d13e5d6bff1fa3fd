#!/usr/bin/env python3
"""KV cache benchmark: a segment's decode step with its cache written in place against a host that
copies every cache every step, at several cache lengths, side by side.

    python scripts/bench_kv_cache.py BUILD_DIR [--segment segment_0] [--cached 64,1024] [--steps 16]
        [--repeats 5] [--threads 2] [--out FILE]

Runs the segment graph of ``BUILD_DIR`` (default: its first segment) on onnxruntime's CPU provider:
a prefill of N random positions, then ``--steps`` one-token decode steps, for each N of
``--cached``; the two hosts interleaved, ``--repeats`` times after a warm-up. stdout: a markdown
table; stderr: progress; ``--out`` (default ``exports/bench_kv_cache.json``): every sample, the
medians, the paired ratios, the KV bytes each host holds, and the machine's load. Not a timed test.

The benchmark itself is ``transprune.bench.kv_cache``; this script is its command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transprune.bench.kv_cache import Settings, markdown, run
from transprune.bench.output import write_json
from transprune.errors import TransPruneError


def _lengths(text: str) -> tuple[int, ...]:
    try:
        lengths = tuple(int(n) for n in text.split(",") if n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cached {text!r}: give positive integers separated by commas") from None
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"--cached {text!r}: give positive integers separated by commas")
    return lengths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_kv_cache.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", type=Path, help="a build written by transprune-export")
    parser.add_argument("--segment", default=None, help="which segment graph (default: the first)")
    parser.add_argument("--cached", type=_lengths, default=(64, 1024), help="cache lengths, e.g. 64,1024")
    parser.add_argument("--steps", type=int, default=16, help="decode steps per run (default: 16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after a warm-up (default: 5)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default: 2)")
    parser.add_argument("--out", type=Path, default=Path("exports") / "bench_kv_cache.json")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    try:
        report = run(Settings(build=args.build_dir, segment=args.segment, cached=args.cached, steps=args.steps,
                              repeats=args.repeats, threads=args.threads))
    except (ValueError, TransPruneError) as exc:  # a build it cannot run, lengths the model cannot take
        parser.error(str(exc))
    write_json(args.out, report)
    print(markdown(report))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
