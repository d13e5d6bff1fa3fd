"""Device memory a model needs on each TensorRT target, per precision, with and without pruning.

The same estimate ``transprune-build`` checks before it builds (weights at the build precision,
KV caches of every layer at the largest decode profile, the builder workspace, the runtime's
overhead), computed from the model preset alone, so it covers models too big to export here.
Each target gets its 16-bit rows and an int4 row (``--weights int4`` on an fp16 export: decoder
and lm_head in 4 bits, blocks of ``--block-size``). Prints a markdown table (docs/tensorrt.md's
"Memory" table; precisions with the same figures share a row) and writes JSON. The computation
is ``transprune.export.tensorrt.memory.memory_rows``; this script parses, prints and writes.

    python scripts/trt_memory_table.py [--model llava-1.5-7b] [--text-tokens 128] [--new-tokens 512]
                                       [--block-size 128]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transprune.export.int4 import DEFAULT_BLOCK_SIZE
from transprune.export.tensorrt.memory import GIB, int4_weight_bytes, memory_rows, preset_parameters
from transprune.presets import model_preset


def _fits(row: dict, schedules: tuple[str, ...]) -> str:
    if all(row[s]["fits"] for s in schedules):
        return "yes"
    first = row[schedules[0]]
    if first["weights_gib"] > first["budget_gib"]:
        return f"no: {row['weights']} weights alone exceed it"
    if first["weights_gib"] + first["activations_gib"] + first["overhead_gib"] > first["budget_gib"]:
        return f"no: {row['weights']} weights, workspace and runtime alone exceed it"
    return "no" if not any(row[s]["fits"] for s in schedules) else \
        "with " + ", ".join(s for s in schedules if row[s]["fits"]) + " only"


def markdown(rows: list[dict], schedules: tuple[str, ...]) -> str:
    head = "| target | memory | weights | precision | " + " | ".join(
        f"{s}: total (KV cache) GiB" for s in schedules) + " | fits |"
    lines = [head, "|" + "---|" * (5 + len(schedules))]
    merged: list[tuple[dict, list[str]]] = []  # precisions of one target and weights with the same figures
    for row in rows:
        last = merged[-1][0] if merged else None
        if last is not None and all(last[k] == row[k] for k in ("target", "weights", *schedules)):
            merged[-1][1].append(row["precision"])
        else:
            merged.append((row, [row["precision"]]))
    for row, precisions in merged:
        cells = [f"{row[s]['total_gib']:.1f} ({row[s]['kv_cache_gib']:.2f})" for s in schedules]
        lines.append(f"| {row['target']} | {row['memory_gib']:g} GB | {row['weights']} | {'/'.join(precisions)} | "
                     f"{' | '.join(cells)} | {_fits(row, schedules)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                        help=f"input channels per scale of the int4 rows (default {DEFAULT_BLOCK_SIZE})")
    parser.add_argument("--out", type=Path, default=Path("exports/trt_memory.json"))
    args = parser.parse_args(argv)
    schedules = ("paper", "none")
    rows = memory_rows(model=args.model, text_tokens=args.text_tokens, new_tokens=args.new_tokens,
                       batch=args.batch, schedules=schedules, block_size=args.block_size)
    spec = model_preset(args.model)
    print(f"{args.model}, batch {args.batch}, {args.text_tokens} text + {args.new_tokens} new tokens, "
          f"weights {preset_parameters(spec) * 2 / GIB:.2f} GiB at 16 bits, "
          f"{int4_weight_bytes(spec, block_size=args.block_size) / GIB:.2f} GiB with int4 weights "
          f"(blocks of {args.block_size})")
    print(markdown(rows, schedules))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "batch": args.batch, "text_tokens": args.text_tokens,
                                    "new_tokens": args.new_tokens, "int4_block_size": args.block_size,
                                    "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
