#!/usr/bin/env python3
"""Runtime benchmark: the torch-free runtime, pruned and unpruned, against transformers eager.

    python scripts/bench_runtime.py [--model bench] [--repeats 5] [--new-tokens 32] [--threads N]
        [--exports DIR] [--out FILE] [--prompt TEXT] [--reexport] [--skip-hf] [--skip-rss]

Exports ``--model`` twice with the onnxruntime exporter (schedule ``paper`` into
``DIR/<model>-paper``, schedule ``none`` into ``DIR/<model>-none``; default DIR ``exports``,
without validation) unless a build whose manifest has the same schedule and checkpoint is
already there (``--reexport`` forces a fresh export). Then, in this one process:

* pruned = the runtime on the paper build, unpruned = the runtime on the ``none`` build (both
  ``Pipeline.from_dir(..., backend="onnxruntime", threads=--threads)``), hf = transformers'
  ``LlavaForConditionalGeneration`` (fp32, eager attention, ``torch.set_num_threads(--threads)``);
* one warm-up generation of each (not counted), then ``--repeats`` repetitions; each repetition
  runs, interleaved, generate(max_new_tokens=1) of pruned, unpruned and hf (time to first token),
  then generate(max_new_tokens=N) of each (total time; the runtime's own timings give prefill
  and decode per token). The order is reversed every other repetition so that drift on a shared
  machine falls on all three alike;
* EOS is ignored (the bench model is random), so every run generates exactly N tokens; each
  sample still records how many tokens and decode steps it actually ran.

Reported (medians over the repetitions; ratios are medians of the per-run ratios of runs made
side by side): prefill pruned/unpruned next to the FLOPs ratio of the same configuration (whole
prompt, IGA scoring included, the prompt's real text-token count) and measured/ideal; decode ms
per token; time to first token and total time of all three, HF/pruned; peak RSS of each, measured
in a fresh subprocess per kind (this script re-run with the hidden ``--rss-probe KIND``) so that
they do not contaminate each other (VmHWM on Linux, where ru_maxrss is inherited from the parent
across fork+exec; ru_maxrss is recorded too). Targets are printed as met / not met; nothing fails
on them.

stdout: a markdown table (for the README); stderr: progress; ``--out`` (default
``exports/bench_runtime.json``): the configuration, the machine, every raw sample, the medians,
the ratios and the targets. Not a timed test: timings on a shared machine are noisy, which is why
everything is compared as ratios of interleaved runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

KINDS = ("pruned", "unpruned", "hf")
RUNTIME_KINDS = ("pruned", "unpruned")
SCHEDULES = {"pruned": "paper", "unpruned": "none"}
LABELS = {"pruned": "runtime, pruned (paper)", "unpruned": "runtime, unpruned", "hf": "transformers eager"}
DEFAULT_PROMPT = "Describe the picture in detail: what is in it, the colours, and where everything is."
TTFT_METHOD = ("wall time of generate(max_new_tokens=1) = prefill + the first token; the runtime's time includes "
               "its image preprocessing and tokenization, HF's is model.generate on inputs the processor "
               "encoded beforehand")
TOTAL_METHOD = "wall time of generate(max_new_tokens=N), same inputs as time to first token"
LENGTH_METHOD = ("EOS ignored so every run generates exactly N tokens: the runtime's build.eos_token_id set to "
                 "None, HF generate(eos_token_id=None); each sample records the tokens it actually generated")
RSS_METHOD = ("a fresh subprocess per kind (this script with --rss-probe KIND) loads it and runs one generation of N "
              "tokens; peak_rss_bytes = its VmHWM (/proc/self/status) on Linux, since ru_maxrss is inherited from "
              "the parent across fork+exec; ru_maxrss (bytes) is recorded next to it")
PREFILL_TOLERANCE = 0.05  # |measured/ideal - 1|
TTFT_SPEEDUP = 3.0  # HF TTFT / pruned TTFT
DECODE_SLACK = 1.05  # pruned decode ms <= unpruned * this


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_runtime.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench",
                        help="model preset to export and time (default: bench; tiny for a quick smoke run)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions, after one warm-up (default: 5)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens each full generation makes (default: 32)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for onnxruntime and torch (default: os.cpu_count())")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question about the sample picture")
    parser.add_argument("--exports", type=Path, default=Path("exports"),
                        help="where the builds go: DIR/<model>-paper and DIR/<model>-none (default: exports)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON report to write (default: exports/bench_runtime.json)")
    parser.add_argument("--reexport", action="store_true", help="export both builds again even if they exist")
    parser.add_argument("--skip-hf", action="store_true", help="do not time transformers (nor measure its RSS)")
    parser.add_argument("--skip-rss", action="store_true", help="do not measure peak RSS")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds to sleep between timed runs, so one engine's spinning threads are idle "
                             "before the next starts (default: 0.1)")
    parser.add_argument("--rss-probe", choices=KINDS, help=argparse.SUPPRESS)
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    for name in ("repeats", "new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.pause < 0:
        parser.error("--pause must be >= 0")


# -- builds --------------------------------------------------------------------------------------

def build_dir(exports: Path, model: str, kind: str) -> Path:
    return exports / f"{Path(model).name}-{SCHEDULES[kind]}"


def stale_reason(out: Path, schedule, checkpoint: Path) -> str | None:
    """Why the build in ``out`` cannot be reused (None: it can)."""
    manifest_file = out / "manifest.json"
    if not manifest_file.is_file():
        return "no build there"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc})"
    from transprune.runtime.manifest import SCHEMA_VERSION

    if manifest.get("schema_version") != SCHEMA_VERSION:
        return f"its manifest schema is {manifest.get('schema_version')}, this transprune writes {SCHEMA_VERSION}"
    if manifest.get("schedule") != schedule.to_dict():
        return f"its schedule is {manifest.get('schedule')}, not {schedule.to_dict()}"
    exported_from = (manifest.get("model") or {}).get("checkpoint")
    if not exported_from or Path(exported_from).resolve() != checkpoint.resolve():
        return f"it was exported from {exported_from}, not {checkpoint}"
    if manifest.get("dtype") != "fp32":
        return f"its dtype is {manifest.get('dtype')}, not fp32"
    # an older exporter wrote other graphs (names, inputs, outputs): compare with today's specs
    from transprune.export.specs import ModelFacts, graph_specs

    try:
        facts = ModelFacts(**manifest["model"]["facts"])
        wanted = [(g.name, [t.name for t in g.inputs], [t.name for t in g.outputs])
                  for g in graph_specs(facts, schedule)]
        found = [(g["name"], [t["name"] for t in g["inputs"]], [t["name"] for t in g["outputs"]])
                 for g in manifest["graphs"]]
    except (KeyError, TypeError) as exc:
        return f"its manifest lacks {exc}"
    if found != wanted:
        return "an older exporter wrote it (its graphs' inputs or outputs differ from today's)"
    return None


def ensure_builds(args, checkpoint: Path) -> dict:
    """Exports what is missing or stale; -> {kind: {path, reused, export_s}}."""
    from transprune.schedule import preset

    return {kind: ensure_build(model=args.model, out=build_dir(args.exports, args.model, kind),
                               schedule=preset(SCHEDULES[kind]), checkpoint=checkpoint, reexport=args.reexport)
            for kind in RUNTIME_KINDS}


def ensure_build(*, model: str, out: Path, schedule, checkpoint: Path, reexport: bool = False) -> dict:
    """Reuses the fp32 build in ``out`` when its schedule and checkpoint match, else exports it there
    (without validation). -> {path, reused, export_s}. Shared with scripts/report.py."""
    from transprune.cli.export import ProgressBar

    reason = "--reexport" if reexport else stale_reason(out, schedule, checkpoint)
    if reason is None:
        log(f"reusing {out} (schedule {schedule.name})")
        return {"path": str(out), "reused": True, "export_s": None}
    from transprune.export.exporter import export_model

    log(f"exporting {model} with schedule {schedule.name} into {out} ({reason})")
    bar = ProgressBar()
    try:
        export_model(model=model, out=out, schedule=schedule, dtype="fp32", validate=False,
                     force=out.exists(), progress=lambda step, steps, label: bar(step, steps, f"{out.name}: {label}"))
    finally:
        bar.finish()
    log(f"exported {out} in {bar.elapsed():.0f} s")
    return {"path": str(out), "reused": False, "export_s": round(bar.elapsed(), 1)}


# -- the three engines -----------------------------------------------------------------------------

class RuntimeEngine:
    """The torch-free runtime on one build, EOS ignored."""

    def __init__(self, path: Path, threads: int, *, verify: bool = True) -> None:
        from transprune.runtime.pipeline import Pipeline

        started = time.perf_counter()
        self.pipeline = Pipeline.from_dir(path, backend="onnxruntime", verify=verify, threads=threads)
        self.load_s = time.perf_counter() - started
        self.pipeline.build.eos_token_id = None  # force the length: the bench model is random

    def run(self, image, prompt: str, new_tokens: int) -> dict:
        started = time.perf_counter()
        result = self.pipeline.generate(image, prompt, max_new_tokens=new_tokens)
        wall_ms = (time.perf_counter() - started) * 1e3
        timings = dict(result.timings)
        return {"wall_ms": round(wall_ms, 3), "new_tokens": len(result.tokens),
                "decode_steps": timings.get("decode_steps"), "finish_reason": result.finish_reason,
                "prefill_ms": timings["prefill_total"], "decoder_prefill_ms": decoder_prefill_ms(timings),
                "decode_ms_per_token": timings.get("decode_per_token"), "timings": timings,
                "_generation": result}

    def close(self) -> None:
        self.pipeline.close()


class HFEngine:
    """transformers' LlavaForConditionalGeneration, fp32, eager attention, EOS ignored."""

    def __init__(self, model: str, threads: int, image, prompt: str) -> None:
        import torch

        from transprune.checkpoints import load_llava
        from transprune.reference import encode_inputs

        torch.set_num_threads(threads)
        self.torch = torch
        started = time.perf_counter()
        self.loaded = load_llava(model)
        self.load_s = time.perf_counter() - started
        self.inputs = encode_inputs(self.loaded.processor, [image], [prompt])
        self.prompt_length = int(self.inputs["input_ids"].shape[1])

    def run(self, image, prompt: str, new_tokens: int) -> dict:
        with self.torch.no_grad():
            started = time.perf_counter()
            out = self.loaded.model.generate(**self.inputs, max_new_tokens=new_tokens, do_sample=False,
                                             pad_token_id=0, eos_token_id=None)
            wall_ms = (time.perf_counter() - started) * 1e3
        tokens = out[0, self.prompt_length:].tolist()
        return {"wall_ms": round(wall_ms, 3), "new_tokens": len(tokens), "_tokens": tokens}

    def close(self) -> None:
        del self.loaded


