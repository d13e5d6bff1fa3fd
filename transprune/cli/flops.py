"""``transprune-flops``: the prefill FLOPs model (transprune.flops) from the command line.

A thin shim: argument parsing, model lookup, printing. User errors (TransPruneError, including
ScheduleError) become one ``transprune-flops: error: ...`` line on stderr and exit status 2, the
same status argparse uses for its own errors; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import TransPruneError
from ._common import run_user_command
from ..flops import FlopsReport, flops_report
from ..checkpoints import read_config
from ..presets import PRESETS, ModelPreset, preset_from_hf_config
from ..schedule import add_schedule_arguments, schedule_from_args

PROG = "transprune-flops"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Prefill FLOPs of a LLaVA decoder under a TransPrune schedule: the paper's "
                    "image-token figure, the whole-prompt figure and the IGA scoring overhead "
                    "(one multiply-add = one FLOP).",
    )
    parser.add_argument("--model", default="llava-1.5-7b",
                        help=f"model preset ({', '.join(PRESETS)}) or a local checkpoint directory "
                             f"with a LLaVA config.json (default: llava-1.5-7b)")
    add_schedule_arguments(parser)
    parser.add_argument("--text-tokens", type=int, default=64,
                        help="text tokens in the prompt for the whole-prompt figures (default: 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    return parser


def resolve_model(value: str) -> ModelPreset:
    """A preset name first (so a stray folder cannot shadow one), else a checkpoint directory."""
    if value in PRESETS:
        return PRESETS[value]
    path = Path(value)
    if path.is_dir():
        config = read_config(path)  # torch-free: checkpoints imports torch only to load
        return preset_from_hf_config(config, name=value)
    raise TransPruneError(
        f"unknown model {value!r}: not a preset ({', '.join(PRESETS)}) and not a directory; "
        f"pass a preset name or a directory containing a LLaVA config.json"
    )


def _tf(x: float) -> str:
    # Two decimals match the paper (3.82 -> 1.56); tiny synthetic models would print 0.00.
    return f"{x:.2f}" if x >= 0.1 or x == 0 else f"{x:.3g}"


def format_summary(report: FlopsReport) -> str:
    """A few lines for people; TFLOPs rounded here only (JSON keeps full precision)."""
    n_image = report.model.n_image_tokens
    pct = lambda r: f"{100 * r:.1f}%"  # noqa: E731
    lines = [
        f"{report.model.name}, {report.schedule.describe(n_image)}",
        f"paper convention (image tokens): {_tf(report.baseline_tflops)} -> "
        f"{_tf(report.pruned_tflops)} TFLOPs ({pct(report.ratio)})",
        f"whole prompt ({report.text_tokens} text tokens): {_tf(report.whole_baseline_tflops)} -> "
        f"{_tf(report.whole_pruned_tflops)} TFLOPs ({pct(report.whole_ratio)})",
    ]
    if report.schedule.uses_iga and report.schedule.is_pruning:
        base = report.whole_baseline_tflops
        share = report.iga_tflops / base if base else 0.0
        lines.append(f"IGA scoring overhead: {_tf(report.iga_tflops)} TFLOPs "
                     f"({pct(share)} of whole-prompt baseline)")
    else:
        lines.append(f"IGA scoring overhead: none (criterion {report.schedule.criterion}"
                     f"{'' if report.schedule.is_pruning else ', no pruning'})")
    lines.append(f"whole prompt + IGA: {_tf(report.whole_baseline_tflops)} -> "
                 f"{_tf(report.whole_with_iga_tflops)} TFLOPs ({pct(report.whole_with_iga_ratio)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> None:
        model = resolve_model(args.model)
        schedule = schedule_from_args(args)
        report = flops_report(model=model, schedule=schedule, text_tokens=args.text_tokens)
        print(json.dumps(report.to_dict()) if args.json else format_summary(report))

    return run_user_command(PROG, command)


if __name__ == "__main__":
    raise SystemExit(main())
