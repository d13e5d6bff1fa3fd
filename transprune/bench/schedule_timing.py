"""Part 2 of the report: every measured schedule's build timed by the runtime, side by side.

One build per schedule (``<exports>/<model>-<schedule>``, reused or exported as
:mod:`transprune.bench.builds` says), then in one process the torch-free runtime times every
schedule, interleaved within each repetition (order reversed every other repetition), EOS ignored
so every run makes exactly ``new_tokens`` tokens. A schedule whose build fails to export, load or
run is recorded in ``failed`` (name -> message) and the others go on. Peak RSS: a fresh process
per schedule (:mod:`transprune.bench.rss`).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from .builds import build_dir, ensure_build
from .engines import DEFAULT_PROMPT, RuntimeEngine, scorer_prefill_ms
from .machine import available_bytes, loadavg
from .output import fmt, log
from .rss import peak_rss_in_fresh_process
from .schedules import SCHEDULES
from .stats import in_turn, median, paired_ratio, ratio

PROMPT = DEFAULT_PROMPT
# "--load auto" keeps every pipeline loaded when this many times the builds' file sizes fit in
# half the available memory (onnxruntime holds the weights plus its arenas; the bench model's
# paper build of 1.8 GB peaked at 3.3 GB RSS).
RESIDENT_FACTOR = 1.9


# -- builds ----------------------------------------------------------------------------------------

def ensure_builds(*, model: str, exports: Path, schedules: list[str], checkpoint: Path, reexport: bool,
                  failed: dict) -> dict:
    """-> {schedule: {path, reused, export_s}}; one stderr line per build (plus the exporter's steps).

    A schedule whose export fails goes into ``failed`` (name -> message) and the others go on: the
    report shows it as not measured and the script exits 1."""
    builds = {}
    for number, name in enumerate(schedules, 1):
        log(f"build {number}/{len(schedules)}: {name}")
        try:
            builds[name] = ensure_build(model=model, out=build_dir(exports, model, name), schedule=SCHEDULES[name],
                                        checkpoint=checkpoint, reexport=reexport)
        except Exception as exc:  # noqa: BLE001 - any failure of one export is reported, not fatal to the rest
            failed[name] = note_failure(name, "export", exc)
    return builds


def note_failure(name: str, stage: str, exc: Exception) -> str:
    message = f"{stage} failed: {type(exc).__name__}: {exc}"
    log(f"{name}: {message}")
    return message


def build_bytes(path: Path) -> int:
    """Bytes of the graphs and their external weights: what onnxruntime loads."""
    return sum(f.stat().st_size for f in path.iterdir() if ".onnx" in f.name)


def keep_all_loaded(mode: str, builds: dict) -> tuple[bool, str]:
    """-> (keep every pipeline loaded?, why)."""
    if mode != "auto":
        return mode == "all", f"--load {mode}"
    needed = RESIDENT_FACTOR * sum(build_bytes(Path(b["path"])) for b in builds.values())
    available = available_bytes()
    if available is None:
        return True, "auto: available memory unknown, kept all loaded"
    fits = needed < available / 2
    return fits, (f"auto: all {len(builds)} builds need about {needed / 2**30:.1f} GiB loaded, "
                  f"{available / 2**30:.1f} GiB available -> {'all loaded' if fits else 'one at a time'}")


# -- timing ----------------------------------------------------------------------------------------

def open_warm(path: Path, image, *, threads: int, new_tokens: int, verify: bool):
    """A runtime engine on ``path`` (EOS ignored) after one uncounted generation -> (engine, warm-up)."""
    engine = RuntimeEngine(path, threads, verify=verify)
    return engine, engine.run(image, PROMPT, new_tokens)


def sample_of(run: dict, n_image: int, rep: int, position: int) -> dict:
    generation = run["_generation"]
    return {"repeat": rep, "position": position, "wall_ms": run["wall_ms"], "prefill_ms": run["prefill_ms"],
            "decoder_prefill_ms": run["decoder_prefill_ms"], "decode_ms_per_token": run["decode_ms_per_token"],
            "scorer_prefill_ms": scorer_prefill_ms(run["timings"]),
            "decode_steps": run["decode_steps"], "new_tokens": run["new_tokens"],
            "finish_reason": run["finish_reason"],
            "kept_image_tokens": [n_image, *(len(k) for k in generation.kept)], "timings": run["timings"]}


def measure(builds: dict, image, *, threads: int, new_tokens: int, repeats: int, pause: float, keep_loaded: bool,
            failed: dict) -> dict:
    """Opens and warms up every build once, then ``repeats`` repetitions each timing every schedule
    once, interleaved. A build that does not open or run goes into ``failed`` and out of the timing.

    -> {"first": {name: the warm-up generation's facts}, "samples": {name: [sample, ...]}, "load_s": ...}."""
    first, load_s, engines = {}, {}, {}
    for name, build in builds.items():
        log(f"loading and warming up {name}")
        try:
            engine, warm = open_warm(Path(build["path"]), image, threads=threads, new_tokens=new_tokens, verify=True)
        except Exception as exc:  # noqa: BLE001 - e.g. a build the runtime refuses; reported, the rest go on
            failed[name] = note_failure(name, "load or warm-up", exc)
            continue
        generation = warm["_generation"]
        first[name] = {"input_ids": generation.input_ids, "tokens": generation.tokens, "kept": generation.kept,
                       "n_image": engine.pipeline.build.n_image, "manifest_image_tokens": engine.pipeline.image_tokens}
        load_s[name] = [round(engine.load_s, 3)]
        if keep_loaded:
            engines[name] = engine
        else:
            engine.close()
    names = list(first)
    samples, loadavgs = {name: [] for name in names}, []
    for rep in range(repeats):
        order = in_turn(names, rep)
        for position, name in enumerate(order):
            if keep_loaded:
                engine = engines[name]
            else:  # load afresh (checksums were verified above) and warm up before the timed run
                engine, _ = open_warm(Path(builds[name]["path"]), image, threads=threads, new_tokens=new_tokens,
                                      verify=False)
                load_s[name].append(round(engine.load_s, 3))
            time.sleep(pause)
            run = engine.run(image, PROMPT, new_tokens)
            samples[name].append(sample_of(run, first[name]["n_image"], rep, position))
            if not keep_loaded:
                engine.close()
                gc.collect()
        loadavgs.append(loadavg())
        log(f"[{rep + 1}/{repeats}] " + "; ".join(
            f"{n} {samples[n][-1]['prefill_ms']:.1f}/{fmt(samples[n][-1]['decode_ms_per_token'])} ms"
            for n in order) + " (prefill/decode per token)")
    for engine in engines.values():
        engine.close()
    engines.clear()
    gc.collect()
    return {"first": first, "samples": samples, "load_s": load_s, "loadavg": loadavgs}


# -- figures ---------------------------------------------------------------------------------------

def summarize(samples: dict, flops: dict) -> dict:
    """Medians per schedule and the paired ratios to none (median of per-repetition ratios)."""
    ref = samples["none"]
    out = {}
    for name, runs in samples.items():
        def values(key, runs=runs):
            return [r[key] for r in runs]

        prefill_ratio = paired_ratio(values("prefill_ms"), [r["prefill_ms"] for r in ref])
        out[name] = {
            "prefill_ms": median(values("prefill_ms")),
            "decoder_prefill_ms": median(values("decoder_prefill_ms")),
            "scorer_prefill_ms": median(values("scorer_prefill_ms")),
            "decode_ms_per_token": median(values("decode_ms_per_token")),
            "wall_ms": median(values("wall_ms")),
            "prefill_over_none": prefill_ratio,
            "decoder_prefill_over_none": paired_ratio(values("decoder_prefill_ms"),
                                                      [r["decoder_prefill_ms"] for r in ref]),
            "decode_over_none": paired_ratio(values("decode_ms_per_token"), [r["decode_ms_per_token"] for r in ref]),
            "flops_ratio": flops[name]["whole_with_iga_ratio"],
            "prefill_over_flops": ratio(prefill_ratio, flops[name]["whole_with_iga_ratio"]),
            "new_tokens_min": min(values("new_tokens")),
        }
    return out


def measured_flops(model_facts, names, text_tokens: int) -> dict:
    """The measured model's FLOPs report per schedule, for the prompt's real text-token count."""
    from transprune.flops import flops_report

    out = {}
    for name in names:
        report = flops_report(model=model_facts, schedule=SCHEDULES[name], text_tokens=text_tokens)
        out[name] = {**report.to_dict(), "whole_with_iga_ratio": report.whole_with_iga_ratio}
    return out


def kept_checks(first: dict, samples: dict) -> dict:
    """Per schedule: the kept image-token counts measured, what the schedule says, and whether they agree."""
    out = {}
    for name, facts in first.items():
        n_image = facts["n_image"]
        expected = [n_image, *SCHEDULES[name].keep_counts(n_image)]
        measured = [n_image, *(len(k) for k in facts["kept"])]
        every_run = all(s["kept_image_tokens"] == measured for s in samples[name])
        out[name] = {"measured": measured, "schedule": expected, "manifest": facts["manifest_image_tokens"],
                     "ok": measured == expected == facts["manifest_image_tokens"] and every_run}
    return out


def measure_rss(builds: dict, *, threads: int, new_tokens: int) -> dict:
    """Peak RSS of each build, each in a fresh process. -> {schedule: {"build": path, **reading}}."""
    out = {}
    for number, (name, build) in enumerate(builds.items(), 1):
        log(f"peak RSS {number}/{len(builds)}: {name} in a fresh process")
        out[name] = {"build": build["path"], **peak_rss_in_fresh_process(build=build["path"], threads=threads,
                                                                         new_tokens=new_tokens, prompt=PROMPT)}
    return out