def decoder_prefill_ms(timings: dict) -> float:
    """Prefill time of the decoder segments and scorers only (what the FLOPs model counts)."""
    return round(sum(v for k, v in timings.items() if k.startswith(("segment_", "scorer_"))), 3)


def public(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if not k.startswith("_")}


# -- measuring -------------------------------------------------------------------------------------

def measure(args, engines: dict, image) -> dict:
    """Warm-up, then ``repeats`` interleaved repetitions. -> {"warmup": ..., "samples": ...}."""
    kinds = list(engines)
    warmup, samples = {}, {kind: [] for kind in kinds}
    for kind in kinds:
        log(f"warm-up: {LABELS[kind]}")
        warmup[kind] = engines[kind].run(image, args.prompt, args.new_tokens)
    for rep in range(args.repeats):
        order = kinds if rep % 2 == 0 else kinds[::-1]
        runs = {kind: {} for kind in kinds}
        for phase, new_tokens in (("ttft", 1), ("total", args.new_tokens)):
            for kind in order:
                time.sleep(args.pause)
                runs[kind][phase] = engines[kind].run(image, args.prompt, new_tokens)
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
        log(f"[{rep + 1}/{args.repeats}] " + "; ".join(
            f"{kind}: ttft {samples[kind][-1]['ttft_ms']:.1f} ms, total {samples[kind][-1]['total_ms']:.1f} ms"
            + (f", prefill {samples[kind][-1]['prefill_ms'][1]:.1f} ms, "
               f"decode {_fmt(samples[kind][-1]['decode_ms_per_token'])} ms/token" if kind in RUNTIME_KINDS else "")
            for kind in kinds))
    return {"warmup": warmup, "samples": samples}


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired_ratio(numerators, denominators) -> float | None:
    """Median of the ratios of runs made side by side."""
    return median([n / d for n, d in zip(numerators, denominators) if n is not None and d])


