#!/usr/bin/env python
"""Write a random-weight fp16 LLaVA checkpoint with a real model's configuration, streaming.

    python scripts/make_synthetic_checkpoint.py --out DIR [--model llava-1.5-7b] [--seed 0]
                                                [--shard-gb 2] [--force]

What for: measuring the exporter (peak RSS, wall time) on a 7B-sized model on a machine with
no hub access. The result is a llava-hf checkpoint directory like the one
``transprune.synthetic.build_synthetic_checkpoint`` writes for ``tiny``: config.json,
generation_config.json, sharded safetensors + model.safetensors.index.json, tokenizer and
processor files. It loads with ``LlavaForConditionalGeneration.from_pretrained`` and with
``transprune.export.weights.CheckpointWeights``. Nothing bigger than a few chunk buffers is ever
in memory, and the same arguments give byte-identical files (with the same torch version).

The checkpoint is made by ``transprune.synthetic_streamed`` (names, shapes and values; why it does
not reuse the synthetic builder) and ``transprune.streamed_safetensors`` (the shards, written by
hand); this script is their command line.

Exit status: 0 done, 1 error (e.g. not enough free disk), 2 usage error (e.g. --out exists
without --force), 130 interrupted. Nothing is left behind on failure: everything is written
into a temporary sibling of --out, renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from transprune.errors import TransPruneError
from transprune.streamed_safetensors import GB
from transprune.synthetic_streamed import MODELS, OutputRefused, prepare_checkpoint, write_checkpoint


def _parse_args(argv):
    p = argparse.ArgumentParser(
        description="Write a random-weight fp16 LLaVA checkpoint (llava-hf layout) with a real "
                    "model's configuration, without holding the weights in memory.",
    )
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory to create")
    p.add_argument("--model", default="llava-1.5-7b", choices=MODELS,
                   help="configuration to copy (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and tokenizer (default: 0)")
    p.add_argument("--shard-gb", type=float, default=2.0,
                   help="maximum safetensors shard size in GB of 1e9 bytes (default: 2)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (only a checkpoint directory or an empty one)")
    # Test hooks, so tests write tens of MB instead of 14 GB: fewer text and vision layers, a
    # narrower language model (rounded down to whole attention heads of the preset's size).
    p.add_argument("--layers", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--hidden-size", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.shard_gb <= 0:
        p.error("--shard-gb must be positive")
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be >= 1")
    if args.hidden_size is not None and args.hidden_size < 1:
        p.error("--hidden-size must be >= 1")
    return args


def _fail(message: str, code: int) -> int:
    print(f"make_synthetic_checkpoint: error: {message}", file=sys.stderr)
    return code


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main(argv=None) -> int:
    args = _parse_args(argv)
    started = time.monotonic()
    try:
        plan = prepare_checkpoint(out=args.out, model=args.model, force=args.force, layers=args.layers,
                                  hidden_size=args.hidden_size)
    except OutputRefused as exc:
        return _fail(str(exc), 2)
    except TransPruneError as exc:
        return _fail(str(exc), 1)

    total, n_params = plan.total_bytes, plan.n_params
    print(f"writing {plan.label}: "
          f"{len(plan.tensors)} tensors, {n_params / 1e9:.2f}e9 params, {total / GB:.2f} GB fp16 "
          f"-> {plan.out}", file=sys.stderr)
    # SIGTERM (e.g. a job timeout) should clean up too; handlers only exist on the main thread.
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        write_checkpoint(plan=plan, seed=args.seed, shard_bytes=int(args.shard_gb * GB))
    except KeyboardInterrupt:  # write_checkpoint has removed the partial checkpoint
        print("\ninterrupted; removed the partial checkpoint", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, old_term)

    wall = time.monotonic() - started
    print(f"checkpoint: {plan.out}")
    print(f"size:       {total / GB:.2f} GB ({total} bytes of weights)")
    print(f"params:     {n_params} ({n_params / 1e9:.3f}e9)")
    print(f"wall time:  {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
