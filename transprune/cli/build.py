"""``transprune-build``: TensorRT engines for every graph of an exported build, for one target GPU.

Writes, into ``--out`` (default: ``BUILD_DIR/trt-<target>``), a build plan (``plan.json``: the
profiles of every engine, the precision, the memory estimate) and ``build_engines.sh`` (the same
build as trtexec commands for a Jetson; for ``--target rtx``, as a transprune command), then builds
the engines where the target's module imports: TensorRT on the target GPU itself, or TensorRT-RTX
(``--target rtx``) on any machine, no GPU needed. Each engine gets its metadata beside it. Without
the module, or with ``--plan-only``, it stops after the plan and the script.
The work is ``transprune.export.tensorrt.workflow``; this module parses, calls and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import TransPruneError
from ._common import run_user_command

PROG = "transprune-build"


def build_parser() -> argparse.ArgumentParser:
    from transprune.export.tensorrt.targets import PRECISIONS, TARGETS

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", type=Path, help="a directory written by transprune-export")
    parser.add_argument("--target", required=True, choices=list(TARGETS), help="the GPU the engines are for")
    parser.add_argument("--precision", default=None, choices=list(PRECISIONS),
                        help="TensorRT targets: fp16 (default), bf16 or fp8 where the GPU has them. rtx: the "
                             "export's dtype, always (TensorRT-RTX networks are strongly typed)")
    parser.add_argument("--max-batch", type=int, default=1, help="largest batch the engines serve (default 1)")
    parser.add_argument("--max-text-tokens", type=int, default=None,
                        help="longest prompt in text tokens (default: the build's exported limit)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest answer (default: every position the longest prompt leaves)")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="device memory if it differs from the target's preset (e.g. 32 for a 32 GB AGX Orin)")
    parser.add_argument("--optimization-level", type=int, default=None, metavar="N",
                        help="TensorRT's builder optimisation level, 0 (fastest build: the first kernel that works, "
                             "none compiled) to 5 (longest search); default: the builder's own, 3. Lower levels "
                             "build sooner and may run slower: for checking that a build builds")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="TensorRT timing cache to read and extend (default: timing.cache in --out)")
    parser.add_argument("--out", type=Path, default=None, help="engine directory (default: BUILD_DIR/trt-TARGET)")
    parser.add_argument("--plan-only", action="store_true",
                        help="write plan.json and build_engines.sh only (to build on the device with trtexec)")
    parser.add_argument("--compare", action="store_true",
                        help="after building, compare every engine with onnxruntime on recorded chain inputs")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the build's files")
    return parser


def _summary(plan: dict, plan_path: Path, script_path: Path) -> str:
    limits, memory = plan["limits"], plan["memory"]
    weights = plan.get("weights") or {}
    int4 = (f" with int4 weights (blocks of {weights.get('block_size')}, strongly typed)"
            if weights.get("format") == "int4" else "")
    level = plan.get("builder_optimization_level")
    level = "" if level is None else f", builder optimisation level {level}"
    lines = [f"plan: {len(plan['engines'])} engines for {plan['target']['name']} ({plan['target']['gpu']}), "
             f"{plan['precision']}{int4}, batch <= {limits['max_batch']}, text <= {limits['max_text_tokens']} tokens, "
             f"answers <= {limits['max_new_tokens']} tokens{level}",
             f"memory: about {memory['total_gib']:.2f} GiB of a {memory['budget_gib']:.2f} GiB budget "
             f"(weights {memory['weights_gib']:.2f}, KV cache {memory['kv_cache_gib']:.2f}, activations "
             f"{memory['activations_gib']:.2f}, runtime {memory['overhead_gib']:.2f}): fits with "
             f"{memory['budget_gib'] - memory['total_gib']:.2f} GiB to spare",
             f"wrote {plan_path} and {script_path}"]
    lines += [f"warning: {w}" for w in plan["warnings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        if args.plan_only and args.compare:
            raise TransPruneError("--compare needs engines; drop --plan-only")
        from transprune.export.tensorrt.workflow import build_and_compare, plan_build
        from transprune.runtime.tensorrt.engines import import_tensorrt

        planned = plan_build(
            build_dir=args.build_dir, target=args.target, precision=args.precision, max_batch=args.max_batch,
            max_text_tokens=args.max_text_tokens, max_new_tokens=args.max_new_tokens, memory_gib=args.memory_gib,
            out=args.out, verify=not args.no_verify, timing_cache=args.timing_cache,
            optimization_level=args.optimization_level)
        print(_summary(planned.plan, planned.plan_path, planned.script_path), file=sys.stderr)
        if args.plan_only:
            return 0
        target = planned.plan["target"]
        try:
            import_tensorrt(target["module"])
        except TransPruneError as exc:
            if args.compare:
                raise
            where = ("on any machine with TensorRT-RTX installed" if target["module"] == "tensorrt_rtx" else
                     "on the target (copy the build directory there; JetPack's trtexec builds them, then the script "
                     "records their metadata)")
            print(f"note: no engines were built: {exc}\nBuild them with {planned.script_path} {where}",
                  file=sys.stderr)
            return 0
        log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
        failed = build_and_compare(planned=planned, timing_cache=args.timing_cache, compare=args.compare, log=log)
        if failed:
            print(f"{PROG}: {len(failed)} engine comparisons failed: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0

    return run_user_command(PROG, command)


if __name__ == "__main__":
    sys.exit(main())
