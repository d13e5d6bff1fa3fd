"""Building a plan's engines with TensorRT through polygraphy, and comparing them with onnxruntime.

TensorRT and polygraphy are imported inside the functions that need them: the plan, the trtexec
script and everything the tests check here work without either.

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
from transprune.files import write_atomic
from transprune.runtime.backend import Backend
from transprune.runtime.build import Build
from transprune.runtime.manifest import resolve_inside
from transprune.runtime.tensorrt.engines import import_tensorrt, running_platform, write_metadata

from .plan import profiles_from_plan

DECODE_STEPS = 2


def build_engines(plan: dict, build: Build, engine_dir: Path, *, timing_cache: Path | None = None,
                  log=print) -> list[Path]:
    """Builds every engine of ``plan`` (polygraphy + TensorRT), then writes its metadata."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.backend.trt import Profile as PolygraphyProfile

    platform = running_platform()
    wanted = tuple(plan["target"]["compute_capability"])
    if platform.compute_capability != wanted:
        log(f"warning: this GPU is SM {platform.compute_capability[0]}.{platform.compute_capability[1]}, "
            f"{plan['target']['name']} is SM {wanted[0]}.{wanted[1]}: these engines will run only on GPUs like "
            f"this one; build on the target for the target")
    timing_cache = Path(timing_cache) if timing_cache else engine_dir / plan["timing_cache"]
    precision = plan["precision"]
    written = []
    for number, engine in enumerate(plan["engines"], 1):
        started = time.perf_counter()
        log(f"[{number}/{len(plan['engines'])}] {engine['graph']}: building {precision} engine "
            f"({len(engine['profiles'])} profile{'s' if len(engine['profiles']) > 1 else ''})")
        onnx_path = resolve_inside(build.directory, engine["onnx"])
        builder, network, parser = NetworkFromOnnxPath(str(onnx_path))()
        # The scorers' keep (TopK's K) is planned as a shape-tensor value; should this TensorRT parse
        # it as an ordinary 0-d input instead, it gets a fixed scalar shape (its value is then read
        # from device memory, and the runtime uploads it, see transprune.runtime.tensorrt.backend).
        shape_tensors = {network.get_input(i).name for i in range(network.num_inputs)
                         if network.get_input(i).is_shape_tensor}
        profiles = []
        for profile in profiles_from_plan(engine):
            poly = PolygraphyProfile()
            for spec in profile.inputs:
                if spec.value and spec.name not in shape_tensors:
                    poly.add(spec.name, (), (), ())
                else:
                    poly.add(spec.name, spec.min, spec.opt, spec.max)
            profiles.append(poly)
        config = CreateConfig(
            fp16=precision in ("fp16", "fp8"), bf16=precision == "bf16", fp8=precision == "fp8",
            profiles=profiles,
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: plan["target"]["workspace_mib"] << 20},
            load_timing_cache=str(timing_cache) if timing_cache.is_file() else None)
        serialized = EngineBytesFromNetwork((builder, network, parser), config=config,
                                            save_timing_cache=str(timing_cache))()
        if serialized is None:
            raise TransPruneError(f"TensorRT could not build {engine['graph']} (see its log above)")
        path = resolve_inside(engine_dir, engine["engine"])
        write_atomic(path, bytes(serialized))
        write_metadata(engine, plan, path, platform, built_with="polygraphy")
        written.append(path)
        log(f"    {path.name}: {path.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - started:.1f} s")
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

