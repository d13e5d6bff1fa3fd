"""The runtime benchmark (``scripts/bench_runtime.py``): the torch-free runtime, pruned and
unpruned, against transformers eager, timed side by side in one process.

pruned = the runtime on the paper build, unpruned = the runtime on the ``none`` build, hf =
transformers' ``LlavaForConditionalGeneration`` (fp32, eager attention). One warm-up generation of
each (not counted), then ``repeats`` repetitions; each repetition runs, interleaved,
generate(max_new_tokens=1) of every engine (time to first token), then generate(max_new_tokens=N)
of each (total time; the runtime's own timings give prefill and decode per token). The order is
reversed every other repetition so that drift on a shared machine falls on all three alike.
With ``weights="int4"`` both runtime builds carry int4 weights (``<model>-paper-int4``,
``<model>-none-int4``) and transformers stays fp32: decode, weight-bandwidth bound, is where the
pruned KV cache shows. Peak RSS: :mod:`transprune.bench.rss`, a fresh process per engine. Load time:
:mod:`transprune.bench.load_time`, a fresh process per reading, pruned and unpruned alternating,
``repeats`` readings each. The targets (issue 17's) are judged as met or not met; nothing fails on
them.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path

from .builds import PAIR, ensure_pair
from .engines import HFEngine, RuntimeEngine, public
from .export_and_runtime import int4_block_size
from .machine import loadavg, machine_info
from .output import fmt, log
from .load_time import load_time_in_fresh_process
from .rss import peak_rss_in_fresh_process
from .stats import flat, in_turn, median, paired_ratio, ratio

KINDS = ("pruned", "unpruned", "hf")
RUNTIME_KINDS = tuple(PAIR)  # pruned, unpruned
LABELS = {"pruned": "runtime, pruned (paper)", "unpruned": "runtime, unpruned", "hf": "transformers eager"}
TTFT_METHOD = ("wall time of generate(max_new_tokens=1) = prefill + the first token; the runtime's time includes "
               "its image preprocessing and tokenization, HF's is model.generate on inputs the processor "
               "encoded beforehand")
TOTAL_METHOD = "wall time of generate(max_new_tokens=N), same inputs as time to first token"
LENGTH_METHOD = ("EOS ignored so every run generates exactly N tokens: the runtime's build.eos_token_id set to "
                 "None, HF generate(eos_token_id=None); each sample records the tokens it actually generated")
RSS_METHOD = ("a fresh subprocess per kind (python -m transprune.bench.rss) loads it and runs one generation of N "
              "tokens; peak_rss_bytes = its VmHWM (/proc/self/status) on Linux, since ru_maxrss is inherited from "
              "the parent across fork+exec; ru_maxrss (bytes) is recorded next to it")
LOAD_METHOD = ("a fresh subprocess per reading (python -m transprune.bench.load_time) opens the build without "
               "sha256 verification: manifest, tokenizer and one onnxruntime session per graph; pruned and "
               "unpruned alternate, the graph files warm in the page cache")
PREFILL_TOLERANCE = 0.05  # |measured/ideal - 1|
TTFT_SPEEDUP = 4.0  # HF TTFT / pruned TTFT
DECODE_RATIO = 0.9  # pruned decode ms <= unpruned * this
SCORER_SLACK = 0.02  # the scorers' share of prefill time <= their share of its FLOPs + this


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run measures (the script's command line)."""

    model: str
    threads: int
    repeats: int
    new_tokens: int
    prompt: str
    exports: Path
    reexport: bool = False
    skip_hf: bool = False
    skip_rss: bool = False
    decode_batch: int = 8  # batch of the batched-decode pair (0: not measured)
    weights: str = "float"  # the runtime builds' weights: float (fp32) or int4; transformers stays fp32
    pause: float = 0.1  # seconds between timed runs, so one engine's spinning threads are idle before the next

    @classmethod
    def from_args(cls, args) -> Settings:
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def measure(settings: Settings, engines: dict, image) -> dict:
    """Warm-up, then ``repeats`` interleaved repetitions. -> {"warmup": ..., "samples": ...}."""
    kinds = list(engines)
    warmup, samples = {}, {kind: [] for kind in kinds}
    for kind in kinds:
        log(f"warm-up: {LABELS[kind]}")
        warmup[kind] = engines[kind].run(image, settings.prompt, settings.new_tokens)
    for rep in range(settings.repeats):
        order = in_turn(kinds, rep)
        runs = {kind: {} for kind in kinds}
        for phase, new_tokens in (("ttft", 1), ("total", settings.new_tokens)):
            for kind in order:
                time.sleep(settings.pause)
                runs[kind][phase] = engines[kind].run(image, settings.prompt, new_tokens)
        for kind in kinds:
            ttft, total = runs[kind]["ttft"], runs[kind]["total"]
            sample = {"repeat": rep, "order": order, "ttft_ms": ttft["wall_ms"], "total_ms": total["wall_ms"],
                      "new_tokens": total["new_tokens"]}
            if kind in RUNTIME_KINDS:
                sample.update(prefill_ms=[ttft["prefill_ms"], total["prefill_ms"]],
                              decoder_prefill_ms=[ttft["decoder_prefill_ms"], total["decoder_prefill_ms"]],
                              decode_ms_per_token=total["decode_ms_per_token"], decode_steps=total["decode_steps"],
                              finish_reason=total["finish_reason"],
                              timings={"ttft_run": ttft["timings"], "total_run": total["timings"]})
            samples[kind].append(sample)
        log(f"[{rep + 1}/{settings.repeats}] " + "; ".join(
            f"{kind}: ttft {samples[kind][-1]['ttft_ms']:.1f} ms, total {samples[kind][-1]['total_ms']:.1f} ms"
            + (f", prefill {samples[kind][-1]['prefill_ms'][1]:.1f} ms, "
               f"decode {fmt(samples[kind][-1]['decode_ms_per_token'])} ms/token" if kind in RUNTIME_KINDS else "")
            for kind in kinds))
    return {"warmup": warmup, "samples": samples}


