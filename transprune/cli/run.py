"""``transprune-run``: answer a prompt about an image with an exported build, without PyTorch.

Streams the answer to stdout as it is generated and prints what pruning kept and how long each
part took to stderr; ``--json`` prints one JSON object instead (for several image/prompt pairs:
``{"batch": [one object per pair], "timings": ...}``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import TransPruneError
from ._common import run_user_command

PROG = "transprune-run"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", type=Path, help="a directory written by transprune-export")
    parser.add_argument("--image", action="append", required=True,
                        help="image file; repeat with --prompt for a batch of pairs")
    parser.add_argument("--prompt", action="append", required=True,
                        help="the question about the image (one per --image, or one for all)")
    parser.add_argument("--raw-prompt", action="store_true",
                        help="use the prompt text as is, without the chat template; it must hold the image "
                             "slot (e.g. <image>) where the image goes")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (for reproducible sampling)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "torch"])
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                        help="onnxruntime execution provider (cuda and tensorrt need onnxruntime-gpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--int4-accuracy-level", type=int, default=None, choices=[0, 4],
                        help="int4 builds on onnxruntime: 0 multiplies in float (exactly the dequantized weights, "
                             "as validation checks), 4 rounds activations to int8 per block (onnxruntime's default, "
                             "the fastest on CPU)")
    parser.add_argument("--engines", type=Path, default=None,
                        help="tensorrt backend: the engine directory transprune-build wrote (default: the one "
                             "trt-* directory inside the build)")
    parser.add_argument("--checkpoint", default=None,
                        help="torch backend: the checkpoint the build was exported from, if it moved")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the sha256 check of the build's files (faster start on large builds)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _pairs(args) -> tuple[list[str], list[str]]:
    images, prompts = args.image, args.prompt
    if len(prompts) == 1 and len(images) > 1:
        prompts = prompts * len(images)
    if len(prompts) != len(images):
        raise TransPruneError(f"{len(images)} --image and {len(prompts)} --prompt: give one prompt per image, or "
                              f"one prompt for all")
    return images, prompts


def _backend_options(args) -> dict:
    if args.threads is not None and args.threads < 1:
        raise TransPruneError(f"--threads {args.threads} must be >= 1")
    options = {"threads": args.threads}
    if args.backend == "onnxruntime":
        options["provider"] = args.provider
        if args.int4_accuracy_level is not None:
            options["int4_accuracy_level"] = args.int4_accuracy_level
    elif args.provider != "cpu" or args.int4_accuracy_level is not None:
        flag = "--provider" if args.provider != "cpu" else "--int4-accuracy-level"
        raise TransPruneError(f"{flag} applies to the onnxruntime backend only, not {args.backend}")
    if args.checkpoint is not None:
        if args.backend != "torch":
            raise TransPruneError("--checkpoint applies to the torch backend only")
        options["checkpoint"] = args.checkpoint
    if args.engines is not None:
        if args.backend != "tensorrt":
            raise TransPruneError("--engines applies to the tensorrt backend only; add --backend tensorrt")
        options["engines"] = args.engines
    return options


def run(args, out=None, err=None) -> dict:
    from transprune.runtime.pipeline import Pipeline

    out, err = out or sys.stdout, err or sys.stderr
    images, prompts = _pairs(args)
    streaming = not args.json and len(images) == 1

    def show(sample: int, piece: str) -> None:
        out.write(piece)
        out.flush()

    with Pipeline.from_dir(args.build_dir, backend=args.backend, verify=not args.no_verify,
                           **_backend_options(args)) as pipeline:
        results = pipeline.generate_batch(images, prompts, max_new_tokens=args.max_new_tokens,
                                          temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                          raw_prompt=args.raw_prompt, on_text=show if streaming else None)
    stages = results[0].image_tokens
    timings = results[0].timings
    if args.json:
        if len(results) == 1:
            document = results[0].to_dict()
        else:
            document = {"batch": [{k: v for k, v in r.to_dict().items() if k != "timings"} for r in results],
                        "timings": timings}
        document.update(backend=args.backend)
        print(json.dumps(document), file=out)
        return document
    if streaming:
        out.write("\n")
    else:
        for number, result in enumerate(results):
            print(f"[{number}] {result.text}", file=out)
    decode = f", decode {timings['decode_per_token']:.1f} ms/token" if timings["decode_per_token"] else ""
    print(f"{args.backend}: image tokens {' -> '.join(map(str, stages))}; prefill {timings['prefill_total']:.0f} ms"
          f"{decode}; {sum(len(r.tokens) for r in results)} tokens", file=err)
    return {"results": results}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_user_command(PROG, lambda: run(args) and None)


if __name__ == "__main__":
    sys.exit(main())
