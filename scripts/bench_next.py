#!/usr/bin/env python3
"""LLaVA-NeXT benchmark: prefill and decode of the pruned and unpruned runtime across image sizes.

    python scripts/bench_next.py [--model bench-next] [--repeats 3] [--new-tokens 8] [--threads N]
        [--exports DIR] [--out FILE] [--prompt TEXT] [--reexport] [--quick]

LLaVA-NeXT ("anyres") gives each image its own number of image tokens n, which follows its size and
aspect ratio (576..2928 on LLaVA-NeXT-7B's grid pinpoints), and every prune keeps ``int(n * ratio)``
of them, so the pruning saves a different share of the prefill for each image. This script measures
that share next to the FLOPs model's, for images of four aspect ratios:

* builds: ``--model`` exported twice with the onnxruntime exporter (schedule ``paper`` into
  ``DIR/<model>-paper``, ``none`` into ``DIR/<model>-none``; default DIR ``exports``, without
  validation) unless a build with the same schedule and checkpoint is already there (the reuse rule
  of scripts/bench_runtime.py, whose ``ensure_build`` this uses; ``--reexport`` forces a fresh one);
* pruned = the runtime on the paper build, unpruned = the runtime on the ``none`` build, both
  ``Pipeline.from_dir(..., backend="onnxruntime", threads=--threads)``, loaded side by side in this
  one process, EOS ignored (the synthetic model is random) so every run makes exactly N tokens;
* images: ``transprune.sample_image.sample_image(width, height)`` at the sizes in ``IMAGES`` (a 2:1
  strip, a 9:16 portrait, a 4:3 photo and a square), one after the other. For each image: one
  warm-up generation of each build (not counted), then ``--repeats`` repetitions, each running
  generate(max_new_tokens=N) of both builds side by side, the order reversed every other
  repetition so that drift on a shared machine falls on both alike;
* prefill = the runtime's ``timings['prefill_total']`` (vision tiles, embedding, decoder segments,
  scorers, head); decoder-only = its segments and scorers, what the FLOPs model counts; decode =
  ``timings['decode_per_token']`` (median ms per decode step);
* every run's ``Generation.image_tokens`` must be ``[n, int(n*.875), int(n*.625), int(n*.125)]``
  for the pruned build (the paper schedule's keep counts of that image's own n) and ``[n]`` for
  the unpruned one, with n the same in both; otherwise the script says so on stderr and exits 1
  (after writing the JSON).

Reported per image (medians over the repetitions; ratios are medians of the per-run ratios of runs
made side by side): prefill of each build, pruned/unpruned, the FLOPs ratio of that very
configuration (``transprune.flops``: whole prompt with IGA scoring, the prompt's real text-token
count, the image's own n) and measured/FLOPs; decoder-only pruned/unpruned; decode ms/token of each.

stdout: a markdown table, one row per image; stderr: progress; ``--out`` (default
``exports/bench_next.json``): the configuration, the machine, every raw sample, the medians, the
ratios and the checks. ``--quick`` (tests): ``tiny-next``, 1 repetition, the first and last image,
2 new tokens. Not a timed test: timings on a shared machine are noisy, which is why everything is
compared as ratios of interleaved runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path

# scripts/ is not a package; bench_runtime holds the helpers shared by the benchmarks (build reuse,
# the EOS-free runtime engine, medians and paired ratios, machine facts).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_runtime as bench  # noqa: E402

KINDS = ("pruned", "unpruned")
SCHEDULES = bench.SCHEDULES  # pruned: paper, unpruned: none
LABELS = {"pruned": "paper", "unpruned": "none"}
# (name, width, height): image tokens on LLaVA-NeXT-7B's grid pinpoints 1752, 1968, 2340, 2928.
IMAGES = (("wide 2:1", 800, 400), ("portrait 9:16", 450, 800), ("photo 4:3", 640, 480), ("square", 672, 672))
QUICK_IMAGES = (IMAGES[0], IMAGES[-1])
DEFAULTS = {"model": "bench-next", "repeats": 3, "new_tokens": 8}
QUICK = {"model": "tiny-next", "repeats": 1, "new_tokens": 2}
DEFAULT_OUT = Path("exports") / "bench_next.json"
PREFILL_METHOD = ("the runtime's timings['prefill_total'] (vision tiles, embed, prefill_inputs, segments, scorers, "
                  "head) of generate(max_new_tokens=N)")
DECODER_METHOD = "the sum of the runtime's segment_* and scorer_* timings of the same run (what the FLOPs model counts)"
DECODE_METHOD = "the runtime's timings['decode_per_token'] (median ms per decode step) of the same run"
RATIO_METHOD = "median over repetitions of each repetition's pruned/unpruned ratio (runs made side by side)"
FLOPS_METHOD = ("transprune.flops.flops_report(model=preset with n_image_tokens = the image's n, schedule=paper, "
                "text_tokens = the prompt's real text-token count).whole_with_iga_ratio")
log = bench.log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_next.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model preset to export and time (default: bench-next; tiny-next with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per image, after one warm-up (default: 3; 1 with --quick)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens each generation makes (default: 8; 2 with --quick)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for onnxruntime (default: os.cpu_count())")
    parser.add_argument("--prompt", default=bench.DEFAULT_PROMPT, help="the question about each picture")
    parser.add_argument("--exports", type=Path, default=Path("exports"),
                        help="where the builds go: DIR/<model>-paper and DIR/<model>-none (default: exports)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"JSON report to write (default: {DEFAULT_OUT})")
    parser.add_argument("--reexport", action="store_true", help="export both builds again even if they exist")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run for tests: tiny-next, 1 repetition, 2 images, 2 new tokens "
                             "(explicit --model/--repeats/--new-tokens still win)")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds to sleep between timed runs (default: 0.1)")
    return parser


def resolve_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("repeats", "new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.pause < 0:
        parser.error("--pause must be >= 0")
    args.images = QUICK_IMAGES if args.quick else IMAGES
    return args


# -- measuring -------------------------------------------------------------------------------------

def expected_image_tokens(n: int) -> dict:
    """What each build's ``Generation.image_tokens`` must be for an image of n tokens."""
    from transprune.schedule import preset

    return {"pruned": [n, *preset("paper").keep_counts(n)], "unpruned": [n]}


