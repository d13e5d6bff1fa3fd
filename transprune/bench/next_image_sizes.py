"""The LLaVA-NeXT benchmark (``scripts/bench_next.py``): prefill and decode of the pruned and
unpruned runtime across image sizes.

LLaVA-NeXT ("anyres") gives each image its own number of image tokens n, which follows its size and
aspect ratio, and every prune keeps ``int(n * ratio)`` of them, so the pruning saves a different
share of the prefill for each image. This measures that share next to the FLOPs model's: the
:data:`~transprune.bench.builds.PAIR` builds loaded side by side in one process, EOS ignored; per
image a warm-up of each build, then ``repeats`` repetitions running both side by side, the order
reversed every other repetition so that drift on a shared machine falls on both alike. Every run's
``Generation.image_tokens`` is checked against the schedule's keep counts of that image's own n.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path

from .builds import PAIR, ensure_pair
from .engines import RuntimeEngine, public
from .machine import loadavg, machine_info
from .output import fmt, log
from .stats import flat, in_turn, median, paired_ratio, ratio

KINDS = tuple(PAIR)  # pruned (schedule paper), unpruned (none)
LABELS = {"pruned": "paper", "unpruned": "none"}
# (name, width, height): image tokens on LLaVA-NeXT-7B's grid pinpoints 1752, 1968, 2340, 2928.
IMAGES = (("wide 2:1", 800, 400), ("portrait 9:16", 450, 800), ("photo 4:3", 640, 480), ("square", 672, 672))
QUICK_IMAGES = (IMAGES[0], IMAGES[-1])
PREFILL_METHOD = ("the runtime's timings['prefill_total'] (vision tiles, embed, prefill_inputs, segments, scorers, "
                  "head) of generate(max_new_tokens=N)")
DECODER_METHOD = "the sum of the runtime's segment_* and scorer_* timings of the same run (what the FLOPs model counts)"
DECODE_METHOD = "the runtime's timings['decode_per_token'] (median ms per decode step) of the same run"
RATIO_METHOD = "median over repetitions of each repetition's pruned/unpruned ratio (runs made side by side)"
FLOPS_METHOD = ("transprune.flops.flops_report(model=preset with n_image_tokens = the image's n, schedule=paper, "
                "text_tokens = the prompt's real text-token count).whole_with_iga_ratio")
TABLE_HEADER = ["image (W x H)", "image tokens n -> kept", "prefill none (ms)", "prefill paper (ms)",
                "paper/none", "FLOPs ratio", "measured/FLOPs", "decoder-only paper/none",
                "decode none / paper (ms/token)"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run measures (the script's command line, defaults resolved)."""

    model: str
    threads: int
    repeats: int
    new_tokens: int
    prompt: str
    exports: Path
    images: tuple  # of (name, width, height)
    quick: bool = False
    reexport: bool = False
    pause: float = 0.1

    @classmethod
    def from_args(cls, args) -> Settings:
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def expected_image_tokens(n: int) -> dict:
    """What each build's ``Generation.image_tokens`` must be for an image of n tokens."""
    from transprune.schedule import preset

    return {"pruned": [n, *preset("paper").keep_counts(n)], "unpruned": [n]}


def run_once(engine, image, settings: Settings) -> dict:
    result = engine.run(image, settings.prompt, settings.new_tokens)
    generation = result["_generation"]
    return {**public(result), "image_tokens": list(generation.image_tokens),
            "prompt_tokens": len(generation.input_ids)}


def check_run(run: dict, kind: str, n: int, failures: list, where: str) -> None:
    wanted = expected_image_tokens(n)[kind]
    if run["image_tokens"] != wanted:
        failures.append(f"{where}: {LABELS[kind]} build's image_tokens {run['image_tokens']} != expected {wanted} "
                        f"(n = {n}, keep int(n * ratio) of the paper schedule)")


def measure_image(settings: Settings, engines: dict, spec: tuple, failures: list) -> dict:
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
        warmup[kind] = run_once(engines[kind], image, settings)
        check_run(warmup[kind], kind, n, failures, f"{where}, warm-up")
    samples = {kind: [] for kind in KINDS}
    for rep in range(settings.repeats):
        order = in_turn(list(KINDS), rep)
        for kind in order:
            time.sleep(settings.pause)
            run = run_once(engines[kind], image, settings)
            check_run(run, kind, n, failures, f"{where}, repetition {rep + 1}")
            samples[kind].append({"repeat": rep, "order": order, **run})
        log(f"{where} [{rep + 1}/{settings.repeats}] " + "; ".join(
            f"{LABELS[kind]}: prefill {samples[kind][-1]['prefill_ms']:.1f} ms, "
            f"decode {fmt(samples[kind][-1]['decode_ms_per_token'])} ms/token" for kind in KINDS))
    return {"name": name, "width": width, "height": height, "n": n, "warmup": warmup, "samples": samples}


