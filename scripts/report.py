#!/usr/bin/env python3
"""One benchmark report: the paper's FLOPs figures and measured prefill/decode/memory, with plots.

    python scripts/report.py [--model tiny|bench] [--repeats N] [--new-tokens N] [--threads N]
        [--exports DIR] [--docs DIR] [--out JSON] [--schedules NAME ...] [--skip-rss] [--quick]
        [--load auto|all|each] [--reexport]

Writes ``DIR/BENCHMARKS.md`` (``--docs``, default ``docs``) with four PNG plots beside it, and the
JSON of everything (``--out``, default ``exports/report.json``). Progress goes to stderr.

1. FLOPs, paper convention (``transprune.flops``), always complete because it is arithmetic:
   LLaVA-1.5-7B and LLaVA-NeXT-7B under paper, ttv-only, iga-only, the paper's Table 9 layer
   shifts, a keep-ratio sweep and none; image-token baseline and pruned TFLOPs, ratio, whole-prompt
   ratio (64 text tokens), whole prompt + IGA ratio, and the paper's published figures beside them.
2. Measured on a runnable synthetic model (``--model``): one build per schedule in
   ``--exports`` (``<model>-<schedule>``; reused when its manifest's schedule and checkpoint
   match, otherwise exported without validation), then in this one process the torch-free
   runtime (onnxruntime backend, ``--threads``) times every schedule, interleaved within each
   repetition (order reversed every other repetition), EOS ignored so every run makes exactly
   ``--new-tokens`` tokens. Prefill (the runtime's ``timings['prefill_total']``) and decode
   ms/token are medians over ``--repeats``; ratios to ``none`` are medians of the ratios of runs
   made side by side, next to each schedule's whole-prompt + IGA FLOPs ratio for the prompt's real
   text-token count. Peak RSS: a fresh subprocess per schedule (this script with the hidden
   ``--rss-probe BUILD``), VmHWM of /proc/self/status.
3. Plots (matplotlib, Agg): prefill/none vs FLOPs ratio with y = x; FLOPs ratio vs final keep
   ratio for the sweep; decode ms/token per schedule; peak RSS per schedule.

``--quick`` (CI): measures only none and paper, 1 repetition, 2 new tokens (each extra tiny export
costs about 40 s on 2 cores). ``--load``: the bench model's builds do not all fit in 23 GiB at
once, so by default each pipeline is loaded, warmed up and timed in turn when they would not fit.

Exit status: 0; 2 for a bad argument or when the ``none`` build fails; 1 when another schedule's
build failed to export or load (the report names it and measures the rest) or when the kept
image-token counts differ from a schedule's keep counts. Timings are never judged here: on a shared machine they are noise,
which is why everything measured is compared as ratios of interleaved runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# scripts/ is not a package; bench_runtime holds the helpers this report shares with the runtime
# benchmark (build reuse, the EOS-free runtime engine, peak-RSS readings, machine facts).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_runtime as bench  # noqa: E402

from transprune.errors import TransPruneError  # noqa: E402
from transprune.schedule import PRESETS, Schedule  # noqa: E402

MODELS = ("tiny", "bench")
FLOPS_MODELS = ("llava-1.5-7b", "llava-next-7b")
FLOPS_TEXT_TOKENS = 64
PAPER_PRUNE = (7, 9, 12)
PAPER_RATIOS = (0.875, 0.625, 0.125)
TABLE9_SHIFTS = ((5, 7, 10), (6, 8, 11), (8, 10, 13), (9, 11, 14))
SWEEP_RATIOS = ((0.875, 0.625, 0.25), (0.875, 0.75, 0.5))
# The paper's published prefill figures (TFLOPs, image tokens only), as quoted in the project brief
# and DESIGN.md section 2.
PUBLISHED = {("llava-1.5-7b", "paper"): (3.82, 1.56, 0.408), ("llava-next-7b", "paper"): (20.83, 8.33, None)}
PROMPT = bench.DEFAULT_PROMPT
DEFAULT_REPEATS, DEFAULT_NEW_TOKENS = 3, 16
QUICK_REPEATS, QUICK_NEW_TOKENS = 1, 2
PLOTS = {"prefill": "bench_prefill_vs_flops.png", "sweep": "bench_flops_vs_keep.png",
         "decode": "bench_decode.png", "memory": "bench_peak_rss.png"}
# "--load auto" keeps every pipeline loaded when this many times the builds' file sizes fit in
# half the available memory (onnxruntime holds the weights plus its arenas; the bench model's
# paper build of 1.8 GB peaked at 3.3 GB RSS).
RESIDENT_FACTOR = 1.9
log = bench.log


# -- schedules -------------------------------------------------------------------------------------

def shift_schedule(prune: tuple[int, ...]) -> Schedule:
    """A Table 9 layer shift: the paper's ratios, TTV accumulated from the first to the last prune layer."""
    return Schedule(accumulate=range(prune[0], prune[-1] + 1), prune=prune, ratios=PAPER_RATIOS,
                    criterion="ttv+iga", name="shift-" + "-".join(map(str, prune)))


