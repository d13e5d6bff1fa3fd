"""Device memory a model needs on each TensorRT target, per precision, with and without pruning.

The same estimate ``transprune-build`` checks before it builds (weights at the build precision,
KV caches of every layer at the largest decode profile, the builder workspace, the runtime's
overhead), computed from the model preset alone, so it covers models too big to export here.
Prints a markdown table (the README's "Deploy on Jetson" table) and writes JSON. The computation
is ``transprune.export.tensorrt.memory.memory_rows``; this script parses, prints and writes.

    python scripts/trt_memory_table.py [--model llava-1.5-7b] [--text-tokens 128] [--new-tokens 512]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transprune.export.tensorrt.memory import GIB, memory_rows, preset_parameters
from transprune.presets import model_preset


def markdown(rows: list[dict], schedules: tuple[str, ...]) -> str:
    head = "| target | memory | precision | " + " | ".join(
        f"{s}: total (KV cache) GiB" for s in schedules) + " | fits |"
    lines = [head, "|" + "---|" * (4 + len(schedules))]
    for row in rows:
        cells = [f"{row[s]['total_gib']:.1f} ({row[s]['kv_cache_gib']:.2f})" for s in schedules]
        fits = "yes" if all(row[s]["fits"] for s in schedules) else "no: 16-bit weights alone exceed it" if \
            row[schedules[0]]["weights_gib"] > row[schedules[0]]["budget_gib"] else "no"
        lines.append(f"| {row['target']} | {row['memory_gib']:g} GB | {row['precision']} | {' | '.join(cells)} "
                     f"| {fits} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("exports/trt_memory.json"))
    args = parser.parse_args(argv)
    schedules = ("paper", "none")
    rows = memory_rows(model=args.model, text_tokens=args.text_tokens, new_tokens=args.new_tokens,
                       batch=args.batch, schedules=schedules)
    print(f"{args.model}, batch {args.batch}, {args.text_tokens} text + {args.new_tokens} new tokens, "
          f"weights {preset_parameters(model_preset(args.model)) * 2 / GIB:.2f} GiB at 16 bits")
    print(markdown(rows, schedules))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "batch": args.batch, "text_tokens": args.text_tokens,
                                    "new_tokens": args.new_tokens, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