def measure_batched_decode(settings: Settings, engines: dict, image) -> dict | None:
    """Decode ms per step of the runtime engines (pruned and unpruned) at batch ``settings.decode_batch`` (one warm-up,
    then ``repeats`` interleaved runs of ``new_tokens``). At batch 1 every step reads all the
    weights for one cache; at batch B it reads them once for B caches, so the caches pruning
    shortens weigh B times more (what a batching server sees). None when decode_batch is 0."""
    batch = settings.decode_batch
    if batch < 1:
        return None
    samples = {kind: [] for kind in RUNTIME_KINDS}
    for kind in RUNTIME_KINDS:
        log(f"batched decode warm-up: {LABELS[kind]}, batch {batch}")
        engines[kind].run_batch(image, settings.prompt, 2, batch)
    for rep in range(settings.repeats):
        for kind in in_turn(RUNTIME_KINDS, rep):
            time.sleep(settings.pause)
            samples[kind].append(engines[kind].run_batch(image, settings.prompt, settings.new_tokens, batch))
        log(f"[{rep + 1}/{settings.repeats}] batch {batch}: " + ", ".join(
            f"{kind} decode {fmt(samples[kind][-1]['decode_ms_per_step'])} ms/step" for kind in RUNTIME_KINDS))
    steps = {kind: flat(runs, "decode_ms_per_step") for kind, runs in samples.items()}
    return {"batch": batch, "new_tokens": settings.new_tokens,
            "median_ms_per_step": {kind: median(v) for kind, v in steps.items()},
            "pruned_over_unpruned": paired_ratio(steps["pruned"], steps["unpruned"]), "samples": samples}