def flat(samples: list[dict], key: str) -> list:
    out = []
    for sample in samples:
        value = sample.get(key)
        out.extend(value if isinstance(value, list) else [value])
    return out


def summarize(samples: dict, new_tokens: int) -> dict:
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
        "prefill_pruned_over_unpruned": _div(medians["pruned"]["prefill_ms"], medians["unpruned"]["prefill_ms"]),
        "decode_pruned_over_unpruned": _div(medians["pruned"]["decode_ms_per_token"],
                                            medians["unpruned"]["decode_ms_per_token"]),
    }
    if hf:
        ratios_of_medians.update(ttft_hf_over_pruned=_div(medians["hf"]["ttft_ms"], medians["pruned"]["ttft_ms"]),
                                 total_hf_over_pruned=_div(medians["hf"]["total_ms"], medians["pruned"]["total_ms"]))
    return {"medians": medians, "ratios": ratios, "ratios_of_medians": ratios_of_medians}


def _div(a, b):
    return a / b if a is not None and b else None


def targets(ratios: dict, flops_ratio: float) -> dict:
    measured_over_ideal = _div(ratios["prefill_pruned_over_unpruned"], flops_ratio)
    hf = ratios.get("ttft_hf_over_pruned")
    decode = ratios["decode_pruned_over_unpruned"]
    return {
        "prefill_matches_flops": {
            "rule": f"|prefill ratio / FLOPs ratio - 1| <= {PREFILL_TOLERANCE}", "value": measured_over_ideal,
            "met": None if measured_over_ideal is None else abs(measured_over_ideal - 1) <= PREFILL_TOLERANCE},
        "ttft_vs_hf": {
            "rule": f"HF time to first token / pruned >= {TTFT_SPEEDUP:g}", "value": hf,
            "met": None if hf is None else hf >= TTFT_SPEEDUP},
        "decode_not_slower": {
            "rule": f"pruned decode ms/token <= {DECODE_SLACK} x unpruned", "value": decode,
            "met": None if decode is None else decode <= DECODE_SLACK},
    }


