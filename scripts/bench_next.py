#!/usr/bin/env python3
"""LLaVA-NeXT benchmark: prefill and decode of the pruned and unpruned runtime across image sizes.

    python scripts/bench_next.py [--model bench-next] [--repeats 3] [--new-tokens 8] [--threads N]
        [--exports DIR] [--out FILE] [--prompt TEXT] [--reexport] [--quick]

LLaVA-NeXT ("anyres") gives each image its own number of image tokens n, which follows its size and
aspect ratio (576..2928 on LLaVA-NeXT-7B's grid pinpoints), and every prune keeps ``int(n * ratio)``
of them, so the pruning saves a different share of the prefill for each image. This script measures
that share next to the FLOPs model's, for images of four aspect ratios:

* builds: ``--model`` exported twice with the onnxruntime exporter (schedule ``paper`` into
  ``DIR/<model>-paper``, ``none`` into ``DIR/<model>-none``; default DIR ``exports``, without
  validation) unless a build with the same schedule and checkpoint is already there (the reuse rule
  of scripts/bench_runtime.py, ``transprune.bench.builds``; ``--reexport`` forces a fresh one);
* pruned = the runtime on the paper build, unpruned = the runtime on the ``none`` build, both
  ``Pipeline.from_dir(..., backend="onnxruntime", threads=--threads)``, loaded side by side in this
  one process, EOS ignored (the synthetic model is random) so every run makes exactly N tokens;
* images: ``transprune.sample_image.sample_image(width, height)`` at the sizes in
  ``next_image_sizes.IMAGES`` (a 2:1 strip, a 9:16 portrait, a 4:3 photo and a square), one after
  the other. For each image: one warm-up generation of each build (not counted), then
  ``--repeats`` repetitions, each running generate(max_new_tokens=N) of both builds side by
  side, the order reversed every other repetition so that drift on a shared machine falls on both
  alike;
* prefill = the runtime's ``timings['prefill_total']`` (vision tiles, embedding, decoder segments,
  scorers, head); decoder-only = its segments and scorers, what the FLOPs model counts; decode =
  ``timings['decode_per_token']`` (median ms per decode step);
* every run's ``Generation.image_tokens`` must be ``[n, int(n*.875), int(n*.625), int(n*.125)]``
  for the pruned build (the paper schedule's keep counts of that image's own n) and ``[n]`` for
  the unpruned one, with n the same in both; otherwise the script says so on stderr and exits 1
  (after writing the JSON).

Reported per image (medians over the repetitions; ratios are medians of the per-run ratios of runs
made side by side): prefill of each build, pruned/unpruned, the FLOPs ratio of that very
configuration (``transprune.flops``: whole prompt with IGA scoring, the prompt's real text-token
count, the image's own n) and measured/FLOPs; decoder-only pruned/unpruned; decode ms/token of each.

stdout: a markdown table, one row per image; stderr: progress; ``--out`` (default
``exports/bench_next.json``): the configuration, the machine, every raw sample, the medians, the
ratios and the checks. ``--quick`` (tests): ``tiny-next``, 1 repetition, the first and last image,
2 new tokens. Not a timed test: timings on a shared machine are noisy, which is why everything is
compared as ratios of interleaved runs.

The benchmark itself is ``transprune.bench.next_image_sizes``; this script is its command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transprune.bench import next_image_sizes as bench
from transprune.bench.engines import DEFAULT_PROMPT
from transprune.bench.output import fmt, log, write_json

DEFAULTS = {"model": "bench-next", "repeats": 3, "new_tokens": 8}
QUICK = {"model": "tiny-next", "repeats": 1, "new_tokens": 2}
DEFAULT_OUT = Path("exports") / "bench_next.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_next.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model preset to export and time (default: bench-next; tiny-next with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per image, after one warm-up (default: 3; 1 with --quick)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens each generation makes (default: 8; 2 with --quick)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for onnxruntime (default: os.cpu_count())")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question about each picture")
    parser.add_argument("--exports", type=Path, default=Path("exports"),
                        help="where the builds go: DIR/<model>-paper and DIR/<model>-none (default: exports)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"JSON report to write (default: {DEFAULT_OUT})")
    parser.add_argument("--reexport", action="store_true", help="export both builds again even if they exist")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run for tests: tiny-next, 1 repetition, 2 images, 2 new tokens "
                             "(explicit --model/--repeats/--new-tokens still win)")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds to sleep between timed runs (default: 0.1)")
    return parser


def resolve_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("repeats", "new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.pause < 0:
        parser.error("--pause must be >= 0")
    args.images = bench.QUICK_IMAGES if args.quick else bench.IMAGES
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = resolve_args(parser, argv)
    report, failures = bench.run(bench.Settings.from_args(args))
    write_json(args.out, report)
    print(bench.markdown(report))
    print(f"\nJSON: {args.out}")
    for entry in report["images"]:
        log(f"{entry['name']}: n = {entry['image_tokens']}, prefill paper/none "
            f"{fmt(entry['ratios']['prefill_pruned_over_unpruned'], 3)}, FLOPs "
            f"{entry['flops']['whole_with_iga_ratio']:.3f}, "
            f"measured/FLOPs {fmt(entry['measured_over_flops'], 3)}")
    for failure in failures:
        log(f"ERROR: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
