"""``transprune-export``: a LLaVA checkpoint -> a build directory of ONNX graphs and a manifest.

    transprune-export [--model tiny] [--out DIR] [--schedule paper] [--dtype fp32] ...
    transprune-export --check-trt DIR      re-check an existing build's graphs for TensorRT
    transprune-export --matmulnbits-from DIR [--out DIR2] [--int4-accuracy-level 4]
                                           an int4 build's copy in onnxruntime's MatMulNBits form

A thin shim over ``transprune.export.exporter.export_model``: parsing, a progress bar on stderr,
and a summary table at the end. User errors are one line on stderr and exit status 2; a build
that fails the TensorRT check under ``--check-trt`` exits with status 1. The check parses every
graph with the real ONNX parser of TensorRT or TensorRT-RTX where one imports, and always runs
the operator lint (``transprune.export.tensorrt.check``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import TransPruneError
from ..schedule import add_schedule_arguments, schedule_from_args
from ._common import run_user_command

PROG = "transprune-export"
LINT_FAILED_EXIT = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny",
                        help="tiny (default, built offline), llava-1.5-7b / llava-1.5-13b (from the local "
                             "Hugging Face cache), a hub id already in that cache, or a checkpoint directory")
    parser.add_argument("--out", type=Path,
                        help="build directory to write (default: exports/<model>-<schedule>)")
    add_schedule_arguments(parser)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"],
                        help="weights and activations of the graphs (default: fp32)")
    parser.add_argument("--weights", default="float", choices=["float", "int4"],
                        help="float (default): weights in the --dtype; int4: decoder and lm_head weights in 4 bits "
                             "(symmetric, one scale per block of input channels) behind a standard "
                             "DequantizeLinear that onnxruntime, TensorRT and TensorRT-RTX all take")
    parser.add_argument("--block-size", type=int, default=None,
                        help="--weights int4: input channels per scale, 16..256, a power of two (default: 128)")
    parser.add_argument("--int4-parts", type=lambda text: tuple(p for p in text.split(",") if p), default=None,
                        metavar="PART,...",
                        help="--weights int4: which weights to quantize, from decoder, lm_head, vision, projector "
                             "(default: decoder,lm_head; docs/export.md \"4-bit weights\" has the measurements)")
    parser.add_argument("--opset", type=int, default=18,
                        help="ONNX opset, 18..20 (default: 18); graphs holding int4 weights import 21, the first "
                             "opset with blocked int4 DequantizeLinear")
    parser.add_argument("--max-text-tokens", type=int, default=None,
                        help="longest text prompt (without image tokens) the build promises to accept; "
                             "recorded for the runtime and TensorRT profiles (default: 1024)")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip the comparison with the PyTorch reference (it loads the whole model)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing build directory: only a transprune build (any schema) holding "
                             "nothing but its files and transprune-build engine directories; the old build stays "
                             "in place until the new one is complete")
    parser.add_argument("--check-trt", type=Path, metavar="DIR",
                        help="only re-check the build in DIR for TensorRT (the real parser of TensorRT or "
                             "TensorRT-RTX where one imports, and the operator lint) and print the report")
    parser.add_argument("--matmulnbits-from", type=Path, metavar="DIR",
                        help="convert the --weights int4 build in DIR into onnxruntime's com.microsoft.MatMulNBits "
                             "form, written to --out (default: DIR-matmulnbits): the same int4 values repacked, "
                             "no second quantization; it loads faster on onnxruntime and runs nowhere else "
                             "(TensorRT builds refuse it)")
    parser.add_argument("--int4-accuracy-level", type=int, default=None, choices=[0, 1, 2, 3, 4],
                        help="--matmulnbits-from: the MatMulNBits accuracy_level, how onnxruntime multiplies "
                             "(0/1 float, 2 fp16, 3 bf16, 4 int8 activations per block: the default, the fastest "
                             "on CPU)")
    parser.add_argument("--json", action="store_true", help="print the manifest (or the check's report) as JSON")
    return parser


class ProgressBar:
    """``[#####.....] 4/11 segment_0 (layers 1-7)  12 s`` on stderr; one line per step when not a TTY."""

    def __init__(self, stream=None, width: int = 24) -> None:
        self.stream, self.width = stream or sys.stderr, width  # looked up now: tests swap sys.stderr
        self.started = time.perf_counter()
        self.tty = self.stream.isatty()

    def __call__(self, step: int, steps: int, label: str) -> None:
        done = int(self.width * (step - 1) / steps)
        line = f"[{'#' * done}{'.' * (self.width - done)}] {step}/{steps} {label}  {self.elapsed():.0f} s"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def summary_table(manifest: dict) -> str:
    """One row per graph: what it runs, its size, its worst validation error, its lint status."""
    graphs_report = (manifest.get("validation") or {}).get("graphs", {})
    rows = [("graph", "runs", "size", "max error", "TensorRT parser", "TensorRT lint")]
    for graph in manifest["graphs"]:
        if graph["kind"] == "segment":
            runs = f"layers {graph['layers'][0]}-{graph['layers'][1]}"
        elif graph["kind"] == "scorer":
            attrs = graph["attrs"]
            keep = attrs["keep"] if attrs["keep"] is not None else f"{attrs['keep_ratio']:g}x"
            runs = f"keep {keep} after layer {attrs['after_layer']}"
        else:
            runs = graph["kind"]
        errors = graphs_report.get(graph["name"], {}).get("max_error")
        error = f"{max(errors.values()):.1e}" if errors else "-"
        lint = graph["trt_lint"]
        status = "ok" if lint["ok"] else f"{len(lint['errors'])} error(s)"
        if lint["warnings"]:
            status += f", {len(lint['warnings'])} warning(s)"
        parses = graph.get("trt_parse") or []
        parsed = ("-" if not parses else "ok" if all(p["ok"] for p in parses) else
                  f"{sum(len(p['rejected']) for p in parses)} node(s) rejected")
        rows.append((graph["name"], runs, _size(graph["bytes"]), error, parsed, status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


NO_PARSER_NOTE = ("TensorRT parser: - because neither TensorRT nor TensorRT-RTX is installed here, so only the "
                  "operator lint ran; pip install 'transprune[rtx]' adds TensorRT-RTX's parser (no GPU needed), "
                  "then transprune-export --check-trt BUILD")


def _report(manifest: dict, out: Path, seconds: float) -> str:
    lines = [summary_table(manifest)]
    if not any(graph.get("trt_parse") for graph in manifest["graphs"]):  # no real parser imported
        lines.append(NO_PARSER_NOTE)
    lines.append("")
    total = sum(g["bytes"] for g in manifest["graphs"])
    image_tokens, keep = manifest["limits"]["image_tokens"], manifest["keep_counts"]
    if isinstance(keep, dict):  # anyres: each image keeps its share, between these extremes
        stages = " / ".join(" -> ".join(map(str, [image_tokens[b], *keep[b]])) for b in ("min", "max")) + \
            " (fewest / most per image)"
    else:
        stages = " -> ".join(str(n) for n in [image_tokens["min"], *keep])
    weights = manifest.get("weights") or {}
    stored = (f"{manifest['dtype']}, int4 weights ({'+'.join(weights['parts'])}, blocks of {weights['block_size']})"
              if weights.get("format") == "int4" else manifest["dtype"])
    opset = f"opset {manifest['opset']}" + (f", {weights['dequantize_opset']} where int4"
                                            if weights.get("format") == "int4" else "")
    lines.append(f"{len(manifest['graphs'])} graphs, {_size(total)} ({stored}, {opset}) "
                 f"in {out} after {seconds:.0f} s")
    flops = manifest["flops"]
    lines.append(f"schedule {manifest['schedule']['name']}: image tokens {stages}; prefill FLOPs "
                 f"{flops['pruned_tflops']:.3g}/{flops['baseline_tflops']:.3g} TFLOPs = {flops['ratio']:.1%} "
                 f"(paper convention), whole prompt with IGA {flops['whole_prompt_with_iga']['ratio']:.1%}")
    chain = (manifest.get("validation") or {}).get("chain")
    if chain:
        if "images" in chain:
            lines.append("chain checked on " + ", ".join(f"{w}x{h} ({tokens[0]} image tokens)" for (h, w), tokens in
                         ((c["image_size"], c["image_tokens"]) for c in chain["images"])))
        verdict = ("kept indices and 16 greedy tokens identical to the PyTorch reference" if chain["exact"] else
                   f"{chain['tokens_identical']}/16 tokens identical, kept overlap "
                   f"{min(chain['kept_overlap']):.1%} (fp16)")
        accuracy = manifest["validation"].get("int4_accuracy")
        if accuracy:
            verdict = verdict.replace("the PyTorch reference", "the PyTorch reference with the same int4 weights")
        lines.append(f"validation: every graph at 3 or 4 sizes within tolerance; chain: {verdict}; max logit error "
                     f"{chain['max_logit_error']:.1e}")
        if accuracy:
            lines.extend(_int4_accuracy_lines(accuracy))
    else:
        lines.append("validation: skipped (--no-validate)")
    return "\n".join(lines)


def _int4_accuracy_lines(accuracy: dict) -> list[str]:
    lines = []
    for label, key in (("float math", "float_math"), ("onnxruntime's default int8 activations", "onnxruntime_default")):
        first = accuracy[key][0]  # the first chain image (LLaVA-NeXT checks several)
        overlap = " / ".join(f"{o:.0%}" for o in first["kept_overlap"])
        lines.append(f"int4 against the float model ({label}): {first['tokens_identical']}/{first['tokens']} greedy "
                     f"tokens identical (first token {'identical' if first['first_token_identical'] else 'differs'}), "
                     f"kept-token overlap {overlap}, max logit error {first['max_logit_error']:.3g}")
    lines.append("  (random-weight test models lose far more to int4 than trained checkpoints do; on a real "
                 "checkpoint, read these numbers and check answers on your own images)")
    return lines


def check_trt(build_dir: Path, *, as_json: bool) -> int:
    from ..export.tensorrt.check import check_graph, lint_entry, summary
    from ..runtime.manifest import load_manifest, resolve_inside

    manifest = load_manifest(build_dir)
    checks = []
    for graph in manifest["graphs"]:
        checks.append(check_graph(resolve_inside(build_dir, graph["file"]), name=graph["name"]))
        if not as_json:
            _print_check(checks[-1])
    verdict = summary(checks)
    if as_json:
        print(json.dumps({c.graph: {"ok": c.ok, "parsers": [p.to_dict() for p in c.parsers], "lint": lint_entry(c.lint)}
                          for c in checks}, indent=1))
    else:
        failed = sum(not c.ok for c in checks)
        print(f"{len(checks) - failed}/{len(checks)} graphs pass: {' and '.join(verdict['checkers'])}")
        if len(verdict["checkers"]) == 1:
            print("note: no TensorRT module imports here, so no real parser ran; pip install tensorrt-rtx-cu12 "
                  "(no GPU needed) for one")
    return 0 if verdict["ok"] else LINT_FAILED_EXIT


def _print_check(check) -> None:
    print(f"{check.graph}: {'ok' if check.ok else 'FAILS'}", flush=True)
    for parser in check.parsers:
        for line in parser.rejected:
            print(f"  {parser.checker} rejects {line}")
    for issue in check.lint.errors:
        print(f"  lint error: {issue.message}")
    for issue in check.lint.warnings:
        print(f"  lint warning: {issue.message}")


def convert_to_matmulnbits(args) -> int:
    from ..export.int4_matmulnbits import DEFAULT_ACCURACY_LEVEL, to_matmulnbits

    source = args.matmulnbits_from
    out = args.out or source.with_name(f"{source.name}-matmulnbits")
    level = DEFAULT_ACCURACY_LEVEL if args.int4_accuracy_level is None else args.int4_accuracy_level
    started = time.perf_counter()
    manifest = to_matmulnbits(source, out, accuracy_level=level, force=args.force)
    if args.json:
        print(json.dumps(manifest, indent=1))
        return 0
    converted = [g for g in manifest["graphs"] if g.get("matmulnbits")]
    total = sum(g["bytes"] for g in manifest["graphs"])
    print(f"{sum(g['matmulnbits'] for g in converted)} int4 MatMuls in {len(converted)} graphs "
          f"({', '.join(g['name'] for g in converted)}) now MatMulNBits at accuracy level {level}: "
          f"{len(manifest['graphs'])} graphs, {_size(total)} in {out} after {time.perf_counter() - started:.0f} s")
    print("runs on onnxruntime only (a contrib op): build TensorRT engines from the source build")
    return 0


def run(args) -> int:
    from ..export.exporter import DEFAULT_MAX_TEXT_TOKENS, export_model

    if args.check_trt is not None:
        return check_trt(args.check_trt, as_json=args.json)
    if args.matmulnbits_from is not None:
        return convert_to_matmulnbits(args)
    if args.int4_accuracy_level is not None:
        raise TransPruneError("--int4-accuracy-level applies to --matmulnbits-from only (an exported QDQ build "
                              "takes the level at run time: transprune-run --int4-accuracy-level)")
    schedule = schedule_from_args(args)
    out = args.out or Path("exports") / f"{Path(args.model).name}-{schedule.name}"
    bar = ProgressBar()
    try:
        manifest = export_model(
            model=args.model, out=out, schedule=schedule, dtype=args.dtype, opset=args.opset,
            weight_format=args.weights, block_size=args.block_size, int4_parts=args.int4_parts,
            max_text_tokens=args.max_text_tokens if args.max_text_tokens is not None else DEFAULT_MAX_TEXT_TOKENS,
            force=args.force, validate=not args.no_validate, progress=bar,
        )
    finally:
        bar.finish()
    print(json.dumps(manifest, indent=1) if args.json else _report(manifest, out, bar.elapsed()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check_trt is not None and args.out is not None:
        print(f"{PROG}: error: --check-trt inspects an existing build; it takes no --out", file=sys.stderr)
        return 2
    if args.check_trt is not None and args.matmulnbits_from is not None:
        print(f"{PROG}: error: --check-trt and --matmulnbits-from are two commands; give one", file=sys.stderr)
        return 2
    return run_user_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
