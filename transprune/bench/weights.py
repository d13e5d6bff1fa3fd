"""The weights benchmark (``scripts/bench_weights.py``): the same model and schedule with its
weights in fp32, fp16 and int4 (each form onnxruntime can run), timed side by side on onnxruntime's
CPU provider.

The variants (``VARIANTS``; fp32 is always measured, as the reference of every comparison):

* ``fp32``, ``fp16``: ``transprune-export --dtype fp32|fp16`` (weights and activations);
* ``int4``: ``--weights int4`` (fp32 activations), the standard ``DequantizeLinear + MatMul`` form
  as exported, which onnxruntime fuses into its ``MatMulNBits`` at load with its default
  ``session.qdq_matmulnbits_accuracy_level`` (4: activations rounded to int8 per block inside the
  kernel);
* ``int4-acc0``: the same build with that session option at 0 (float math);
* ``int4-nbits``, ``int4-nbits-acc0``: the int4 build converted to explicit ``MatMulNBits`` nodes
  (``export/int4_matmulnbits.py``: the same quantized values, repacked) with ``accuracy_level`` 4
  and 0 in the graph.

Measured per variant: build bytes (every file its manifest lists), session load time (a fresh
process per load, :mod:`transprune.bench.load_time`, ``repeats`` of them interleaved across the
variants after one uncounted warm-up load of each), prefill ms and decode ms per token (the
runtime's own timings of a generation of ``new_tokens`` tokens, EOS ignored; one warm-up, then
``repeats`` repetitions interleaved across the variants, the order reversed every other one), peak
RSS (a fresh process per variant, :mod:`transprune.bench.rss`), and, against fp32, from one greedy
generation of ``agreement_tokens`` tokens: how many tokens are identical (and whether the first
is), the kept image-token indices' overlap per prune stage, and the largest |logit difference| of
the first step. The bench model has random weights: agreement says how much the format changes
the chain's decisions, not how good an answer is.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .builds import ensure_build
from .engines import RuntimeEngine, public
from .export_and_runtime import convert_to_matmulnbits, greedy_chain, int4_block_size
from .load_time import load_time_in_fresh_process
from .machine import loadavg, machine_info
from .output import fmt, log
from .rss import peak_rss_in_fresh_process
from .stats import flat, in_turn, median, paired_ratio

SCHEDULE = "paper"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    label: str
    dtype: str  # the build's --dtype (activations, and weights where not int4)
    form: str  # "float", "QDQ" (DequantizeLinear + MatMul, as exported) or "MatMulNBits" (converted)
    accuracy_level: int | None  # QDQ: the session option (None: onnxruntime's default); MatMulNBits: the attribute
    build: str  # which build it runs: several variants share one

    @property
    def session_accuracy_level(self) -> int | None:
        """``int4_accuracy_level`` for the runtime: the QDQ form's session option only."""
        return self.accuracy_level if self.form == "QDQ" else None


VARIANTS = {v.name: v for v in (
    Variant("fp32", "fp32", "fp32", "float", None, "fp32"),
    Variant("fp16", "fp16", "fp16", "float", None, "fp16"),
    Variant("int4", "int4 QDQ (onnxruntime fuses it, default level 4)", "fp32", "QDQ", None, "int4"),
    Variant("int4-acc0", "int4 QDQ, accuracy level 0", "fp32", "QDQ", 0, "int4"),
    Variant("int4-nbits", "int4 MatMulNBits, level 4", "fp32", "MatMulNBits", 4, "int4-nbits-acc4"),
    Variant("int4-nbits-acc0", "int4 MatMulNBits, level 0", "fp32", "MatMulNBits", 0, "int4-nbits-acc0"),
)}
REFERENCE = "fp32"
LOAD_METHOD = ("a fresh process per load (python -m transprune.bench.load_time): Pipeline.from_dir(verify=False) "
               "after the imports, i.e. the manifest, the tokenizer and one onnxruntime session per graph with "
               "its load-time graph optimizations; one uncounted warm-up load per variant puts the files in the "
               "page cache; repeats interleaved across variants")
TIMING_METHOD = ("the runtime's timings of generate(max_new_tokens=N), EOS ignored: prefill_total and the median "
                 "decode step; one warm-up per variant, then repeats interleaved across variants, order reversed "
                 "every other repetition")