def summarize_image(measured: dict, model_facts, new_tokens: int) -> dict:
    from transprune.flops import flops_report
    from transprune.schedule import preset

    n, samples, warmup = measured["n"], measured["samples"], measured["warmup"]
    prompt_tokens = warmup["pruned"]["prompt_tokens"]
    text_tokens = prompt_tokens - n
    flops = flops_report(model=dataclasses.replace(model_facts, n_image_tokens=n), schedule=preset("paper"),
                         text_tokens=text_tokens)
    medians = {kind: {key: median(flat(samples[kind], key))
                      for key in ("prefill_ms", "decoder_prefill_ms", "decode_ms_per_token", "wall_ms")}
               for kind in KINDS}
    for kind in KINDS:
        medians[kind]["decode_steps_min"] = min(flat(samples[kind], "decode_steps"))
        medians[kind]["new_tokens_min"] = min(flat(samples[kind], "new_tokens"))
    pr, un = samples["pruned"], samples["unpruned"]
    ratios = {key.replace("_ms", "") + "_pruned_over_unpruned": paired_ratio(flat(pr, key), flat(un, key))
              for key in ("prefill_ms", "decoder_prefill_ms", "decode_ms_per_token", "wall_ms")}
    ratios_of_medians = {key.replace("_ms", "") + "_pruned_over_unpruned":
                         ratio(medians["pruned"][key], medians["unpruned"][key])
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
        "measured_over_flops": ratio(ratios["prefill_pruned_over_unpruned"], flops_ratio),
        "decoder_measured_over_flops": ratio(ratios["decoder_prefill_pruned_over_unpruned"], flops_ratio),
        "warmup": warmup, "samples": samples,
    }


def run(settings: Settings) -> tuple[dict, list[str]]:
    """Builds (reused or exported), then every image measured. -> (the JSON report, failures)."""
    from transprune.checkpoints import resolve_checkpoint
    from transprune.schedule import preset

    started = time.time()
    load_before = loadavg()
    checkpoint, model_facts = resolve_checkpoint(settings.model)
    if model_facts.architecture != "llava-next":
        raise SystemExit(f"bench_next.py: --model {settings.model} is {model_facts.architecture}, not llava-next; "
                         f"use scripts/bench_runtime.py for LLaVA-1.5 models")
    builds = ensure_pair(model=settings.model, exports=settings.exports, checkpoint=checkpoint,
                         reexport=settings.reexport)
    engines, load_s = {}, {}
    for kind in KINDS:
        log(f"loading the {LABELS[kind]} build from {builds[kind]['path']}")
        engines[kind] = RuntimeEngine(Path(builds[kind]["path"]), settings.threads)
        load_s[kind] = round(engines[kind].load_s, 3)
    failures: list[str] = []
    try:
        entries = [summarize_image(measure_image(settings, engines, spec, failures), model_facts, settings.new_tokens)
                   for spec in settings.images]
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
            "model": settings.model, "checkpoint": str(checkpoint), "num_layers": model_facts.text.num_layers,
            "preset": model_facts.to_dict(), "threads": settings.threads, "repeats": settings.repeats,
            "new_tokens": settings.new_tokens, "prompt": settings.prompt, "quick": settings.quick,
            "images": [{"name": name, "width": w, "height": h} for name, w, h in settings.images],
            "schedules": {kind: preset(PAIR[kind]).to_dict() for kind in KINDS}, "builds": builds,
            "load_s": load_s, "pause_s": settings.pause,
            "length_method": "EOS ignored (build.eos_token_id = None) so every run generates exactly N tokens",
            "prefill_method": PREFILL_METHOD, "decoder_prefill_method": DECODER_METHOD,
            "decode_method": DECODE_METHOD, "ratio_method": RATIO_METHOD, "flops_method": FLOPS_METHOD,
            "order_method": "per image: a warm-up of each build, then the repetitions, each running both builds "
                            "side by side, the order reversed every other repetition",
            "machine": machine_info(), "loadavg_before": load_before, "loadavg_after": loadavg(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "wall_s": None,
        },
        "images": entries,
        "checks": {"image_tokens_match_schedule": all(e["checks"]["image_tokens_match_schedule"] for e in entries),
                   "distinct_image_token_counts": len(set(counts)) == len(counts),
                   "failures": failures},
    }
    report["config"]["wall_s"] = round(time.time() - started, 1)
    return report, failures


def markdown(report: dict) -> str:
    """One table row per image, and a line saying how it was measured."""
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