# -- peak RSS ----------------------------------------------------------------------------------------

def ru_maxrss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def vm_hwm_bytes() -> int | None:
    """Linux: this process's own peak RSS (VmHWM of /proc/self/status); None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_probe(args) -> int:
    """Hidden mode: load one engine, run one generation, print one JSON line with the peak RSS.

    Linux carries ru_maxrss across fork and exec: a child starts with its parent's high-water mark
    (here the benchmark process, which holds all three models), so ru_maxrss alone would report the
    parent's peak whenever that is the larger. VmHWM belongs to the address space exec created and
    is this probe's own; it is the figure reported where it exists, ru_maxrss is kept next to it."""
    at_start = ru_maxrss_bytes()
    from transprune.sample_image import sample_image

    image = sample_image()
    if args.rss_probe == "hf":
        engine = HFEngine(args.model, args.threads, image, args.prompt)
    else:
        engine = RuntimeEngine(build_dir(args.exports, args.model, args.rss_probe), args.threads)
    result = engine.run(image, args.prompt, args.new_tokens)
    hwm, maxrss = vm_hwm_bytes(), ru_maxrss_bytes()
    print(json.dumps({"kind": args.rss_probe, "peak_rss_bytes": hwm if hwm is not None else maxrss,
                      "vm_hwm_bytes": hwm, "ru_maxrss_bytes": maxrss, "ru_maxrss_at_start_bytes": at_start,
                      "load_s": round(engine.load_s, 3), "generate_ms": result["wall_ms"],
                      "new_tokens": result["new_tokens"], "torch_imported": "torch" in sys.modules}))
    return 0