def summarize(samples: dict, new_tokens: int) -> dict:
    """Medians per engine, paired ratios, and ratios of medians (for comparison)."""
    medians = {}
    for kind, runs in samples.items():
        m = {"ttft_ms": median(flat(runs, "ttft_ms")), "total_ms": median(flat(runs, "total_ms")),
             "new_tokens_min": min(flat(runs, "new_tokens"))}
        if kind in RUNTIME_KINDS:
            m.update(prefill_ms=median(flat(runs, "prefill_ms")),
                     decoder_prefill_ms=median(flat(runs, "decoder_prefill_ms")),
                     decode_ms_per_token=median(flat(runs, "decode_ms_per_token")),
                     decode_steps_min=min(flat(runs, "decode_steps")))
        elif new_tokens > 1:  # HF has no per-step timer: (total - ttft) / (N - 1), an estimate
            m["decode_ms_per_token_est"] = median([(r["total_ms"] - r["ttft_ms"]) / (r["new_tokens"] - 1)
                                                   for r in runs if r["new_tokens"] > 1])
        medians[kind] = m
    pr, un, hf = samples.get("pruned"), samples.get("unpruned"), samples.get("hf")
    ratios = {
        "prefill_pruned_over_unpruned": paired_ratio(flat(pr, "prefill_ms"), flat(un, "prefill_ms")),
        "decoder_prefill_pruned_over_unpruned": paired_ratio(flat(pr, "decoder_prefill_ms"),
                                                             flat(un, "decoder_prefill_ms")),
        "decode_pruned_over_unpruned": paired_ratio(flat(pr, "decode_ms_per_token"),
                                                    flat(un, "decode_ms_per_token")),
        "ttft_unpruned_over_pruned": paired_ratio(flat(un, "ttft_ms"), flat(pr, "ttft_ms")),
        "total_unpruned_over_pruned": paired_ratio(flat(un, "total_ms"), flat(pr, "total_ms")),
    }
    if hf:
        ratios.update(ttft_hf_over_pruned=paired_ratio(flat(hf, "ttft_ms"), flat(pr, "ttft_ms")),
                      total_hf_over_pruned=paired_ratio(flat(hf, "total_ms"), flat(pr, "total_ms")),
                      ttft_hf_over_unpruned=paired_ratio(flat(hf, "ttft_ms"), flat(un, "ttft_ms")),
                      total_hf_over_unpruned=paired_ratio(flat(hf, "total_ms"), flat(un, "total_ms")))
    ratios_of_medians = {
        "prefill_pruned_over_unpruned": ratio(medians["pruned"]["prefill_ms"], medians["unpruned"]["prefill_ms"]),
        "decode_pruned_over_unpruned": ratio(medians["pruned"]["decode_ms_per_token"],
                                             medians["unpruned"]["decode_ms_per_token"]),
    }
    if hf:
        ratios_of_medians.update(ttft_hf_over_pruned=ratio(medians["hf"]["ttft_ms"], medians["pruned"]["ttft_ms"]),
                                 total_hf_over_pruned=ratio(medians["hf"]["total_ms"], medians["pruned"]["total_ms"]))
    return {"medians": medians, "ratios": ratios, "ratios_of_medians": ratios_of_medians}


def _target(rule: str, value: float | None, ok) -> dict:
    return {"rule": rule, "value": value, "met": None if value is None else bool(ok(value))}


def targets(ratios: dict, flops_ratio: float, *, rss_ratio: float | None = None, load_ratio: float | None = None,
            scorer_time_share: float | None = None, scorer_flops_share: float | None = None,
            batched_decode: dict | None = None) -> dict:
    """Issue 17's targets, each with its rule, the measured value and whether it is met (None:
    not measured in this run)."""
    measured_over_ideal = ratio(ratios["prefill_pruned_over_unpruned"], flops_ratio)
    scorer_excess = (None if scorer_time_share is None or scorer_flops_share is None
                     else scorer_time_share - scorer_flops_share)
    return {
        "prefill_matches_flops": _target(f"|prefill ratio / FLOPs ratio - 1| <= {PREFILL_TOLERANCE}",
                                         measured_over_ideal, lambda v: abs(v - 1) <= PREFILL_TOLERANCE),
        "scorers_within_flops_share": _target(
            f"scorers' share of prefill time - their share of its FLOPs <= {SCORER_SLACK}", scorer_excess,
            lambda v: v <= SCORER_SLACK),
        "ttft_vs_hf": _target(f"HF time to first token / pruned >= {TTFT_SPEEDUP:g}",
                              ratios.get("ttft_hf_over_pruned"), lambda v: v >= TTFT_SPEEDUP),
        "decode_cheaper": _target(f"pruned decode ms/token <= {DECODE_RATIO} x unpruned",
                                  ratios["decode_pruned_over_unpruned"], lambda v: v <= DECODE_RATIO),
        "decode_cheaper_batched": _target(
            f"pruned decode ms/step <= {DECODE_RATIO} x unpruned at batch "
            f"{batched_decode['batch'] if batched_decode else 'B (not measured)'}",
            batched_decode and batched_decode["pruned_over_unpruned"], lambda v: v <= DECODE_RATIO),
        "rss_not_higher": _target("pruned peak RSS <= unpruned", rss_ratio, lambda v: v <= 1),
        "load_not_slower": _target("pruned load time <= unpruned (fresh process, paired median)", load_ratio,
                                   lambda v: v <= 1),
    }


