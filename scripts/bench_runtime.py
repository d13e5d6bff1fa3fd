#!/usr/bin/env python3
"""Runtime benchmark: the torch-free runtime, pruned and unpruned, against transformers eager.

    python scripts/bench_runtime.py [--model bench] [--repeats 5] [--new-tokens 32] [--threads N]
        [--exports DIR] [--out FILE] [--prompt TEXT] [--decode-batch 8] [--weights float|int4] [--reexport] [--skip-hf] [--skip-rss]

Exports ``--model`` twice with the onnxruntime exporter (schedule ``paper`` into
``DIR/<model>-paper``, schedule ``none`` into ``DIR/<model>-none``; default DIR ``exports``,
without validation; ``--weights int4``: ``DIR/<model>-paper-int4`` and ``-none-int4``) unless a
build whose manifest has the same schedule, checkpoint and weights is already there
(``--reexport`` forces a fresh export). Then, in this one process:

* pruned = the runtime on the paper build, unpruned = the runtime on the ``none`` build (both
  ``Pipeline.from_dir(..., backend="onnxruntime", threads=--threads)``), hf = transformers'
  ``LlavaForConditionalGeneration`` (fp32, eager attention, ``torch.set_num_threads(--threads)``);
* one warm-up generation of each (not counted), then ``--repeats`` repetitions; each repetition
  runs, interleaved, generate(max_new_tokens=1) of pruned, unpruned and hf (time to first token),
  then generate(max_new_tokens=N) of each (total time; the runtime's own timings give prefill
  and decode per token). The order is reversed every other repetition so that drift on a shared
  machine falls on all three alike;
* then, with ``--decode-batch B`` (default 8), pruned and unpruned again, interleaved, each
  generating N tokens for B copies of the prompt in one batch: decode ms per step at batch B,
  where the KV caches pruning shortens weigh B times more against the weights read once;
* EOS is ignored (the bench model is random), so every run generates exactly N tokens; each
  sample still records how many tokens and decode steps it actually ran.

Reported (medians over the repetitions; ratios are medians of the per-run ratios of runs made
side by side): prefill pruned/unpruned next to the FLOPs ratio of the same configuration (whole
prompt, IGA scoring included, the prompt's real text-token count) and measured/ideal; decode ms
per token; time to first token and total time of all three, HF/pruned; peak RSS of each, measured
in a fresh subprocess per kind (``python -m transprune.bench.rss``) so that
they do not contaminate each other (VmHWM on Linux, where ru_maxrss is inherited from the parent
across fork+exec; ru_maxrss is recorded too). Targets are printed as met / not met; nothing fails
on them.

stdout: a markdown table (for docs/performance.md); stderr: progress; ``--out`` (default
``exports/bench_runtime.json``): the configuration, the machine, every raw sample, the medians,
the ratios and the targets. Not a timed test: timings on a shared machine are noisy, which is why
everything is compared as ratios of interleaved runs.

The benchmark itself is ``transprune.bench.runtime_vs_hf``; this script is its command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transprune.bench.engines import DEFAULT_PROMPT
from transprune.bench.output import fmt, log, write_json
from transprune.bench.runtime_vs_hf import Settings, run
from transprune.bench.runtime_vs_hf_markdown import markdown, met


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_runtime.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench",
                        help="model preset to export and time (default: bench; tiny for a quick smoke run)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions, after one warm-up (default: 5)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens each full generation makes (default: 32)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for onnxruntime and torch (default: os.cpu_count())")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question about the sample picture")
    parser.add_argument("--exports", type=Path, default=Path("exports"),
                        help="where the builds go: DIR/<model>-paper and DIR/<model>-none (default: exports)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON report to write (default: exports/bench_runtime.json)")
    parser.add_argument("--reexport", action="store_true", help="export both builds again even if they exist")
    parser.add_argument("--decode-batch", type=int, default=8,
                        help="also time pruned and unpruned decode at this batch, as a batching server runs it "
                             "(0: skip; default: 8)")
    parser.add_argument("--weights", choices=("float", "int4"), default="float",
                        help="the runtime builds' weights: float (fp32, DIR/<model>-paper and -none) or int4 "
                             "(DIR/<model>-paper-int4 and -none-int4, blocks of 128 or the largest that fits); "
                             "transformers stays fp32 (default: float)")
    parser.add_argument("--skip-hf", action="store_true", help="do not time transformers (nor measure its RSS)")
    parser.add_argument("--skip-rss", action="store_true", help="do not measure peak RSS")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds to sleep between timed runs, so one engine's spinning threads are idle "
                             "before the next starts (default: 0.1)")
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    for name in ("repeats", "new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.decode_batch < 0:
        parser.error("--decode-batch must be >= 0 (0 skips the batched decode)")
    if args.pause < 0:
        parser.error("--pause must be >= 0")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    out = args.out or Path("exports") / "bench_runtime.json"
    report = run(Settings.from_args(args))
    write_json(out, report)
    print(markdown(report))
    print(f"\nJSON: {out}")
    for name, target in report["targets"].items():
        log(f"target {name}: {target['rule']}: value {fmt(target['value'], 3)} -> {met(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
