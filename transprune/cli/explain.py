"""``transprune-explain``: which image patches each prune stage kept, drawn, from an exported build.

Runs the prompt through the build's chain (any runtime backend, no PyTorch needed) and writes a
PNG with the input as the model saw it and one panel per prune stage: the score as a heatmap over
the patches still in play, the pruned ones dimmed, titled with the token counts. A LLaVA-NeXT
build's panels show the base tile above the high-res canvas (drawn at half size). ``--json`` also
writes every stage's per-token scores (combined, TTV and IGA parts) and kept indices.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from ..errors import TransPruneError
from ..files import check_writable, refuse_overlap, write_atomic
from ._common import run_user_command

PROG = "transprune-explain"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", type=Path, help="a directory written by transprune-export")
    parser.add_argument("--image", required=True, help="the image file")
    parser.add_argument("--prompt", required=True, help="the question about the image")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-stage scores here")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length (printed; default 16)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "torch"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the build's files")
    return parser


def check_outputs(args) -> None:
    """Refuses, before the (long) run, outputs that cannot be written or would destroy an input:
    the image, anything inside the build (its manifest, a graph), or the other output."""
    inputs = {"--image": args.image, "the build directory": args.build_dir}
    for what, path in (("--out", args.out), ("--json", args.json)):
        if path is not None:
            check_writable(path, what=what, kind="file")
            refuse_overlap(path, inputs=inputs, what=what)
    if args.json is not None:
        refuse_overlap(args.json, inputs={"--out": args.out}, what="--json")


def run(args) -> dict:
    from transprune.runtime.explain import draw, explain
    from transprune.runtime.pipeline import Pipeline

    if args.out.suffix.lower() != ".png":
        raise TransPruneError(f"--out {args.out} must name a .png file")
    check_outputs(args)
    with Pipeline.from_dir(args.build_dir, backend=args.backend, verify=not args.no_verify,
                           threads=args.threads) as pipeline:
        explanation = explain(pipeline, args.image, args.prompt, max_new_tokens=args.max_new_tokens)
    if not explanation.stages:
        raise TransPruneError(f"{args.build_dir} prunes nothing (schedule 'none'): there is nothing to explain")
    picture = draw(explanation)
    png = io.BytesIO()
    picture.save(png, format="PNG")
    # an interrupted run, or a full disk, leaves no half file
    write_atomic(args.out, png.getvalue(), what="the PNG", remedy="pass --out on another disk")
    report = {"image": str(args.image), "prompt": args.prompt, "png": str(args.out), **explanation.to_dict()}
    if args.json:
        write_atomic(args.json, json.dumps(report) + "\n", what="the scores", remedy="pass --json on another disk")
    counts = " -> ".join(str(n) for n in [explanation.n_image, *(s.keep for s in explanation.stages)])
    print(f"image tokens {counts}; wrote {args.out} ({picture.width}x{picture.height})"
          f"{f' and {args.json}' if args.json else ''}", file=sys.stderr)
    print(explanation.text)
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_user_command(PROG, lambda: run(args) and None)


if __name__ == "__main__":
    sys.exit(main())