def measure_rss(settings: Settings, kinds, builds: dict) -> dict:
    """Peak RSS of each kind, each in a fresh process (``builds``: {kind: {path, ...}}).
    -> {kind: {"kind": kind, **reading}}."""
    out = {}
    for kind in kinds:
        log(f"peak RSS: {LABELS[kind]} in a fresh process")
        target = ({"hf_model": settings.model} if kind == "hf"
                  else {"build": Path(builds[kind]["path"])})
        out[kind] = {"kind": kind, **peak_rss_in_fresh_process(**target, threads=settings.threads,
                                                               new_tokens=settings.new_tokens,
                                                               prompt=settings.prompt)}
    return out


def measure_load(settings: Settings, builds: dict) -> dict:
    """Fresh-process load time of each runtime build, alternating, ``repeats`` readings each.
    -> {kind: [seconds, ...]}."""
    out = {kind: [] for kind in RUNTIME_KINDS}
    for rep in range(settings.repeats):
        for kind in in_turn(RUNTIME_KINDS, rep):
            reading = load_time_in_fresh_process(Path(builds[kind]["path"]), threads=settings.threads)
            out[kind].append(reading["load_s"])
        log(f"[{rep + 1}/{settings.repeats}] load: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in out.items()))
    return out


def scorer_share(samples: list) -> float | None:
    """Median over the pruned full runs of (time in scorer graphs) / (prefill time)."""
    shares = []
    for sample in samples:
        timings = sample["timings"]["total_run"]
        scorers = sum(v for k, v in timings.items() if k.startswith("scorer_") and isinstance(v, (int, float)))
        if timings.get("prefill_total"):
            shares.append(scorers / timings["prefill_total"])
    return median(shares) if shares else None


def run(settings: Settings) -> dict:
    """Builds (reused or exported), timing, RSS, FLOPs and targets: the whole JSON report."""
    from transprune.checkpoints import resolve_checkpoint
    from transprune.flops import flops_report
    from transprune.sample_image import sample_image
    from transprune.schedule import preset

    started = time.time()
    load_before = loadavg()
    checkpoint, model_facts = resolve_checkpoint(settings.model)
    block_size = int4_block_size(checkpoint) if settings.weights == "int4" else None
    builds = ensure_pair(model=settings.model, exports=settings.exports, checkpoint=checkpoint,
                         weight_format=settings.weights, block_size=block_size, reexport=settings.reexport)
    image = sample_image()

    engines = {}
    for kind in RUNTIME_KINDS:
        log(f"loading {LABELS[kind]} from {builds[kind]['path']}")
        engines[kind] = RuntimeEngine(Path(builds[kind]["path"]), settings.threads)
    if not settings.skip_hf:
        log(f"loading {LABELS['hf']} ({settings.model}, fp32)")
        engines["hf"] = HFEngine(settings.model, settings.threads, image, settings.prompt)

    measured = measure(settings, engines, image)
    batched = measure_batched_decode(settings, engines, image)
    warmup = measured["warmup"]
    first = warmup["pruned"]["_generation"]
    n_image = engines["pruned"].pipeline.build.n_image
    text_tokens = len(first.input_ids) - n_image
    flops = flops_report(model=model_facts, schedule=preset("paper"), text_tokens=text_tokens)
    kept = {kind: [n_image, *(len(k) for k in warmup[kind]["_generation"].kept)] for kind in RUNTIME_KINDS}
    expected_kept = {kind: list(engines[kind].pipeline.image_tokens) for kind in RUNTIME_KINDS}
    checks = {"kept_matches_schedule": kept == expected_kept}
    tokens = {kind: warmup[kind]["_generation"].tokens for kind in RUNTIME_KINDS}
    if "hf" in engines:
        tokens["hf"] = warmup["hf"]["_tokens"]
        checks["hf_tokens_match_unpruned"] = tokens["hf"] == tokens["unpruned"]
        checks["hf_prompt_tokens_match"] = engines["hf"].prompt_length == len(first.input_ids)
    load_s = {kind: round(engine.load_s, 3) for kind, engine in engines.items()}
    for engine in engines.values():
        engine.close()
    engines.clear()
    gc.collect()

    rss = None if settings.skip_rss else measure_rss(settings, [k for k in KINDS if k != "hf" or not settings.skip_hf],
                                                     builds)
    load = measure_load(settings, builds)

    summary = summarize(measured["samples"], settings.new_tokens)
    report = {
        "config": {
            "model": settings.model, "checkpoint": str(checkpoint), "threads": settings.threads,
            "repeats": settings.repeats, "new_tokens": settings.new_tokens, "prompt": settings.prompt,
            "prompt_tokens": len(first.input_ids), "text_tokens": text_tokens, "image_tokens": n_image,
            "kept_image_tokens": kept, "schedules": {kind: preset(PAIR[kind]).to_dict() for kind in RUNTIME_KINDS},
            "builds": builds, "weights": {"format": settings.weights, "block_size": block_size},
            "hf": None if settings.skip_hf else "transformers LlavaForConditionalGeneration, fp32, eager",
            "ttft_method": TTFT_METHOD, "total_method": TOTAL_METHOD, "length_method": LENGTH_METHOD,
            "prefill_method": "the runtime's timings['prefill_total'] (vision, embed, prefill_inputs, segments, "
                              "scorers, head); samples from both runs of each repetition (TTFT and full)",
            "decode_method": "the runtime's timings['decode_per_token'] (median ms per decode step) of the full run",
            "ratio_method": "median over runs made side by side of each run's ratio; ratios_of_medians for comparison",
            "rss_method": RSS_METHOD, "load_method": LOAD_METHOD, "pause_s": settings.pause,
            "load_s_in_process": load_s,
            "machine": machine_info(), "loadavg_before": load_before, "loadavg_after": loadavg(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "wall_s": None,
        },
        "flops": {"text_tokens": text_tokens, "whole_with_iga_ratio": flops.whole_with_iga_ratio,
                  "report": flops.to_dict()},
        **summary,
        "rss": rss,
        "load": {"samples_s": load, "median_s": {kind: median(v) for kind, v in load.items()},
                 "pruned_over_unpruned": paired_ratio(load["pruned"], load["unpruned"])},
        "batched_decode": batched,
        "checks": checks,
        "warmup": {kind: {**public(value), "token_ids": tokens[kind]} for kind, value in warmup.items()},
        "samples": measured["samples"],
    }
    rss_ratio = None if rss is None else ratio(rss["pruned"]["peak_rss_bytes"], rss["unpruned"]["peak_rss_bytes"])
    scorer_flops_share = ratio(flops.iga_tflops, flops.whole_with_iga_tflops)
    report["scorers"] = {"time_share": scorer_share(measured["samples"]["pruned"]),
                         "flops_share": scorer_flops_share}
    report["targets"] = targets(summary["ratios"], flops.whole_with_iga_ratio, rss_ratio=rss_ratio,
                                load_ratio=report["load"]["pruned_over_unpruned"],
                                scorer_time_share=report["scorers"]["time_share"],
                                scorer_flops_share=scorer_flops_share, batched_decode=batched)
    report["config"]["wall_s"] = round(time.time() - started, 1)
    return report