def run_once(engine, image, args) -> dict:
    result = engine.run(image, args.prompt, args.new_tokens)
    generation = result["_generation"]
    return {**bench.public(result), "image_tokens": list(generation.image_tokens),
            "prompt_tokens": len(generation.input_ids)}


def check_run(run: dict, kind: str, n: int, failures: list, where: str) -> None:
    wanted = expected_image_tokens(n)[kind]
    if run["image_tokens"] != wanted:
        failures.append(f"{where}: {LABELS[kind]} build's image_tokens {run['image_tokens']} != expected {wanted} "
                        f"(n = {n}, keep int(n * ratio) of the paper schedule)")


def measure_image(args, engines: dict, spec: tuple, failures: list) -> dict:
    """One image: a warm-up of each build, then ``repeats`` interleaved repetitions."""
    from transprune.sample_image import sample_image

    name, width, height = spec
    image = sample_image(width=width, height=height)
    counted = {kind: engines[kind].pipeline.images.count((height, width)) for kind in KINDS}
    n = counted["pruned"]
    where = f"{name} {width}x{height}"
    if counted["unpruned"] != n:
        failures.append(f"{where}: the builds count different image tokens {counted}")
    log(f"{where}: {n} image tokens; warm-up")
    warmup = {}
    for kind in KINDS:
        warmup[kind] = run_once(engines[kind], image, args)
        check_run(warmup[kind], kind, n, failures, f"{where}, warm-up")
    samples = {kind: [] for kind in KINDS}
    for rep in range(args.repeats):
        order = list(KINDS) if rep % 2 == 0 else list(KINDS)[::-1]
        for kind in order:
            time.sleep(args.pause)
            run = run_once(engines[kind], image, args)
            check_run(run, kind, n, failures, f"{where}, repetition {rep + 1}")
            samples[kind].append({"repeat": rep, "order": order, **run})
        log(f"{where} [{rep + 1}/{args.repeats}] " + "; ".join(
            f"{LABELS[kind]}: prefill {samples[kind][-1]['prefill_ms']:.1f} ms, "
            f"decode {bench._fmt(samples[kind][-1]['decode_ms_per_token'])} ms/token" for kind in KINDS))
    return {"name": name, "width": width, "height": height, "n": n, "warmup": warmup, "samples": samples}


