"""``transprune-reference``: run the PyTorch TransPrune reference on one image and prompt.

The main job on the built-in ``tiny`` model needs no arguments at all; on a real checkpoint it is
the ground truth the exported chain is compared against. Prints the image tokens kept at each
stage and the generated text (``--json`` for one JSON object).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..errors import TransPruneError
from ..schedule import add_schedule_arguments, schedule_from_args
from ._common import run_user_command

PROG = "transprune-reference"
DEFAULT_PROMPT = "What is shown in this picture?"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny",
                        help="tiny (default, built offline), a preset such as llava-1.5-7b, a hub id "
                             "already in the local cache, or a checkpoint directory")
    parser.add_argument("--image", help="image file (default: a built-in synthetic picture)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question about the image")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_schedule_arguments(parser)
    return parser


def open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise TransPruneError(f"image {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise TransPruneError(f"cannot read image {path!r}: {exc}") from None


def run(args) -> dict:
    from ..checkpoints import load_llava
    from ..reference import TransPruneReference, encode_inputs
    from ..sample_image import sample_image
    from ..sampling import Sampler

    if args.max_new_tokens < 1:
        raise TransPruneError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    schedule = schedule_from_args(args)
    sampler = Sampler(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    image = open_image(args.image) if args.image else sample_image()
    loaded = load_llava(args.model, dtype=args.dtype)
    reference = TransPruneReference(loaded.model, schedule)
    inputs = encode_inputs(loaded.processor, [image], [args.prompt])
    started = time.perf_counter()
    out = reference.generate(
        inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
        max_new_tokens=args.max_new_tokens, sampler=sampler,
        eos_token_id=loaded.processor.tokenizer.eos_token_id,
        image_sizes=inputs.get("image_sizes"),  # LLaVA-NeXT: the image's size decides its tiles and tokens
    )
    elapsed = time.perf_counter() - started
    tokens = out.tokens[0]
    return {
        "model": args.model,
        "schedule": schedule.to_dict(),
        "image_tokens": [reference.n_image, *(r.keep for r in out.records)],
        "kept": [r.kept[0].tolist() for r in out.records],
        "input_ids": inputs["input_ids"][0].tolist(),
        "tokens": tokens,
        "text": loaded.processor.tokenizer.decode(tokens, skip_special_tokens=True),
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> None:
        result = run(args)
        if args.json:
            print(json.dumps(result))
            return
        stages = " -> ".join(map(str, result["image_tokens"]))
        print(f"model {result['model']}, schedule {result['schedule']['name']}: image tokens {stages}")
        print(f"generated {len(result['tokens'])} tokens in {result['seconds']:.2f} s: {result['text']!r}")

    return run_user_command(PROG, command)


if __name__ == "__main__":
    sys.exit(main())