def sweep_schedule(ratios: tuple[float, ...]) -> Schedule:
    """The paper's layers and criterion with other keep ratios."""
    return Schedule(accumulate=range(PAPER_PRUNE[0], PAPER_PRUNE[-1] + 1), prune=PAPER_PRUNE, ratios=ratios,
                    criterion="ttv+iga", name="sweep-" + "-".join(f"{r:g}" for r in ratios))


def catalog() -> dict[str, Schedule]:
    """Every schedule this report knows, by name, in table order."""
    schedules = {name: PRESETS[name] for name in ("paper", "ttv-only", "iga-only")}
    schedules.update((s.name, s) for s in map(shift_schedule, TABLE9_SHIFTS))
    schedules.update((s.name, s) for s in map(sweep_schedule, SWEEP_RATIOS))
    schedules["none"] = PRESETS["none"]
    return schedules


SCHEDULES = catalog()
# shift-9-11-14 prunes after layer 14, which tiny (14 layers) does not allow, so the default
# measured shifts are two that fit both runnable models.
MEASURED = ("none", "paper", "ttv-only", "iga-only", "shift-5-7-10", "shift-8-10-13",
            "sweep-0.875-0.625-0.25", "sweep-0.875-0.75-0.5")
QUICK = ("none", "paper")
SWEEP = ("paper", *(sweep_schedule(r).name for r in SWEEP_RATIOS))


# -- arguments -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench", choices=MODELS,
                        help="synthetic model to export and time (default: bench; tiny for CI)")
    parser.add_argument("--repeats", type=int, help=f"timed repetitions after a warm-up (default: "
                                                    f"{DEFAULT_REPEATS}, --quick {QUICK_REPEATS})")
    parser.add_argument("--new-tokens", type=int, help=f"tokens each timed generation makes (default: "
                                                       f"{DEFAULT_NEW_TOKENS}, --quick {QUICK_NEW_TOKENS})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="onnxruntime threads (default: os.cpu_count())")
    parser.add_argument("--exports", type=Path, default=Path("exports"),
                        help="where the builds go, DIR/<model>-<schedule> (default: exports)")
    parser.add_argument("--docs", type=Path, default=Path("docs"),
                        help="where BENCHMARKS.md and the plots go (default: docs)")
    parser.add_argument("--out", type=Path, default=Path("exports") / "report.json",
                        help="JSON of everything (default: exports/report.json)")
    parser.add_argument("--schedules", nargs="+", metavar="NAME",
                        help=f"schedules to measure (none is always added, as the reference); one of "
                             f"{', '.join(SCHEDULES)} (default: {' '.join(MEASURED)}; --quick: {' '.join(QUICK)})")
    parser.add_argument("--skip-rss", action="store_true", help="do not measure peak RSS")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI smoke run: measure {' and '.join(QUICK)} only, {QUICK_REPEATS} repetition, "
                             f"{QUICK_NEW_TOKENS} new tokens (the FLOPs table stays complete)")
    parser.add_argument("--load", choices=("auto", "all", "each"), default="auto",
                        help="all: keep every pipeline loaded; each: load, warm up, time and close a "
                             "schedule's pipeline at each of its turns (for when they do not all fit in "
                             "memory); auto: all if they fit (default)")
    parser.add_argument("--reexport", action="store_true", help="export every build again even if it exists")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds to sleep before each timed run so the previous run's threads are idle "
                             "(default: 0.1)")
    parser.add_argument("--rss-probe", type=Path, metavar="BUILD", help=argparse.SUPPRESS)
    return parser