def measure_rss(args, kinds) -> dict:
    out = {}
    for kind in kinds:
        log(f"peak RSS: {LABELS[kind]} in a fresh process")
        command = [sys.executable, str(Path(__file__).resolve()), "--rss-probe", kind, "--model", args.model,
                   "--exports", str(args.exports), "--threads", str(args.threads),
                   "--new-tokens", str(args.new_tokens), "--prompt", args.prompt]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"the --rss-probe {kind} subprocess failed (exit {done.returncode}):\n"
                               f"{done.stderr[-4000:]}")
        out[kind] = json.loads(lines[-1])
    return out


# -- report --------------------------------------------------------------------------------------------

def _fmt(value, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _met(target: dict) -> str:
    return "n/a" if target["met"] is None else ("met" if target["met"] else "NOT met")


def _decode_cell(medians: dict) -> str:
    if "decode_ms_per_token" in medians:
        return _fmt(medians["decode_ms_per_token"])
    estimate = medians.get("decode_ms_per_token_est")  # HF: (total - TTFT) / (N - 1), noise can make it <= 0
    return f"{_fmt(estimate)} (est.)" if estimate is not None and estimate > 0 else "-"


def markdown(report: dict) -> str:
    config, medians, ratios, goal = report["config"], report["medians"], report["ratios"], report["targets"]
    kinds = [k for k in KINDS if k in medians]
    n = config["new_tokens"]
    rss = report.get("rss") or {}
    header = ["", *(LABELS[k] for k in kinds), "ratio", "target"]
    rows = []
    flops = report["flops"]["whole_with_iga_ratio"]
    rows.append(["prefill (ms)", *(_fmt(medians[k].get("prefill_ms")) for k in kinds),
                 f"pruned/unpruned {_fmt(ratios['prefill_pruned_over_unpruned'], 3)}; FLOPs {flops:.3f}; "
                 f"measured/ideal {_fmt(goal['prefill_matches_flops']['value'], 3)}",
                 f"within {PREFILL_TOLERANCE:.0%} of FLOPs: {_met(goal['prefill_matches_flops'])}"])
    rows.append(["prefill, decoder segments + scorers only (ms)",
                 *(_fmt(medians[k].get("decoder_prefill_ms")) for k in kinds),
                 f"pruned/unpruned {_fmt(ratios['decoder_prefill_pruned_over_unpruned'], 3)}", ""])
    rows.append(["decode (ms/token)", *(_decode_cell(medians[k]) for k in kinds),
                 f"pruned/unpruned {_fmt(ratios['decode_pruned_over_unpruned'], 3)}",
                 f"<= {DECODE_SLACK:g}x unpruned: {_met(goal['decode_not_slower'])}"])
    hf_ttft = f"; HF/pruned {_fmt(ratios.get('ttft_hf_over_pruned'), 2)}x" if "hf" in kinds else ""
    rows.append(["time to first token (ms)", *(_fmt(medians[k]["ttft_ms"]) for k in kinds),
                 f"unpruned/pruned {_fmt(ratios['ttft_unpruned_over_pruned'], 2)}x{hf_ttft}",
                 f">= {TTFT_SPEEDUP:g}x faster than HF: {_met(goal['ttft_vs_hf'])}"])
    hf_total = f"; HF/pruned {_fmt(ratios.get('total_hf_over_pruned'), 2)}x" if "hf" in kinds else ""
    rows.append([f"total, {n} new tokens (ms)", *(_fmt(medians[k]["total_ms"]) for k in kinds),
                 f"unpruned/pruned {_fmt(ratios['total_unpruned_over_pruned'], 2)}x{hf_total}", ""])
    if rss:
        rows.append(["peak RSS (MiB)", *(_fmt(rss[k]["peak_rss_bytes"] / 2**20, 0) if k in rss else "-"
                                         for k in kinds), "", ""])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    machine = config["machine"]
    lines.append("")
    lines.append(f"Model `{config['model']}`, prompt of {config['text_tokens']} text + {config['image_tokens']} image "
                 f"tokens, image tokens kept {' -> '.join(map(str, config['kept_image_tokens']['pruned']))}; "
                 f"{config['threads']} thread{'s' if config['threads'] != 1 else ''} on {machine['cpu_count']} CPUs ({machine['processor'] or machine['machine']}); "
                 f"median of {config['repeats']} interleaved repetitions after a warm-up; onnxruntime "
                 f"{machine['versions'].get('onnxruntime')}, torch {machine['versions'].get('torch')}. "
                 f"Time to first token = generate(max_new_tokens=1).")
    return "\n".join(lines)


def machine_info() -> dict:
    versions = {}
    for package in ("onnxruntime", "torch", "transformers", "numpy", "transprune"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "versions": versions}


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(args) -> dict:
    from transprune.checkpoints import resolve_checkpoint
    from transprune.flops import flops_report
    from transprune.sample_image import sample_image
    from transprune.schedule import preset

    started = time.time()
    load_before = loadavg()
    checkpoint, model_facts = resolve_checkpoint(args.model)
    builds = ensure_builds(args, checkpoint)
    image = sample_image()

    engines = {}
    for kind in RUNTIME_KINDS:
        log(f"loading {LABELS[kind]} from {builds[kind]['path']}")
        engines[kind] = RuntimeEngine(Path(builds[kind]["path"]), args.threads)
    if not args.skip_hf:
        log(f"loading {LABELS['hf']} ({args.model}, fp32)")
        engines["hf"] = HFEngine(args.model, args.threads, image, args.prompt)

    measured = measure(args, engines, image)
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

    rss = None if args.skip_rss else measure_rss(args, [k for k in KINDS if k != "hf" or not args.skip_hf])

    summary = summarize(measured["samples"], args.new_tokens)
    report = {
        "config": {
            "model": args.model, "checkpoint": str(checkpoint), "threads": args.threads, "repeats": args.repeats,
            "new_tokens": args.new_tokens, "prompt": args.prompt, "prompt_tokens": len(first.input_ids),
            "text_tokens": text_tokens, "image_tokens": n_image, "kept_image_tokens": kept,
            "schedules": {kind: preset(SCHEDULES[kind]).to_dict() for kind in RUNTIME_KINDS},
            "builds": builds, "hf": None if args.skip_hf else "transformers LlavaForConditionalGeneration, fp32, eager",
            "ttft_method": TTFT_METHOD, "total_method": TOTAL_METHOD, "length_method": LENGTH_METHOD,
            "prefill_method": "the runtime's timings['prefill_total'] (vision, embed, prefill_inputs, segments, "
                              "scorers, head); samples from both runs of each repetition (TTFT and full)",
            "decode_method": "the runtime's timings['decode_per_token'] (median ms per decode step) of the full run",
            "ratio_method": "median over runs made side by side of each run's ratio; ratios_of_medians for comparison",
            "rss_method": RSS_METHOD, "pause_s": args.pause, "load_s": load_s,
            "machine": machine_info(), "loadavg_before": load_before, "loadavg_after": loadavg(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "wall_s": None,
        },
        "flops": {"text_tokens": text_tokens, "whole_with_iga_ratio": flops.whole_with_iga_ratio,
                  "report": flops.to_dict()},
        **summary,
        "rss": rss,
        "checks": checks,
        "warmup": {kind: {**public(value), "token_ids": tokens[kind]} for kind, value in warmup.items()},
        "samples": measured["samples"],
    }
    report["targets"] = targets(summary["ratios"], flops.whole_with_iga_ratio)
    report["config"]["wall_s"] = round(time.time() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.rss_probe:
        return rss_probe(args)
    out = args.out or Path("exports") / "bench_runtime.json"
    report = run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(markdown(report))
    print(f"\nJSON: {out}")
    for name, target in report["targets"].items():
        log(f"target {name}: {target['rule']}: value {_fmt(target['value'], 3)} -> {_met(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