def summarize_image(measured: dict, model_facts, new_tokens: int) -> dict:
    from transprune.flops import flops_report
    from transprune.schedule import preset

    n, samples, warmup = measured["n"], measured["samples"], measured["warmup"]
    prompt_tokens = warmup["pruned"]["prompt_tokens"]
    text_tokens = prompt_tokens - n
    flops = flops_report(model=dataclasses.replace(model_facts, n_image_tokens=n), schedule=preset("paper"),
                         text_tokens=text_tokens)
    medians = {kind: {key: bench.median(bench.flat(samples[kind], key))
                      for key in ("prefill_ms", "decoder_prefill_ms", "decode_ms_per_token", "wall_ms")}
               for kind in KINDS}
    for kind in KINDS:
        medians[kind]["decode_steps_min"] = min(bench.flat(samples[kind], "decode_steps"))
        medians[kind]["new_tokens_min"] = min(bench.flat(samples[kind], "new_tokens"))
    pr, un = samples["pruned"], samples["unpruned"]
    ratios = {key.replace("_ms", "") + "_pruned_over_unpruned": bench.paired_ratio(bench.flat(pr, key),
                                                                                  bench.flat(un, key))
              for key in ("prefill_ms", "decoder_prefill_ms", "decode_ms_per_token", "wall_ms")}
    ratios_of_medians = {key.replace("_ms", "") + "_pruned_over_unpruned":
                         bench._div(medians["pruned"][key], medians["unpruned"][key])
                         for key in ("prefill_ms", "decoder_prefill_ms", "decode_ms_per_token")}
    flops_ratio = flops.whole_with_iga_ratio
    kept = {kind: warmup[kind]["image_tokens"] for kind in KINDS}
    all_runs = {kind: [warmup[kind], *samples[kind]] for kind in KINDS}
    return {
        "name": measured["name"], "width": measured["width"], "height": measured["height"],
        "image_tokens": n, "text_tokens": text_tokens, "prompt_tokens": prompt_tokens,
        "kept_image_tokens": kept, "expected_image_tokens": expected_image_tokens(n),
        "checks": {"image_tokens_match_schedule": all(run["image_tokens"] == expected_image_tokens(n)[kind]
                                                      for kind in KINDS for run in all_runs[kind]),
                   "same_prompt_in_both_builds": len({run["prompt_tokens"] for kind in KINDS
                                                      for run in all_runs[kind]}) == 1,
                   "every_run_made_new_tokens": all(run["new_tokens"] == new_tokens
                                                    for kind in KINDS for run in all_runs[kind])},
        "flops": {"text_tokens": text_tokens, "n_image_tokens": n, "whole_with_iga_ratio": flops_ratio,
                  "report": flops.to_dict()},
        "medians": medians, "ratios": ratios, "ratios_of_medians": ratios_of_medians,
        "measured_over_flops": bench._div(ratios["prefill_pruned_over_unpruned"], flops_ratio),
        "decoder_measured_over_flops": bench._div(ratios["decoder_prefill_pruned_over_unpruned"], flops_ratio),
        "warmup": warmup, "samples": samples,
    }


# -- report ------------------------------------------------------------------------------------------

TABLE_HEADER = ["image (W x H)", "image tokens n -> kept", "prefill none (ms)", "prefill paper (ms)",
                "paper/none", "FLOPs ratio", "measured/FLOPs", "decoder-only paper/none",
                "decode none / paper (ms/token)"]


