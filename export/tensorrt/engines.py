"""Building a plan's engines (TensorRT or TensorRT-RTX, through their builder API), and comparing
them with onnxruntime (TensorRT only, through polygraphy's comparator).

One build path serves both modules: ``network`` parses, checks, configures and builds; only the
module imported differs. TensorRT and polygraphy are imported inside the functions that need them:
the plan, the trtexec script and everything the tests check without either work here.

``--compare`` feeds every engine the inputs the onnxruntime chain really produced for a sample
image and prompt (prefill and two decode steps, recorded per graph and phase), because random
inputs mean nothing to the chain's index and mask tensors (``alive``, ``image_start``,
``attention_mask``) and would gather out of range.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from transprune.errors import TransPruneError
from transprune.files import DiskFull, write_atomic
from transprune.runtime.backend import Backend
from transprune.runtime.build import Build
from transprune.runtime.manifest import resolve_inside
from transprune.runtime.tensorrt.engines import Platform, import_tensorrt, running_platform, write_metadata

from .network import (add_profiles, build_to_file, check_inputs, configure, make_logger, parse_graph,
                      timing_cache_bytes)
from .plan import profiles_from_plan

DECODE_STEPS = 2


def build_engines(plan: dict, build: Build, engine_dir: Path, *, timing_cache: Path | None = None,
                  log=print) -> list[Path]:
    """Builds every engine of ``plan`` with the target's module (TensorRT or TensorRT-RTX), each
    checked against the manifest first, and writes its metadata beside it. TensorRT builds for the
    GPU it runs on; TensorRT-RTX needs no GPU and builds for the target's compute capabilities.
    Both build at the plan's ``builder_optimization_level`` (absent or None: the builder's default)."""
    target = plan["target"]
    module = target.get("module", "tensorrt")
    trt = import_tensorrt(module)
    if module == "tensorrt_rtx":
        platform = Platform(trt.__version__, None, "", module)  # ahead of time: no GPU is involved
        capabilities = [tuple(cc) for cc in target["compute_capabilities"]]
    else:
        platform, capabilities = running_platform(module), None
        wanted = tuple(target["compute_capability"])
        if platform.compute_capability != wanted:
            here = platform.compute_capability
            log(f"warning: this GPU is SM {here[0]}.{here[1]}, {target['name']} is SM {wanted[0]}.{wanted[1]}: these "
                f"engines will run only on GPUs like this one; build on the target for the target")
    # TensorRT times tactics on the GPU and keeps the results; TensorRT-RTX times nothing ahead of time
    timing_cache = None if module == "tensorrt_rtx" else (Path(timing_cache) if timing_cache
                                                           else engine_dir / plan["timing_cache"])
    cache = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else None
    logger = make_logger(trt, log=log)
    manifest_graphs = {g["name"]: g for g in build.manifest["graphs"]}
    precision, written = plan["precision"], []
    for number, engine in enumerate(plan["engines"], 1):
        started = time.perf_counter()
        graph, profiles = engine["graph"], profiles_from_plan(engine)
        log(f"[{number}/{len(plan['engines'])}] {graph}: building {precision} engine with {platform.product} "
            f"({len(profiles)} profile{'s' if len(profiles) > 1 else ''})")
        parsed = parse_graph(trt, resolve_inside(build.directory, engine["onnx"]), logger=logger,
                             strongly_typed=bool(plan.get("strongly_typed")))
        if not parsed.ok:
            raise TransPruneError(f"{graph}: the {parsed.checker} rejected {len(parsed.rejected)} node(s): "
                                  + "; ".join(r.describe() for r in parsed.rejected))
        check_inputs(parsed, graph=graph, manifest_inputs=manifest_graphs[graph]["inputs"],
                     shape_tensors={spec.name for spec in profiles[0].inputs if spec.value})
        config = configure(parsed, precision=precision, workspace_bytes=target["workspace_mib"] << 20,
                           compute_capabilities=capabilities, timing_cache=cache,
                           strongly_typed=bool(plan.get("strongly_typed")),
                           optimization_level=plan.get("builder_optimization_level"))
        add_profiles(parsed, config, profiles)
        path = resolve_inside(engine_dir, engine["engine"])
        try:
            size = build_to_file(parsed, config, graph=graph, path=path)
        except DiskFull as exc:  # atomic_writer names the file; this names the engine
            raise DiskFull(exc.path, f"the {graph} engine", remedy="pass --out on another disk") from None
        cache = timing_cache_bytes(config) if timing_cache is not None else None
        del parsed, config  # the builder's copy of the weights goes before the next graph's arrive
        seconds = time.perf_counter() - started
        write_metadata(engine, plan, path, platform, built_with=f"transprune ({module} builder API)",
                       build_seconds=seconds)
        written.append(path)
        log(f"    {path.name}: {size / 2**20:.1f} MiB in {seconds:.1f} s")
    if timing_cache is not None and cache:
        write_atomic(timing_cache, cache, what="the timing cache", remedy="pass --timing-cache on another disk")
    return written


class RecordingBackend(Backend):
    """Runs another backend's graphs through its ``run`` and keeps every graph's feeds by phase."""

    name = "recording"

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.build)
        self.inner = inner
        self.feeds: dict[tuple[str, str], list[dict[str, np.ndarray]]] = defaultdict(list)

    def run(self, graph: str, feeds: dict) -> dict:
        info = self.build.graphs[graph]
        names = {t.name for t in info.inputs}
        kept = {k: np.array(v, copy=True) for k, v in feeds.items() if k in names}
        self.feeds[(graph, info.call_phase(kept))].append(kept)
        return self.inner.run(graph, feeds)


def record_chain_feeds(build: Build, *, image=None, prompt: str = "Describe the image.",
                       decode_steps: int = DECODE_STEPS) -> dict[tuple[str, str], list[dict]]:
    """{(graph, phase): [feeds, ...]} of one onnxruntime generation of ``decode_steps`` + 1 tokens
    (the sample picture unless ``image`` is given)."""
    from transprune.runtime.ort_backend import OrtBackend
    from transprune.runtime.pipeline import Pipeline
    from transprune.sample_image import sample_image

    recorder = RecordingBackend(OrtBackend(build))
    try:
        Pipeline(build, recorder).generate(image if image is not None else sample_image(), prompt,
                                           max_new_tokens=decode_steps + 1)
    finally:
        recorder.inner.close()
    return dict(recorder.feeds)


def compare_engines(plan: dict, build: Build, engine_dir: Path, *, atol: float = 2e-2, rtol: float = 2e-2,
                    log=print) -> dict[str, dict]:
    """Runs every engine and its ONNX graph under onnxruntime on the recorded chain feeds (polygraphy
    Comparator, one run per phase with that phase's profile); returns {graph: {phase: passed}}."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    # the recorded generation must fit the engines: a prompt of the sample's length and at most
    # the answer length they were built for
    feeds = record_chain_feeds(build, decode_steps=max(0, min(DECODE_STEPS, plan["limits"]["max_new_tokens"] - 1)))
    results: dict[str, dict] = {}
    for engine in plan["engines"]:
        graph = engine["graph"]
        engine_bytes = resolve_inside(engine_dir, engine["engine"]).read_bytes()
        for index, profile in enumerate(engine["profiles"]):
            samples = feeds.get((graph, profile["phase"]), [])
            if not samples:
                continue
            runners = [TrtRunner(EngineFromBytes(engine_bytes), optimization_profile=index),
                       OnnxrtRunner(SessionFromOnnx(str(resolve_inside(build.directory, engine["onnx"]))))]
            run = Comparator.run(runners, data_loader=samples)
            passed = bool(Comparator.compare_accuracy(run, compare_func=CompareFunc.simple(atol=atol, rtol=rtol)))
            results.setdefault(graph, {})[profile["phase"]] = passed
            log(f"compare {graph} ({profile['phase']}, {len(samples)} inputs): {'PASSED' if passed else 'FAILED'}")
    return results

