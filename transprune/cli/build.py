"""``transprune-build``: TensorRT engines for every graph of an exported build, for one target GPU.

Writes, into ``--out`` (default: ``BUILD_DIR/trt-<target>``), a build plan (``plan.json``: the
profiles of every engine, the precision, the memory estimate) and ``build_engines.sh`` (the same
build as trtexec commands, for a Jetson), then builds the engines with TensorRT through polygraphy
where TensorRT imports, each with its metadata beside it. Without TensorRT, or with
``--plan-only``, it stops after the plan and the script: run the script on the target.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..errors import TransPruneError
from ._common import run_user_command

PROG = "transprune-build"


def build_parser() -> argparse.ArgumentParser:
    from transprune.export.trt_targets import PRECISIONS, TARGETS

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", type=Path, help="a directory written by transprune-export")
    parser.add_argument("--target", required=True, choices=list(TARGETS), help="the GPU the engines are for")
    parser.add_argument("--precision", default="fp16", choices=list(PRECISIONS))
    parser.add_argument("--max-batch", type=int, default=1, help="largest batch the engines serve (default 1)")
    parser.add_argument("--max-text-tokens", type=int, default=None,
                        help="longest prompt in text tokens (default: the build's exported limit)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest answer (default: every position the longest prompt leaves)")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="device memory if it differs from the target's preset (e.g. 32 for a 32 GB AGX Orin)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="TensorRT timing cache to read and extend (default: timing.cache in --out)")
    parser.add_argument("--out", type=Path, default=None, help="engine directory (default: BUILD_DIR/trt-TARGET)")
    parser.add_argument("--plan-only", action="store_true",
                        help="write plan.json and build_engines.sh only (to build on the device with trtexec)")
    parser.add_argument("--compare", action="store_true",
                        help="after building, compare every engine with onnxruntime on recorded chain inputs")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the build's files")
    return parser


def plan_build(build_dir: Path, *, target: str, precision: str = "fp16", max_batch: int = 1,
               max_text_tokens: int | None = None, max_new_tokens: int | None = None,
               memory_gib: float | None = None, out: Path | None = None, verify: bool = True):
    """Checks the request and writes the plan and script -> (build, plan, engine dir, plan path, script path)."""
    from transprune.export.trt_plan import make_plan, write_plan
    from transprune.export.trt_profiles import shape_limits
    from transprune.export.trt_targets import check_precision, get_target
    from transprune.runtime.build import Build

    spec = get_target(target)
    if memory_gib is not None:
        if memory_gib <= spec.memory_gib - spec.budget_gib:
            raise TransPruneError(f"--memory-gib {memory_gib} leaves nothing after the "
                                  f"{spec.memory_gib - spec.budget_gib:g} GiB the system keeps")
        spec = dataclasses.replace(spec, budget_gib=memory_gib - (spec.memory_gib - spec.budget_gib),
                                   memory_gib=memory_gib)
    check_precision(spec, precision)
    build = Build.open(Path(build_dir), verify=verify)
    limits = shape_limits(build, max_batch=max_batch, max_text_tokens=max_text_tokens, max_new_tokens=max_new_tokens)
    engine_dir = Path(out) if out is not None else build.directory / f"trt-{spec.name}"
    plan = make_plan(build, target=spec, precision=precision, limits=limits, engine_dir=engine_dir)
    memory = plan["memory"]
    if not memory["fits"]:
        raise TransPruneError(
            f"{build.manifest['model']['id']} at {precision} needs about {memory['total_gib']:.2f} GiB on "
            f"{spec.name} (weights {memory['weights_gib']:.2f}, KV cache {memory['kv_cache_gib']:.2f}, activations "
            f"{memory['activations_gib']:.2f}, runtime {memory['overhead_gib']:.2f}), more than its "
            f"{memory['budget_gib']:.2f} GiB budget; lower --max-batch/--max-text-tokens/--max-new-tokens, pick a "
            f"target with more memory, or use a model with 4-bit weights. Nothing was written")
    plan_path, script_path = write_plan(plan, engine_dir)
    return build, plan, engine_dir, plan_path, script_path


def _summary(plan: dict, plan_path: Path, script_path: Path) -> str:
    limits, memory = plan["limits"], plan["memory"]
    lines = [f"plan: {len(plan['engines'])} engines for {plan['target']['name']} ({plan['target']['gpu']}), "
             f"{plan['precision']}, batch <= {limits['max_batch']}, text <= {limits['max_text_tokens']} tokens, "
             f"answers <= {limits['max_new_tokens']} tokens",
             f"memory: about {memory['total_gib']:.2f} GiB of a {memory['budget_gib']:.2f} GiB budget "
             f"(weights {memory['weights_gib']:.2f}, KV cache {memory['kv_cache_gib']:.2f})",
             f"wrote {plan_path} and {script_path}"]
    lines += [f"warning: {w}" for w in plan["warnings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        if args.plan_only and args.compare:
            raise TransPruneError("--compare needs engines; drop --plan-only")
        build, plan, engine_dir, plan_path, script_path = plan_build(
            args.build_dir, target=args.target, precision=args.precision, max_batch=args.max_batch,
            max_text_tokens=args.max_text_tokens, max_new_tokens=args.max_new_tokens, memory_gib=args.memory_gib,
            out=args.out, verify=not args.no_verify)
        print(_summary(plan, plan_path, script_path), file=sys.stderr)
        if args.plan_only:
            return 0
        from transprune.export.trt_build import build_engines, compare_engines
        from transprune.runtime.trt_engines import import_tensorrt

        try:
            import_tensorrt()
        except TransPruneError as exc:
            if args.compare:
                raise
            print(f"note: no engines were built: {exc}.\nBuild them on the target with {script_path} (copy the "
                  f"build directory there; JetPack's trtexec builds them, then the script records their metadata)",
                  file=sys.stderr)
            return 0
        log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
        build_engines(plan, build, engine_dir, timing_cache=args.timing_cache, log=log)
        if args.compare:
            results = compare_engines(plan, build, engine_dir, log=log)
            failed = [f"{g} ({p})" for g, phases in results.items() for p, ok in phases.items() if not ok]
            if failed:
                print(f"{PROG}: {len(failed)} engine comparisons failed: {', '.join(failed)}", file=sys.stderr)
                return 1
        return 0

    return run_user_command(PROG, command)


if __name__ == "__main__":
    sys.exit(main())