def markdown(report: dict) -> str:
    fmt = bench._fmt
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "|".join("---" for _ in TABLE_HEADER) + "|"]
    for entry in report["images"]:
        medians, ratios = entry["medians"], entry["ratios"]
        cells = [f"{entry['name']} {entry['width']}x{entry['height']}",
                 " -> ".join(map(str, entry["kept_image_tokens"]["pruned"])),
                 fmt(medians["unpruned"]["prefill_ms"]), fmt(medians["pruned"]["prefill_ms"]),
                 fmt(ratios["prefill_pruned_over_unpruned"], 3), fmt(entry["flops"]["whole_with_iga_ratio"], 3),
                 fmt(entry["measured_over_flops"], 3), fmt(ratios["decoder_prefill_pruned_over_unpruned"], 3),
                 f"{fmt(medians['unpruned']['decode_ms_per_token'])} / {fmt(medians['pruned']['decode_ms_per_token'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    config, machine = report["config"], report["config"]["machine"]
    text_tokens = sorted({entry["text_tokens"] for entry in report["images"]})
    lines.append("")
    lines.append(f"Model `{config['model']}` (LLaVA-NeXT, {config['num_layers']} layers), prompt of "
                 f"{'/'.join(map(str, text_tokens))} text tokens + n image tokens, schedule paper (prune after "
                 f"7, 9, 12 keeping int(n * .875, .625, .125)) vs none; {config['threads']} "
                 f"thread{'s' if config['threads'] != 1 else ''} on {machine['cpu_count']} CPUs "
                 f"({machine['processor'] or machine['machine']}); median of {config['repeats']} interleaved "
                 f"repetitions after a warm-up per image and build, {config['new_tokens']} new tokens each; ratios "
                 f"are medians of per-repetition ratios; FLOPs = whole prompt with IGA; onnxruntime "
                 f"{machine['versions'].get('onnxruntime')}.")
    return "\n".join(lines)


def run(args) -> tuple[dict, list[str]]:
    from transprune.checkpoints import resolve_checkpoint
    from transprune.schedule import preset

    started = time.time()
    load_before = bench.loadavg()
    checkpoint, model_facts = resolve_checkpoint(args.model)
    if model_facts.architecture != "llava-next":
        raise SystemExit(f"bench_next.py: --model {args.model} is {model_facts.architecture}, not llava-next; "
                         f"use scripts/bench_runtime.py for LLaVA-1.5 models")
    builds = bench.ensure_builds(args, checkpoint)
    engines, load_s = {}, {}
    for kind in KINDS:
        log(f"loading the {LABELS[kind]} build from {builds[kind]['path']}")
        engines[kind] = bench.RuntimeEngine(Path(builds[kind]["path"]), args.threads)
        load_s[kind] = round(engines[kind].load_s, 3)
    failures: list[str] = []
    try:
        entries = [summarize_image(measure_image(args, engines, spec, failures), model_facts, args.new_tokens)
                   for spec in args.images]
    finally:
        for engine in engines.values():
            engine.close()
        engines.clear()
        gc.collect()
    counts = [entry["image_tokens"] for entry in entries]
    if len(set(counts)) != len(counts):
        failures.append(f"the images do not all give different image-token counts: {counts}")
    report = {
        "config": {
            "model": args.model, "checkpoint": str(checkpoint), "num_layers": model_facts.text.num_layers,
            "preset": model_facts.to_dict(), "threads": args.threads, "repeats": args.repeats,
            "new_tokens": args.new_tokens, "prompt": args.prompt, "quick": args.quick,
            "images": [{"name": name, "width": w, "height": h} for name, w, h in args.images],
            "schedules": {kind: preset(SCHEDULES[kind]).to_dict() for kind in KINDS}, "builds": builds,
            "load_s": load_s, "pause_s": args.pause,
            "length_method": "EOS ignored (build.eos_token_id = None) so every run generates exactly N tokens",
            "prefill_method": PREFILL_METHOD, "decoder_prefill_method": DECODER_METHOD,
            "decode_method": DECODE_METHOD, "ratio_method": RATIO_METHOD, "flops_method": FLOPS_METHOD,
            "order_method": "per image: a warm-up of each build, then the repetitions, each running both builds "
                            "side by side, the order reversed every other repetition",
            "machine": bench.machine_info(), "loadavg_before": load_before, "loadavg_after": bench.loadavg(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "wall_s": None,
        },
        "images": entries,
        "checks": {"image_tokens_match_schedule": all(e["checks"]["image_tokens_match_schedule"] for e in entries),
                   "distinct_image_token_counts": len(set(counts)) == len(counts),
                   "failures": failures},
    }
    report["config"]["wall_s"] = round(time.time() - started, 1)
    return report, failures


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = resolve_args(parser, argv)
    report, failures = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(markdown(report))
    print(f"\nJSON: {args.out}")
    for entry in report["images"]:
        log(f"{entry['name']}: n = {entry['image_tokens']}, prefill paper/none "
            f"{bench._fmt(entry['ratios']['prefill_pruned_over_unpruned'], 3)}, FLOPs "
            f"{entry['flops']['whole_with_iga_ratio']:.3f}, "
            f"measured/FLOPs {bench._fmt(entry['measured_over_flops'], 3)}")
    for failure in failures:
        log(f"ERROR: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