RSS_METHOD = ("a fresh process per variant (python -m transprune.bench.rss) loads it and runs one generation of N "
              "tokens; peak_rss_bytes = its VmHWM")
AGREEMENT_METHOD = ("one greedy generation of agreement_tokens tokens per variant by the runtime's chain (EOS "
                    "ignored), compared with fp32's: tokens identical position by position (and the first), the "
                    "leading run of identical tokens, kept image-token indices |ours & fp32| / |fp32| per prune "
                    "stage, max |logit - fp32 logit| and cosine of the first step's logits")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run measures (the script's command line)."""

    model: str
    threads: int
    repeats: int
    new_tokens: int
    agreement_tokens: int
    prompt: str
    exports: Path
    block_size: int | None = None
    variants: tuple[str, ...] = tuple(VARIANTS)
    reexport: bool = False
    skip_rss: bool = False
    pause: float = 0.1

    @classmethod
    def from_args(cls, args) -> Settings:
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def chosen(self) -> list[Variant]:
        """The variants to measure, fp32 first (always there: every comparison is against it)."""
        names = [REFERENCE, *(n for n in VARIANTS if n in self.variants and n != REFERENCE)]
        return [VARIANTS[n] for n in names]


# -- builds --------------------------------------------------------------------------------------

def build_path(exports: Path, model: str, build: str) -> Path:
    return exports / f"{Path(model).name}-{SCHEDULE}-{build}"


def ensure_builds(settings: Settings, checkpoint: Path, variants: list[Variant], block: int) -> dict:
    """Every build the variants run, exported or converted where missing or stale (``--reexport``:
    always); int4 in blocks of ``block``. -> {build: {path, reused, export_s}}."""
    from transprune.schedule import preset

    schedule = preset(SCHEDULE)
    wanted = {v.build: v for v in variants}
    if any(v.form == "MatMulNBits" for v in variants):
        wanted.setdefault("int4", VARIANTS["int4"])  # what they are converted from
    out = {}
    for build in ("fp32", "fp16", "int4"):
        if build in wanted:
            out[build] = ensure_build(model=settings.model, out=build_path(settings.exports, settings.model, build),
                                      schedule=schedule, checkpoint=checkpoint, dtype=wanted[build].dtype,
                                      weight_format="int4" if build == "int4" else "float", block_size=block,
                                      reexport=settings.reexport)
    for build, variant in wanted.items():
        if variant.form != "MatMulNBits":
            continue
        path = build_path(settings.exports, settings.model, build)
        source = Path(out["int4"]["path"])
        reason = ("--reexport" if settings.reexport else None if out["int4"]["reused"] else
                  f"{source.name} was just exported") or conversion_stale_reason(path, source, variant.accuracy_level)
        if reason is None:
            log(f"reusing {path}")
            out[build] = {"path": str(path), "reused": True, "export_s": None}
            continue
        log(f"converting {source.name} to MatMulNBits (accuracy level {variant.accuracy_level}) into {path} ({reason})")
        started = time.perf_counter()
        convert_to_matmulnbits(source, path, accuracy_level=variant.accuracy_level)
        out[build] = {"path": str(path), "reused": False, "export_s": round(time.perf_counter() - started, 1)}
    return out


def conversion_stale_reason(path: Path, source: Path, accuracy_level: int) -> str | None:
    """Why the MatMulNBits build in ``path`` is not the conversion of ``source`` at ``accuracy_level``."""
    try:
        weights = json.loads((path / "manifest.json").read_text()).get("weights") or {}
    except (OSError, ValueError):
        return "no build there"
    origin = weights.get("converted_from") or {}
    if weights.get("form") != "MatMulNBits" or weights.get("accuracy_level") != accuracy_level:
        return f"it is {weights.get('form')} at accuracy level {weights.get('accuracy_level')}"
    if origin.get("manifest_sha256") != file_sha256(source / "manifest.json"):
        return f"{source} changed since it was converted"
    return None


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def build_bytes(path: Path) -> dict:
    """Bytes of a build's graph files (with their external data) and of everything its manifest lists."""
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    graphs = sum((Path(path) / name).stat().st_size for g in manifest["graphs"] for name in g["sha256"])
    other = sum((Path(path) / name).stat().st_size for name in (manifest.get("processor_files") or {}))
    return {"graphs": graphs, "total": graphs + other + (Path(path) / "manifest.json").stat().st_size}


# -- measurements --------------------------------------------------------------------------------

def measure_load(settings: Settings, variants: list[Variant], paths: dict) -> dict:
    """One warm-up load of each variant (not counted: it reads the files into the page cache), then
    ``repeats`` fresh-process loads of each, interleaved. -> {variant: [reading, ...]}."""
    for variant in variants:
        load_time_in_fresh_process(paths[variant.name], threads=settings.threads,
                                   int4_accuracy_level=variant.session_accuracy_level)
    out = {v.name: [] for v in variants}
    for rep in range(settings.repeats):
        order = in_turn(variants, rep)
        for variant in order:
            time.sleep(settings.pause)
            reading = load_time_in_fresh_process(paths[variant.name], threads=settings.threads,
                                                 int4_accuracy_level=variant.session_accuracy_level)
            out[variant.name].append({"repeat": rep, "load_ms": round(reading["load_s"] * 1e3, 2), **reading})
        log(f"[load {rep + 1}/{settings.repeats}] " + "; ".join(
            f"{v.name} {out[v.name][-1]['load_ms']:.0f} ms" for v in variants))
    return out


def measure_timing(settings: Settings, engines: dict, image) -> dict:
    """One warm-up per variant, then ``repeats`` interleaved repetitions. -> {"warmup", "samples"}."""
    names = list(engines)
    warmup, samples = {}, {name: [] for name in names}
    for name in names:
        log(f"warm-up: {name}")
        warmup[name] = public(engines[name].run(image, settings.prompt, settings.new_tokens))
    for rep in range(settings.repeats):
        order = in_turn(names, rep)
        for name in order:
            time.sleep(settings.pause)
            result = engines[name].run(image, settings.prompt, settings.new_tokens)
            samples[name].append({"repeat": rep, "order": order, **{key: result[key] for key in (
                "wall_ms", "prefill_ms", "decoder_prefill_ms", "decode_ms_per_token", "decode_steps", "new_tokens")}})
        log(f"[{rep + 1}/{settings.repeats}] " + "; ".join(
            f"{name}: prefill {samples[name][-1]['prefill_ms']:.0f} ms, decode "
            f"{fmt(samples[name][-1]['decode_ms_per_token'])} ms/token" for name in names))
    return {"warmup": warmup, "samples": samples}


def agreement(ours: dict, reference: dict) -> dict:
    """How a variant's greedy generation compares with fp32's (see ``AGREEMENT_METHOD``)."""
    same = [a == b for a, b in zip(ours["tokens"], reference["tokens"])]
    prefix = same.index(False) if False in same else len(same)
    a, b = ours["first_logits"].astype(np.float64), reference["first_logits"].astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if np.linalg.norm(a) and np.linalg.norm(b) else None
    return {
        "tokens": len(same), "tokens_identical": sum(same),
        "token_agreement": sum(same) / len(same) if same else None,
        "first_token_identical": bool(same and same[0]), "identical_prefix": prefix,
        "kept_overlap": [float(len(np.intersect1d(k, r)) / len(r)) if len(r) else 1.0
                         for k, r in zip(ours["kept"], reference["kept"])],
        "max_logit_error_first_step": float(np.abs(a - b).max()),
        "first_logits_cosine": cosine,
        "token_ids": ours["tokens"],
    }


def measure_rss(settings: Settings, variants: list[Variant], paths: dict) -> dict:
    out = {}
    for variant in variants:
        log(f"peak RSS: {variant.name} in a fresh process")
        out[variant.name] = peak_rss_in_fresh_process(build=paths[variant.name], threads=settings.threads,
                                                      new_tokens=settings.new_tokens, prompt=settings.prompt,
                                                      int4_accuracy_level=variant.session_accuracy_level)
    return out


def summarize(variants: list[Variant], samples: dict, loads: dict) -> dict:
    """Medians per variant; paired ratios (runs of the same repetition) against fp32 and, for the
    other int4 variants, against the int4 QDQ form as exported."""
    medians, ratios = {}, {}
    for v in variants:
        runs = samples[v.name]
        medians[v.name] = {"load_ms": median(flat(loads[v.name], "load_ms")),
                           "prefill_ms": median(flat(runs, "prefill_ms")),
                           "decoder_prefill_ms": median(flat(runs, "decoder_prefill_ms")),
                           "decode_ms_per_token": median(flat(runs, "decode_ms_per_token")),
                           "wall_ms": median(flat(runs, "wall_ms")),
                           "decode_steps_min": min(flat(runs, "decode_steps"), default=None)}
    for v in variants:
        entry = {}
        for base in (REFERENCE, "int4"):
            if base == v.name or base not in samples or (base == "int4" and v.form == "float"):
                continue
            entry[f"over_{base}"] = {
                "load": paired_ratio(flat(loads[v.name], "load_ms"), flat(loads[base], "load_ms")),
                "prefill": paired_ratio(flat(samples[v.name], "prefill_ms"), flat(samples[base], "prefill_ms")),
                "decode": paired_ratio(flat(samples[v.name], "decode_ms_per_token"),
                                       flat(samples[base], "decode_ms_per_token")),
            }
        ratios[v.name] = entry
    return {"medians": medians, "ratios": ratios}


def run(settings: Settings) -> dict:
    """Builds (reused, exported or converted), load times, timings, agreement with fp32 and peak
    RSS: the whole JSON report."""
    from transprune.checkpoints import resolve_checkpoint
    from transprune.sample_image import sample_image

    started = time.time()
    load_before = loadavg()
    variants = settings.chosen()
    checkpoint, _ = resolve_checkpoint(settings.model)
    block = settings.block_size or int4_block_size(checkpoint)
    builds = ensure_builds(settings, checkpoint, variants, block)
    paths = {v.name: Path(builds[v.build]["path"]) for v in variants}
    sizes = {v.name: build_bytes(paths[v.name]) for v in variants}
    image = sample_image()

    loads = measure_load(settings, variants, paths)

    engines = {}
    for v in variants:
        log(f"loading {v.name} from {paths[v.name]}")
        engines[v.name] = RuntimeEngine(paths[v.name], settings.threads, int4_accuracy_level=v.session_accuracy_level)
    generations = {}
    for v in variants:
        log(f"greedy generation of {settings.agreement_tokens} tokens: {v.name}")
        generations[v.name] = greedy_chain(engines[v.name].pipeline, image, settings.prompt, settings.agreement_tokens)
    agreements = {v.name: agreement(generations[v.name], generations[REFERENCE]) for v in variants}
    image_tokens = list(engines[REFERENCE].pipeline.image_tokens or [])
    measured = measure_timing(settings, engines, image)
    for engine in engines.values():
        engine.close()
    engines.clear()
    gc.collect()

    rss = None if settings.skip_rss else measure_rss(settings, variants, paths)
    summary = summarize(variants, measured["samples"], loads)
    report = {
        "config": {
            "model": settings.model, "checkpoint": str(checkpoint), "schedule": SCHEDULE, "threads": settings.threads,
            "repeats": settings.repeats, "new_tokens": settings.new_tokens,
            "agreement_tokens": settings.agreement_tokens, "prompt": settings.prompt,
            "block_size": block, "block_size_from": "--block-size" if settings.block_size else
            "the largest of 128 or below that divides every quantized weight's input channels",
            "image_tokens": image_tokens,
            "variants": {v.name: {**dataclasses.asdict(v), "path": str(paths[v.name])} for v in variants},
            "builds": builds, "load_method": LOAD_METHOD, "timing_method": TIMING_METHOD,
            "rss_method": RSS_METHOD, "agreement_method": AGREEMENT_METHOD, "pause_s": settings.pause,
            "machine": machine_info(), "loadavg_before": load_before, "loadavg_after": loadavg(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "wall_s": None,
        },
        "bytes": sizes,
        **summary,
        "agreement": agreements,
        "rss": rss,
        "load_samples": loads,
        "warmup": measured["warmup"],
        "samples": measured["samples"],
    }
    report["config"]["wall_s"] = round(time.time() - started, 1)
    return report