def resolve_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parses and checks everything that can be checked before any work (exit 2 on a bad argument)."""
    from transprune.presets import model_preset

    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    if args.new_tokens is None:
        args.new_tokens = QUICK_NEW_TOKENS if args.quick else DEFAULT_NEW_TOKENS
    for name in ("repeats", "new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.pause < 0:
        parser.error(f"--pause must be >= 0, got {args.pause}")
    if args.rss_probe:
        return args
    names = args.schedules or (QUICK if args.quick else MEASURED)
    unknown = [n for n in names if n not in SCHEDULES]
    if unknown:
        parser.error(f"unknown schedule(s) {', '.join(unknown)}; choose from {', '.join(SCHEDULES)}")
    if "none" not in names:  # every measured figure is relative to the unpruned build
        log("adding schedule none: measured timings are reported relative to it")
    args.schedules = ["none", *dict.fromkeys(n for n in names if n != "none")]
    facts = model_preset(args.model)
    for name in args.schedules:
        try:
            SCHEDULES[name].check_model(num_layers=facts.text.num_layers, n_image=facts.n_image_tokens)
        except TransPruneError as exc:
            parser.error(f"schedule {name} does not fit --model {args.model}: {exc}")
    return args


# -- 1. FLOPs, paper convention --------------------------------------------------------------------

def flops_rows() -> list[dict]:
    """Every (model, schedule) of the FLOPs table, with the published figures where there are any."""
    from transprune.flops import flops_report
    from transprune.presets import model_preset

    rows = []
    for model in FLOPS_MODELS:
        preset = model_preset(model)
        for name, schedule in SCHEDULES.items():
            report = flops_report(model=preset, schedule=schedule, text_tokens=FLOPS_TEXT_TOKENS)
            published = PUBLISHED.get((model, name))
            rows.append({
                "model": model, "schedule": name, "n_image_tokens": preset.n_image_tokens,
                "kept": [preset.n_image_tokens, *schedule.keep_counts(preset.n_image_tokens)],
                "baseline_tflops": report.baseline_tflops, "pruned_tflops": report.pruned_tflops,
                "ratio": report.ratio, "whole_ratio": report.whole_ratio,
                "whole_with_iga_ratio": report.whole_with_iga_ratio, "text_tokens": FLOPS_TEXT_TOKENS,
                "published": None if published is None else dict(zip(("baseline_tflops", "pruned_tflops", "ratio"),
                                                                      published)),
                "matches_published": None if published is None else matches_published(report, published),
                "report": report.to_dict()})
    return rows


def matches_published(report, published: tuple) -> bool:
    """Whether our figures round to the published ones at the precision they were published with."""
    baseline, pruned, ratio = published
    same = round(report.baseline_tflops, 2) == baseline and round(report.pruned_tflops, 2) == pruned
    return same and (ratio is None or round(report.ratio, 3) == ratio)


# -- 2. builds -------------------------------------------------------------------------------------

def build_path(exports: Path, model: str, schedule: str) -> Path:
    return exports / f"{model}-{schedule}"


def ensure_builds(args, checkpoint: Path, failed: dict) -> dict:
    """-> {schedule: {path, reused, export_s}}; one stderr line per build (plus the exporter's steps).

    A schedule whose export fails goes into ``failed`` (name -> message) and the others go on: the
    report shows it as not measured and the script exits 1."""
    builds = {}
    for number, name in enumerate(args.schedules, 1):
        log(f"build {number}/{len(args.schedules)}: {name}")
        try:
            builds[name] = bench.ensure_build(model=args.model, out=build_path(args.exports, args.model, name),
                                              schedule=SCHEDULES[name], checkpoint=checkpoint,
                                              reexport=args.reexport)
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


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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


# -- 2. measuring ----------------------------------------------------------------------------------

def open_warm(args, path: Path, image, *, verify: bool):
    """A runtime engine on ``path`` (EOS ignored) after one uncounted generation -> (engine, warm-up)."""
    engine = bench.RuntimeEngine(path, args.threads, verify=verify)
    return engine, engine.run(image, PROMPT, args.new_tokens)


def sample_of(run: dict, n_image: int, rep: int, position: int) -> dict:
    generation = run["_generation"]
    return {"repeat": rep, "position": position, "wall_ms": run["wall_ms"], "prefill_ms": run["prefill_ms"],
            "decoder_prefill_ms": run["decoder_prefill_ms"], "decode_ms_per_token": run["decode_ms_per_token"],
            "scorer_prefill_ms": round(sum(v for k, v in run["timings"].items() if k.startswith("scorer_")), 3),
            "decode_steps": run["decode_steps"], "new_tokens": run["new_tokens"],
            "finish_reason": run["finish_reason"],
            "kept_image_tokens": [n_image, *(len(k) for k in generation.kept)], "timings": run["timings"]}


def measure(args, builds: dict, image, keep_loaded: bool, failed: dict) -> dict:
    """Opens and warms up every build once, then ``repeats`` repetitions each timing every schedule
    once, interleaved. A build that does not open or run goes into ``failed`` and out of the timing.

    -> {"first": {name: the warm-up generation's facts}, "samples": {name: [sample, ...]}, "load_s": ...}."""
    first, load_s, engines = {}, {}, {}
    for name, build in builds.items():
        log(f"loading and warming up {name}")
        try:
            engine, warm = open_warm(args, Path(build["path"]), image, verify=True)
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
    samples, loadavg = {name: [] for name in names}, []
    for rep in range(args.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for position, name in enumerate(order):
            if keep_loaded:
                engine = engines[name]
            else:  # load afresh (checksums were verified above) and warm up before the timed run
                engine, _ = open_warm(args, Path(builds[name]["path"]), image, verify=False)
                load_s[name].append(round(engine.load_s, 3))
            time.sleep(args.pause)
            run = engine.run(image, PROMPT, args.new_tokens)
            samples[name].append(sample_of(run, first[name]["n_image"], rep, position))
            if not keep_loaded:
                engine.close()
                gc.collect()
        loadavg.append(bench.loadavg())
        log(f"[{rep + 1}/{args.repeats}] " + "; ".join(
            f"{n} {samples[n][-1]['prefill_ms']:.1f}/{bench._fmt(samples[n][-1]['decode_ms_per_token'])} ms"
            for n in order) + " (prefill/decode per token)")
    for engine in engines.values():
        engine.close()
    engines.clear()
    gc.collect()
    return {"first": first, "samples": samples, "load_s": load_s, "loadavg": loadavg}


def summarize(samples: dict, flops: dict) -> dict:
    """Medians per schedule and the paired ratios to none (median of per-repetition ratios)."""
    ref = samples["none"]
    out = {}
    for name, runs in samples.items():
        def values(key, runs=runs):
            return [r[key] for r in runs]

        prefill_ratio = bench.paired_ratio(values("prefill_ms"), [r["prefill_ms"] for r in ref])
        out[name] = {
            "prefill_ms": bench.median(values("prefill_ms")),
            "decoder_prefill_ms": bench.median(values("decoder_prefill_ms")),
            "scorer_prefill_ms": bench.median(values("scorer_prefill_ms")),
            "decode_ms_per_token": bench.median(values("decode_ms_per_token")),
            "wall_ms": bench.median(values("wall_ms")),
            "prefill_over_none": prefill_ratio,
            "decoder_prefill_over_none": bench.paired_ratio(values("decoder_prefill_ms"),
                                                            [r["decoder_prefill_ms"] for r in ref]),
            "decode_over_none": bench.paired_ratio(values("decode_ms_per_token"),
                                                   [r["decode_ms_per_token"] for r in ref]),
            "flops_ratio": flops[name]["whole_with_iga_ratio"],
            "prefill_over_flops": bench._div(prefill_ratio, flops[name]["whole_with_iga_ratio"]),
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


# -- 2. peak memory --------------------------------------------------------------------------------

def rss_probe(args) -> int:
    """Hidden mode: open one build, run one generation, print one JSON line with this process's peak RSS."""
    from transprune.sample_image import sample_image

    image = sample_image()
    engine = bench.RuntimeEngine(args.rss_probe, args.threads)
    run = engine.run(image, PROMPT, args.new_tokens)
    hwm, maxrss = bench.vm_hwm_bytes(), bench.ru_maxrss_bytes()
    print(json.dumps({"build": str(args.rss_probe), "peak_rss_bytes": hwm if hwm is not None else maxrss,
                      "vm_hwm_bytes": hwm, "ru_maxrss_bytes": maxrss, "load_s": round(engine.load_s, 3),
                      "new_tokens": run["new_tokens"], "torch_imported": "torch" in sys.modules}))
    return 0


def measure_rss(args, builds: dict) -> dict:
    out = {}
    for number, (name, build) in enumerate(builds.items(), 1):
        log(f"peak RSS {number}/{len(builds)}: {name} in a fresh process")
        command = [sys.executable, str(Path(__file__).resolve()), "--rss-probe", build["path"],
                   "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"the --rss-probe subprocess for {name} failed (exit {done.returncode}):\n"
                               f"{done.stderr[-4000:]}")
        out[name] = json.loads(lines[-1])
    return out


# -- 3. plots --------------------------------------------------------------------------------------

def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path.name


def plot_prefill_vs_flops(report: dict, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    summary, text = report["measured"]["summary"], report["config"]["text_tokens"]
    xs = [summary[n]["flops_ratio"] for n in summary]
    ys = [summary[n]["prefill_over_none"] for n in summary]
    top = max(1.05, *xs, *ys) * 1.05
    ax.plot([0, top], [0, top], "--", color="grey", label="ideal: latency ratio = FLOPs ratio")
    ax.scatter(xs, ys, zorder=3, label="runtime prefill (whole chain)")
    ax.scatter([summary[n]["flops_ratio"] for n in summary], [summary[n]["decoder_prefill_over_none"] for n in summary],
               marker="x", zorder=3, label="decoder segments + scorers only")
    # labels alternate above and below the points, in x order, so that close neighbours stay legible
    for number, (name, x, y) in enumerate(sorted(zip(summary, xs, ys), key=lambda point: point[1])):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6 if number % 2 else -12), fontsize=8)
    ax.set(xlim=(0, top), ylim=(0, top), xlabel=f"FLOPs ratio to none (whole prompt + IGA, {text} text tokens; x none)",
           ylabel="prefill latency / none (median of paired ratios; x none)",
           title=f"Prefill latency vs FLOPs, {report['config']['model']} model, {report['config']['threads']} "
                 f"thread(s), onnxruntime CPU")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_flops_vs_keep(report: dict, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    rows = {(r["model"], r["schedule"]): r for r in report["flops_table"]}
    sweep = sorted(SWEEP, key=lambda n: SCHEDULES[n].ratios[-1])
    final = [SCHEDULES[n].ratios[-1] for n in sweep]
    for key, label in (("ratio", "paper convention (image tokens)"),
                       ("whole_with_iga_ratio", f"whole prompt + IGA ({FLOPS_TEXT_TOKENS} text tokens)")):
        ax.plot(final, [rows[("llava-1.5-7b", n)][key] for n in sweep], "o-", label=f"LLaVA-1.5-7B, {label}")
    summary = report["measured"]["summary"]
    measured = [n for n in sweep if n in summary]
    top = 1.0
    if measured:
        model, text = report["config"]["model"], report["config"]["text_tokens"]
        ax.plot([SCHEDULES[n].ratios[-1] for n in measured], [summary[n]["flops_ratio"] for n in measured], "s:",
                label=f"{model}, whole prompt + IGA ({text} text tokens)")
        ax.plot([SCHEDULES[n].ratios[-1] for n in measured], [summary[n]["prefill_over_none"] for n in measured],
                "^", markersize=9, label=f"{model}, measured prefill / none")
        top = max(top, *(summary[n]["prefill_over_none"] for n in measured))
    paper = rows[("llava-1.5-7b", "paper")]
    ax.annotate(f"paper: {paper['ratio']:.1%}", (PAPER_RATIOS[-1], paper["ratio"]), textcoords="offset points",
                xytext=(6, -14), fontsize=8)
    # each tick names the whole ratio triple: the sweep changes more than the last ratio
    ax.set_xticks(final, [f"{x:g}\n(" + ", ".join(f"{r:g}" for r in SCHEDULES[n].ratios) + ")"
                          for n, x in zip(sweep, final)], fontsize=7)
    ax.set(xlim=(0, 0.6), ylim=(0, top * 1.05), xlabel="final keep ratio (fraction of the original image tokens)",
           ylabel="prefill FLOPs or latency, ratio to none (x none)",
           title="Keep-ratio sweep: prune after layers 7, 9, 12, TTV+IGA")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return save(fig, path)


def bars(values: dict, *, ylabel: str, title: str, path: Path, digits: int) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = list(values)
    drawn = ax.bar(range(len(names)), [values[n] for n in names], color="tab:blue")
    ax.bar_label(drawn, labels=[f"{values[n]:.{digits}f}" for n in names], fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set(xlabel="schedule", ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def write_plots(report: dict, docs: Path) -> dict:
    """-> {plot: file name in docs, or None when there was nothing to plot}."""
    config, summary = report["config"], report["measured"]["summary"]
    where = f"{config['model']} model, {config['threads']} thread(s)"
    out = {"prefill": plot_prefill_vs_flops(report, docs / PLOTS["prefill"]),
           "sweep": plot_flops_vs_keep(report, docs / PLOTS["sweep"]),
           "decode": bars({n: s["decode_ms_per_token"] for n, s in summary.items()}, digits=1,
                          ylabel="decode latency (ms/token, median)", path=docs / PLOTS["decode"],
                          title=f"Decode per token by schedule, {where}"),
           "memory": None}
    rss = report["measured"]["rss"]
    if rss:
        out["memory"] = bars({n: r["peak_rss_bytes"] / 2**20 for n, r in rss.items()}, digits=0,
                             ylabel="peak RSS (MiB, VmHWM)", path=docs / PLOTS["memory"],
                             title=f"Peak memory by schedule (one process each), {where}")
    return out


# -- 4. markdown -----------------------------------------------------------------------------------

def one_line(message: str, limit: int = 600) -> str:
    """A failure message fit for a markdown list item (the JSON keeps it whole)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _x(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def flops_markdown(rows: list[dict]) -> list[str]:
    body = []
    for r in rows:
        schedule = SCHEDULES[r["schedule"]]
        published = r["published"]
        cell = "-"
        if published:
            cell = f"{published['baseline_tflops']:.2f} -> {published['pruned_tflops']:.2f} TFLOPs"
            if published["ratio"] is not None:
                cell += f" ({published['ratio']:.1%})"
        body.append([r["model"], r["schedule"], ",".join(map(str, schedule.prune)) or "-",
                     schedule.criterion if schedule.prune else "-", " -> ".join(map(str, r["kept"])),
                     f"{r['baseline_tflops']:.2f}", f"{r['pruned_tflops']:.2f}", _pct(r["ratio"]),
                     _pct(r["whole_ratio"]), _pct(r["whole_with_iga_ratio"]), cell])
    lines = table(["model", "schedule", "prune after", "score", "image tokens", "baseline TFLOPs (image tokens)",
                   "pruned TFLOPs", "ratio", f"whole-prompt ratio ({FLOPS_TEXT_TOKENS} text)",
                   "whole prompt + IGA ratio", "published (paper)"], body)
    lines.append("")
    for r in rows:
        if r["published"] is None:
            continue
        p = r["published"]
        verdict = ("matches the published figure at its precision" if r["matches_published"]
                   else "does NOT match the published figure; the flops model gives the numbers in the table")
        lines.append(f"- {r['model']}, {r['schedule']}: ours {r['baseline_tflops']:.2f} -> {r['pruned_tflops']:.2f} "
                     f"TFLOPs ({r['ratio']:.1%}), published {p['baseline_tflops']:.2f} -> {p['pruned_tflops']:.2f}: "
                     f"{verdict}.")
    return lines


def measured_markdown(report: dict) -> list[str]:
    config, m = report["config"], report["measured"]
    summary, kept, rss = m["summary"], m["kept"], m["rss"] or {}
    text = config["text_tokens"]
    prefill_rows = [[name, " -> ".join(map(str, kept[name]["measured"])), _x(s["flops_ratio"]),
                     bench._fmt(s["prefill_ms"]), _x(s["prefill_over_none"]), _x(s["prefill_over_flops"], 2),
                     bench._fmt(s["decoder_prefill_ms"]), _x(s["decoder_prefill_over_none"]),
                     bench._fmt(s["scorer_prefill_ms"])]
                    for name, s in summary.items()]
    lines = table(["schedule", "image tokens kept (measured)", f"FLOPs ratio (whole + IGA, {text} text)",
                   "prefill (ms)", "prefill / none", "prefill ratio / FLOPs ratio",
                   "decoder segments + scorers (ms)", "decoder / none", "of which scorers (ms)"], prefill_rows)
    lines.append("")
    none_rss = rss.get("none", {}).get("peak_rss_bytes")
    decode_rows = [[name, bench._fmt(s["decode_ms_per_token"]), _x(s["decode_over_none"]),
                    bench._fmt(rss[name]["peak_rss_bytes"] / 2**20, 0) if name in rss else "not measured",
                    _x(bench._div(rss[name]["peak_rss_bytes"], none_rss), 2) if name in rss else "-",
                    bench._fmt(bench.median(m["load_s"][name]), 2)]
                   for name, s in summary.items()]
    lines += table(["schedule", "decode (ms/token)", "decode / none", "peak RSS (MiB)", "RSS / none",
                    "load (s, median)"], decode_rows)
    return lines


def markdown(report: dict, plots: dict) -> str:
    config, machine = report["config"], report["config"]["machine"]
    m = report["measured"]
    command = "python scripts/report.py " + " ".join(config["argv"])
    quick = " (`--quick`: a smoke run, not a benchmark)" if config["quick"] else ""
    tiny = (" The timings come from the **tiny test model** (hidden size 64): they show that the pipeline "
            "works, not how fast pruning makes a real model." if config["model"] == "tiny" else "")
    lines = [
        "# Benchmarks", "",
        f"Generated by `{command}`{quick} on {config['started_at']} in {config['wall_s']} s; the raw data is in "
        f"`{config['json']}`.{tiny}", "",
        "## Machine", "",
        f"- CPU: {machine['cpu_model']}, {machine['cpu_count']} logical cores ({machine['usable_cpus']} usable), "
        f"{machine['memory_gib']} GiB memory",
        f"- load average (1/5/15 min): {config['loadavg_before']} before, {config['loadavg_after']} after; 1-min "
        f"after each repetition: {', '.join(str(a[0]) for a in config['loadavg_per_repetition'] if a)} "
        f"(a shared machine: other work ran meanwhile)",
        f"- {machine['platform']}, Python {machine['python']}, onnxruntime {machine['versions'].get('onnxruntime')}, "
        f"numpy {machine['versions'].get('numpy')}",
        "", "## Configuration", "",
        f"- measured model: `{config['model']}` ({config['model_facts']})",
        f"- prompt: \"{config['prompt']}\" on the sample image: {config['text_tokens']} text + "
        f"{config['image_tokens']} image tokens",
        f"- {config['threads']} onnxruntime thread(s), {config['repeats']} repetition(s) after a warm-up, "
        f"{config['new_tokens']} new tokens per generation (EOS ignored)",
        f"- pipelines: {config['load_policy']}",
        f"- measured schedules: {', '.join(config['schedules'])}",
        *(f"- **not measured: {name}**, {one_line(message)}" for name, message in m["failed"].items()),
        "", "## 1. Prefill FLOPs in the paper's convention", "",
        "One multiply-add = one FLOP; per layer 4nd² + 2n²d + 3ndm with n the image tokens alive "
        "(`transprune.flops`, DESIGN.md section 2). Whole-prompt ratios add 64 text tokens to n; "
        "\"+ IGA\" adds the instruction-guided attention projections of each prune point. Table 9 shifts "
        "(`shift-a-b-c`) keep the paper's ratios 0.875, 0.625, 0.125 and accumulate TTV from the first to the "
        "last prune layer; `sweep-*` keep the paper's layers with other keep ratios.", "",
        *flops_markdown(report["flops_table"]),
        "", f"## 2. Measured on `{config['model']}`", "",
        f"Medians over {config['repeats']} repetition(s). Ratios to none are medians of the ratios of runs made "
        f"side by side in the same repetition. The FLOPs ratio is this model's whole prompt + IGA ratio for the "
        f"prompt's {config['text_tokens']} text tokens; \"prefill ratio / FLOPs ratio\" is 1.00 when latency falls "
        f"exactly as FLOPs do.", "",
        *measured_markdown(report), "",
        "Kept image tokens per stage equal the schedule's keep counts for every schedule and run: "
        + ("yes." if report["checks"]["kept_matches_schedule"] else "**NO** (see `measured.kept` in the JSON)."),
        "", "## Plots", "",
    ]
    captions = {"prefill": "Prefill latency relative to none vs the FLOPs ratio",
                "sweep": "FLOPs ratio vs final keep ratio (keep-ratio sweep)",
                "decode": "Decode ms/token per schedule", "memory": "Peak memory per schedule"}
    for key, caption in captions.items():
        lines.append(f"![{caption}]({plots[key]})" if plots[key] else f"- {caption}: not measured (`--skip-rss`).")
        lines.append("")
    lines += ["## How measured", "", how_measured(report)]
    return "\n".join(lines) + "\n"


def how_measured(report: dict) -> str:
    config = report["config"]
    loading = ("" if config["keep_loaded"] else
               f" (pipelines one at a time, {config['load_policy']}: each timed run came right after its "
               f"pipeline was loaded afresh and warmed up with an uncounted generation)")
    return (
        f"Each schedule is its own build (`{config['exports']}/<model>-<schedule>`, fp32, exported without "
        f"validation; a build whose manifest has the same schedule and checkpoint is reused). One process "
        f"runs the torch-free runtime (`Pipeline.from_dir(..., backend=\"onnxruntime\", threads="
        f"{config['threads']})`) on every build: one uncounted warm-up generation per loaded pipeline, then "
        f"each repetition times one greedy generation of exactly {config['new_tokens']} tokens (EOS disabled) "
        f"per schedule, in an order reversed every other repetition so that drift on the shared machine falls "
        f"on all schedules alike{loading}. Prefill is the runtime's own per-graph timer summed (vision, embedding, "
        f"prefill inputs, decoder segments, scorers, head); decode is its median ms per decode step. The FLOPs "
        f"model counts only the decoder layers' matrix products (and the IGA projections) and assumes their "
        f"time falls with the token count. The measured ratio sits above it where that does not hold: the "
        f"scorers (their own column) are extra work, and a decoder segment's time on CPU does not shrink "
        f"in proportion to its tokens at these sizes (every layer's weights are read once per call whatever "
        f"the token count; a likely cause, not measured separately here). The vision tower and head, not "
        f"counted either, are in the prefill column and not in the decoder column. Peak RSS is the "
        f"VmHWM of a fresh process per schedule that loads the build and runs one generation. These are CPU "
        f"figures from a shared {config['machine']['cpu_count']}-core machine with other work running (load "
        f"averages above): ratios of interleaved runs are meaningful, absolute milliseconds only roughly; no "
        f"GPU or TensorRT figure is here.")


# -- machine ---------------------------------------------------------------------------------------

def machine_facts() -> dict:
    facts = bench.machine_info()
    facts["cpu_model"] = cpu_model() or facts["processor"] or facts["machine"]
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    facts["memory_gib"] = None if total is None else round(total / 2**30, 1)
    return facts


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# -- main ------------------------------------------------------------------------------------------

def run(args, argv: list[str]) -> dict:
    from transprune.checkpoints import resolve_checkpoint
    from transprune.sample_image import sample_image

    started = time.time()
    load_before = bench.loadavg()
    flops_table = flops_rows()
    checkpoint, model_facts = resolve_checkpoint(args.model)
    failed: dict[str, str] = {}
    builds = ensure_builds(args, checkpoint, failed)
    keep_loaded, load_policy = keep_all_loaded(args.load, builds)
    log(f"pipelines: {load_policy}")
    measured = measure(args, builds, sample_image(), keep_loaded, failed)
    if "none" in failed:
        raise TransPruneError(f"schedule none is the reference of every measured figure and its {failed['none']}")
    names = list(measured["first"])  # the schedules that exported, loaded and ran
    first = measured["first"]["none"]
    text_tokens = len(first["input_ids"]) - first["n_image"]
    flops = measured_flops(model_facts, names, text_tokens)
    summary = summarize(measured["samples"], flops)
    kept = kept_checks(measured["first"], measured["samples"])
    rss = None if args.skip_rss else measure_rss(args, {n: builds[n] for n in names})
    t = model_facts.text
    return {
        "config": {
            "argv": argv, "model": args.model, "checkpoint": str(checkpoint),
            "model_facts": f"{t.num_layers} layers, hidden {t.hidden_size}, FFN {t.intermediate_size}, "
                           f"{model_facts.n_image_tokens} image tokens",
            "threads": args.threads, "repeats": args.repeats, "new_tokens": args.new_tokens, "quick": args.quick,
            "prompt": PROMPT, "prompt_tokens": len(first["input_ids"]), "text_tokens": text_tokens,
            "image_tokens": first["n_image"], "schedules": names, "requested_schedules": args.schedules,
            "exports": str(args.exports),
            "json": str(args.out), "load_policy": load_policy, "keep_loaded": keep_loaded, "pause_s": args.pause,
            "machine": machine_facts(), "loadavg_before": load_before, "loadavg_after": bench.loadavg(),
            "loadavg_per_repetition": measured["loadavg"],
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)), "wall_s": None,
        },
        "flops_table": flops_table,
        "measured": {"schedules": {n: SCHEDULES[n].to_dict() for n in names}, "builds": builds, "failed": failed,
                     "flops": flops, "summary": summary, "kept": kept, "rss": rss, "load_s": measured["load_s"],
                     "tokens": {n: f["tokens"] for n, f in measured["first"].items()},
                     "samples": measured["samples"]},
        "checks": {"kept_matches_schedule": all(k["ok"] for k in kept.values()),
                   "every_run_made_new_tokens": all(s["new_tokens"] == args.new_tokens
                                                    for runs in measured["samples"].values() for s in runs),
                   "flops_match_published": {f"{r['model']}/{r['schedule']}": r["matches_published"]
                                             for r in flops_table if r["published"]}},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = resolve_args(parser, argv)
    if args.rss_probe:
        return rss_probe(args)
    started = time.time()
    try:
        report = run(args, argv)
    except TransPruneError as exc:  # a user-facing problem (checkpoint, build, disk): one line, exit 2
        print(f"report.py: error: {exc}", file=sys.stderr)
        return 2
    args.docs.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, args.docs)
    report["plots"] = {key: None if name is None else str(args.docs / name) for key, name in plots.items()}
    report["config"]["wall_s"] = round(time.time() - started, 1)
    (args.docs / "BENCHMARKS.md").write_text(markdown(report, plots))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    log(f"wrote {args.docs / 'BENCHMARKS.md'}, {len([p for p in plots.values() if p])} plots and {args.out}")
    status = 0
    if report["measured"]["failed"]:
        log(f"not measured: {', '.join(report['measured']['failed'])} (see the report)")
        status = 1
    if not report["checks"]["kept_matches_schedule"]:
        log("kept image tokens do NOT match the schedules' keep counts (see measured.kept)")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
