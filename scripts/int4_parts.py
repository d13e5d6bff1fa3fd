#!/usr/bin/env python3
"""Which weights should an int4 build quantize? Size against accuracy, measured per choice of parts.

    python scripts/int4_parts.py [--model bench] [--block-size 64] [--schedule paper] [--out FILE]

Each choice (each part alone, then decoder; +lm_head; +projector; +vision) is applied to the PyTorch reference model
(weights replaced by their int4 values dequantized: what an int4 build computes) and its 16 greedy
tokens on the sample image compared with the float model's. stdout: a markdown table (docs/export.md,
"4-bit weights"); stderr: progress; ``--out`` (default exports/int4_parts.json): the numbers.
Logic: ``transprune.bench.int4_parts``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transprune.bench.int4_parts import markdown, measure
from transprune.bench.machine import machine_info
from transprune.bench.output import write_json
from transprune.schedule import preset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="int4_parts.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bench", help="preset or checkpoint directory (default: bench)")
    parser.add_argument("--block-size", type=int, default=64,
                        help="input channels per scale (default 64: bench's FFN width 2752 is not a multiple of 128)")
    parser.add_argument("--schedule", default="paper", help="schedule preset (default: paper)")
    parser.add_argument("--out", type=Path, default=Path("exports/int4_parts.json"))
    args = parser.parse_args(argv)
    results = measure(model=args.model, block_size=args.block_size, schedule=preset(args.schedule))
    results["machine"] = machine_info()
    write_json(args.out, results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
