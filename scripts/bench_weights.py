#!/usr/bin/env python3
"""Weights benchmark: one model with fp32, fp16 and int4 weights (each onnxruntime form), side by side.

    python scripts/bench_weights.py [--model bench] [--repeats 5] [--new-tokens 32] [--threads 2]
        [--agreement-tokens 16] [--block-size B] [--variants fp32,fp16,int4,...] [--exports DIR]
        [--out FILE] [--prompt TEXT] [--reexport] [--skip-rss]

Exports ``--model`` with the paper schedule three times (``--dtype fp32``, ``--dtype fp16``,
``--weights int4 --block-size B``; into ``DIR/<model>-paper-fp32|fp16|int4``, default DIR
``exports``, without validation; B defaults to the exporter's 128 where it divides the input
channels of every weight int4 quantizes, else the largest block that does: 64 for ``bench``,
whose MLP is 2752 wide) and converts the int4 build to explicit ``MatMulNBits`` at
accuracy levels 4 and 0 (``DIR/<model>-paper-int4-nbits-acc4|acc0``), unless a build whose
manifest says it is that build is already there (``--reexport`` redoes them all). Then, on
onnxruntime's CPU provider with ``--threads`` threads, for each variant:

* fp32, fp16; int4 as exported (DequantizeLinear + MatMul, which onnxruntime fuses at load, at its
  default accuracy level 4) and the same build with ``session.qdq_matmulnbits_accuracy_level=0``;
  int4 as MatMulNBits at accuracy level 4 and 0;
* build bytes; session load time (a fresh process per load, median of ``--repeats``); prefill ms and
  decode ms/token (``--new-tokens`` tokens, EOS ignored; one warm-up, then ``--repeats``
  repetitions interleaved across the variants); peak RSS (a fresh process per variant); and,
  against fp32, greedy tokens identical over ``--agreement-tokens`` tokens (and the first), kept
  image-token overlap per prune stage and the first step's max |logit difference|.

stdout: a markdown table (for docs/performance.md); stderr: progress; ``--out`` (default
``exports/bench_weights.json``): the configuration, the machine and its load, every raw sample,
the medians, the paired ratios and the agreement. Not a timed test: compare variants through the
ratios of interleaved runs. ``--model tiny`` makes a quick smoke run.

The benchmark itself is ``transprune.bench.weights``; this script is its command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transprune.bench.engines import DEFAULT_PROMPT
from transprune.bench.output import write_json
from transprune.bench.weights import VARIANTS, Settings, run
from transprune.bench.weights_markdown import markdown


def _variants(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variant {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(VARIANTS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_weights.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench",
                        help="model preset to export and time (default: bench; tiny for a quick smoke run)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed repetitions after one warm-up, and fresh-process loads, per variant (default: 5)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens each timed generation makes (default: 32)")
    parser.add_argument("--agreement-tokens", type=int, default=16,
                        help="greedy tokens compared with fp32's (default: 16)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default: 2)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="int4: input channels per scale (default: 128 where it divides every quantized "
                             "weight's input channels, else the largest block that does)")
    parser.add_argument("--variants", type=_variants, default=tuple(VARIANTS), metavar="NAME,...",
                        help=f"which to measure, from {', '.join(VARIANTS)} (default: all; fp32 always, as the "
                             f"reference)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question about the sample picture")
    parser.add_argument("--exports", type=Path, default=Path("exports"),
                        help="where the builds go: DIR/<model>-paper-<variant> (default: exports)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON report to write (default: exports/bench_weights.json)")
    parser.add_argument("--reexport", action="store_true", help="export and convert every build again")
    parser.add_argument("--skip-rss", action="store_true", help="do not measure peak RSS")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds to sleep between timed runs (default: 0.1)")
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    for name in ("repeats", "new_tokens", "agreement_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (decode ms/token needs a decode step)")
    if args.pause < 0:
        parser.error("--pause must be >= 0")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    out = args.out or Path("exports") / "bench_weights.json"
    report = run(Settings.from_args(args))
    write_json(out, report)
    print(markdown(report))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
