"""Real engine builds: every graph of the tiny builds parsed and built by TensorRT-RTX (which needs
no GPU), with the plan's profiles, the built networks' inputs checked against the manifest, and
engine metadata the runtime accepts. A graph change TensorRT cannot parse or build fails here.

Running the engines needs a GPU: that is tests/runtime/tensorrt/test_backend.py's ``gpu`` test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from transprune.cli.build import main as build_main
from transprune.errors import TransPruneError
from transprune.export.tensorrt import engines as engines_module
from transprune.export.tensorrt.engines import build_engines
from transprune.export.tensorrt.network import ParsedGraph, check_inputs, configure, make_logger, parse_graph
from transprune.export.tensorrt.plan import profiles_from_plan
from transprune.export.tensorrt.targets import OPTIMIZATION_LEVELS
from transprune.export.tensorrt.workflow import plan_build
from transprune.runtime.build import Build
from transprune.runtime.manifest import sha256
from transprune.runtime.tensorrt.engines import Platform, load_engine_set, metadata_path

RTX_CAPABILITIES = [[8, 0], [8, 6], [8, 9], [12, 0]]
# TensorRT-RTX 1.7's builder takes as long at every optimisation level (0..5: 7-10 s for tiny's eleven
# engines on 2 cores, within noise of each other), so the builds here are at its default, 3, what
# transprune-build ships; the CLI and script test builds at the fastest level, 0, to check the option
FASTEST = OPTIMIZATION_LEVELS[0]


def _build_dir(case: str, request):
    if case == "tiny-next":
        return request.getfixturevalue("next_build")[0]
    if case == "iga-only:fp32":  # the CLI's export (tests/transprune/cli), built rather than exported twice
        return request.getfixturevalue("iga_only_cli_build")[0]
    name, dtype = case.split(":")
    return request.getfixturevalue("schedule_build")(name, dtype=dtype)[0]


# Graph structures this test session has already built (see _structure): tiny's eleven engines
# build in about 9 s on 2 cores, parsing costs a fraction of that, so every graph of every case is
# parsed and each structure built once (the cases' time is mostly their builds' export).
_BUILT: set = set()


def _structure(build: Build, name: str) -> tuple:
    """What makes two graphs build alike: kind, the build's dtype and weights, and the names and
    dtypes of its inputs and outputs with layer numbers dropped (segment_1 and segment_2 differ in
    how many layers they repeat, not in what TensorRT must support)."""
    graph = build.graphs[name]
    tensors = lambda specs: tuple(sorted({(re.sub(r"\d+", "#", t.name), t.dtype) for t in specs}))
    return (graph.kind, build.manifest["dtype"], json.dumps(build.manifest.get("weights"), sort_keys=True),
            tensors(graph.inputs), tensors(graph.outputs))


@pytest.mark.parametrize("case", ["paper:fp32", "none:fp32", "ttv-only:fp32", "iga-only:fp32", "paper:fp16",
                                  "tiny-next"])
def test_tensorrt_rtx_builds_every_engine(case, request, tmp_path, tensorrt_rtx):
    """Every graph is parsed and checked against the manifest; every graph structure is built once
    in the session (paper:fp32, run first, builds all of its graphs; the other schedules build what
    they add: ttv-only's and iga-only's scorers, for instance)."""
    trt = tensorrt_rtx
    build_dir = _build_dir(case, request)
    planned = plan_build(build_dir=build_dir, target="rtx", out=tmp_path / "trt-rtx")
    build, plan = planned.build, planned.plan
    assert plan["precision"] == build.manifest["dtype"]  # strongly typed: the export's own types
    new = [e for e in plan["engines"] if _structure(build, e["graph"]) not in _BUILT]
    for engine in plan["engines"]:
        if engine in new:
            continue
        parsed = parse_graph(trt, build.graphs[engine["graph"]].file, strongly_typed=bool(plan.get("strongly_typed")))
        assert parsed.ok, [r.describe() for r in parsed.rejected]
        check_inputs(parsed, graph=engine["graph"],
                     manifest_inputs=next(g["inputs"] for g in build.manifest["graphs"] if g["name"] == engine["graph"]),
                     shape_tensors={spec.name for spec in profiles_from_plan(engine)[0].inputs if spec.value})
    logged = []
    written = build_engines({**plan, "engines": new}, build, planned.engine_dir, log=logged.append)
    _BUILT.update(_structure(build, e["graph"]) for e in new)
    assert [p.name for p in written] == [f"{e['graph']}.engine" for e in new]
    if case == "paper:fp32":
        assert len(written) == len(build.graphs)
    assert not [line for line in logged if "ERROR" in line or "cudaError" in line], logged
    for path in written:
        meta = json.loads(metadata_path(path).read_text())
        assert path.stat().st_size > 0 and meta["engine_sha256"] == sha256(path)
        assert meta["tensorrt_module"] == "tensorrt_rtx" and meta["tensorrt_version"] == trt.__version__
        assert meta["compute_capabilities"] == RTX_CAPABILITIES and meta["precision"] == build.manifest["dtype"]
        assert meta["builder_optimization_level"] is None  # the builder's default
        assert meta["build_seconds"] > 0 and meta["memory"] == plan["memory"] and meta["memory"]["fits"]
        # one profile per engine (two would store the weights twice): prefill and decode merged
        graph = build.graphs[meta["graph"]]
        assert [p["phase"] for p in meta["profiles"]] == ["+".join(graph.phases)]
    # the runtime accepts the set on any GPU of the list (checked on metadata: running needs the GPU)
    for cc in RTX_CAPABILITIES if len(written) == len(build.graphs) else ():
        engines = load_engine_set(build, planned.engine_dir, platform=Platform(trt.__version__, tuple(cc), "",
                                                                                "tensorrt_rtx"))
        assert list(engines.engines) == list(build.graphs)


def test_the_built_networks_inputs_are_the_manifests(paper_build, tensorrt_rtx):
    """What ``build_engines`` checks before building: names in order, dtypes, ranks, and exactly the
    planned shape-tensor inputs (the scorers' keep and, with IGA, query_rows) parsed as shape tensors."""
    trt = tensorrt_rtx
    build = Build.open(paper_build[0])
    entry = next(g for g in build.manifest["graphs"] if g["name"] == "scorer_0")
    parsed = parse_graph(trt, build.directory / entry["file"])
    inputs = parsed.inputs()
    assert [i.name for i in inputs] == [t["name"] for t in entry["inputs"]]
    shape_tensors = {"keep", "query_rows"}
    assert {i.name for i in inputs if i.is_shape_tensor} == shape_tensors
    assert {i.name: i.dtype for i in inputs}["hidden"] == "float32"
    check_inputs(parsed, graph="scorer_0", manifest_inputs=entry["inputs"], shape_tensors=shape_tensors)
    wrong_dtype = [dict(t, dtype="float16") if t["name"] == "hidden" else t for t in entry["inputs"]]
    with pytest.raises(TransPruneError, match="input 'hidden' parsed as float32 of rank 3, the manifest says float16"):
        check_inputs(parsed, graph="scorer_0", manifest_inputs=wrong_dtype, shape_tensors=shape_tensors)
    with pytest.raises(TransPruneError,
                       match=r"parsed \['keep', 'query_rows'\] as shape tensors, the plan expects none"):
        check_inputs(parsed, graph="scorer_0", manifest_inputs=entry["inputs"], shape_tensors=set())
    other = next(g for g in build.manifest["graphs"] if g["name"] == "segment_1")
    with pytest.raises(TransPruneError, match="does not belong to this build"):
        check_inputs(parsed, graph="segment_1", manifest_inputs=other["inputs"], shape_tensors=set())


def test_transprune_build_target_rtx_and_its_script_build_here(paper_build, tmp_path, capsys, tensorrt_rtx):
    """The CLI plans the build, and the script it writes for rtx (transprune's API build as a command,
    with the CLI's options: --optimization-level too) builds the engines with no GPU: progress per
    engine, sizes, times, metadata recording the level. The script runs the same transprune-build
    an in-process call would, so the engines are built once here, not twice."""
    out = tmp_path / "trt-rtx"
    assert build_main([str(paper_build[0]), "--target", "rtx", "--max-text-tokens", "64", "--max-new-tokens", "16",
                       "--optimization-level", str(FASTEST), "--out", str(out), "--plan-only"]) == 0
    summary = f"fp32, batch <= 1, text <= 64 tokens, answers <= 16 tokens, builder optimisation level {FASTEST}"
    assert summary in capsys.readouterr().err
    assert not list(out.glob("*.engine"))
    script = (out / "build_engines.sh").read_text()
    assert (f'"$PYTHON" -m transprune.cli.build "$BUILD_DIR" --target rtx --out . --optimization-level {FASTEST} '
            in script)
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(out / "build_engines.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert summary in done.stderr
    assert "[11/11] head: building fp32 engine with TensorRT-RTX (1 profile)" in done.stderr and "MiB in" in done.stderr
    graphs = Build.open(paper_build[0]).graphs
    assert len(graphs) == 11 and sorted(p.name for p in out.glob("*.engine")) == sorted(f"{g}.engine" for g in graphs)
    for path in out.glob("*.engine"):
        meta = json.loads(metadata_path(path).read_text())
        assert meta["engine_sha256"] == sha256(path) and meta["builder_optimization_level"] == FASTEST
    assert not (out / "timing.cache").exists()  # TensorRT-RTX times nothing ahead of time


def test_build_engines_configures_the_builder_at_the_plans_optimization_level(paper_build, tmp_path, monkeypatch,
                                                                              tensorrt_rtx):
    """What the plan says reaches every builder config build_engines makes (one small engine built
    at each of the default and the fastest level)."""
    configured = []

    def recording_configure(*args, **kwargs):
        config = configure(*args, **kwargs)
        configured.append(config.builder_optimization_level)
        return config

    monkeypatch.setattr(engines_module, "configure", recording_configure)
    for level, expected in ((None, 3), (FASTEST, FASTEST)):
        planned = plan_build(build_dir=paper_build[0], target="rtx", out=tmp_path / f"level-{level}",
                             optimization_level=level)
        embed = [e for e in planned.plan["engines"] if e["graph"] == "embed"]
        build_engines({**planned.plan, "engines": embed}, planned.build, planned.engine_dir, log=lambda line: None)
        assert configured.pop() == expected and not configured


def test_rtx_precision_is_the_exports_dtype(paper_build, tmp_path):
    with pytest.raises(TransPruneError, match="strongly typed: engines compute in the export's own types \\(fp32 "
                                              "here\\), so --precision fp16 cannot apply; re-export with --dtype fp16"):
        plan_build(build_dir=paper_build[0], target="rtx", precision="fp16", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(TransPruneError, match="--compare runs engines, which needs the GPU"):
        from transprune.export.tensorrt.workflow import build_and_compare

        build_and_compare(planned=plan_build(build_dir=paper_build[0], target="rtx", out=tmp_path / "y"), compare=True)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_tensorrt_rtx_parses_and_builds_the_int4_graphs(dtype, int4_tiny_build, paper_build, tmp_path,
                                                        tensorrt_rtx):
    """tiny exported with --weights int4: every graph passes the lint (opset 21 accepted for its
    blocked INT4 weights), TensorRT-RTX parses each int4 MatMul weight as an INT4 constant feeding a
    Dequantize layer, and builds every engine; the weights stay packed (the head engine is smaller
    than the float build's by about what 4-bit lm_head values save)."""
    trt = tensorrt_rtx
    build_dir, manifest = int4_tiny_build(dtype)
    assert all(g["trt_lint"]["ok"] for g in manifest["graphs"]), [(g["name"], g["trt_lint"])
                                                                  for g in manifest["graphs"]]
    planned = plan_build(build_dir=build_dir, target="rtx", out=tmp_path / "trt-rtx")
    build, plan = planned.build, planned.plan
    assert plan["precision"] == dtype and plan["strongly_typed"] and plan["weights"]["format"] == "int4"
    for entry in manifest["graphs"]:
        network = parse_graph(trt, build.directory / entry["file"]).network
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        int4_constants = {layer.get_output(0).name for layer in layers
                          if layer.type == trt.LayerType.CONSTANT and layer.get_output(0).dtype == trt.DataType.INT4}
        dequantized = [layer for layer in layers if layer.type == trt.LayerType.DEQUANTIZE
                       and layer.get_input(0).name in int4_constants]
        assert len(dequantized) == entry["int4_matmuls"], entry["name"]
    assert sum(g["int4_matmuls"] for g in manifest["graphs"]) == 49 + 14 + 21 + 14 + 3 * 2 + 1  # 14 layers x 7, head
    logged = []
    written = build_engines(plan, build, planned.engine_dir, log=logged.append)
    assert [p.name for p in written] == [f"{g}.engine" for g in build.graphs]
    assert not [line for line in logged if "ERROR" in line or "cudaError" in line], logged
    for path in written:
        meta = json.loads(metadata_path(path).read_text())
        assert meta["engine_sha256"] == sha256(path) and meta["precision"] == dtype and meta["memory"]["fits"]
    if dtype == "fp32":  # against the float build's head engine (lm_head 1024 x 64, fp32: 256 KiB)
        float_plan = plan_build(build_dir=paper_build[0], target="rtx", out=tmp_path / "float")
        float_head = build_engines({**float_plan.plan, "engines": [e for e in float_plan.plan["engines"]
                                                                   if e["graph"] == "head"]},
                                   float_plan.build, float_plan.engine_dir, log=logged.append)[0]
        saved = 1024 * 64 * 4 - (1024 * 64 // 2 + 1024 * 64 // 32 * 4)  # fp32 values - (int4 values + scales)
        assert float_head.stat().st_size - (planned.engine_dir / "head.engine").stat().st_size > 0.8 * saved


def test_tensorrt_api_builds_strongly_typed_networks_without_precision_flags(tmp_path):
    """The builder-API path on a Jetson (TensorRT 10, not importable here: a stand-in module records
    the calls): a strongly typed plan creates its networks with STRONGLY_TYPED and sets no precision
    flag, as trtexec --stronglyTyped does; a float plan keeps FP16."""
    from types import SimpleNamespace

    from transprune.export.tensorrt.network import configure

    calls = []

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return SimpleNamespace(num_inputs=0)

        def create_builder_config(self):
            return SimpleNamespace(set_memory_pool_limit=lambda pool, size: None,
                                   set_flag=lambda flag: calls.append(("set_flag", flag)),
                                   create_timing_cache=lambda data: "cache",
                                   set_timing_cache=lambda cache, ignore: None)

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return True

    trt = SimpleNamespace(__name__="tensorrt", __version__="10.3.0", Builder=Builder, OnnxParser=OnnxParser,
                          NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
                          BuilderFlag=SimpleNamespace(FP16="FP16", BF16="BF16", FP8="FP8"),
                          MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"))
    for strongly_typed, network_flags, precision_flags in ((True, 1, []), (False, 0, ["FP16"])):
        calls.clear()
        parsed = parse_graph(trt, tmp_path / "g.onnx", logger=object(), strongly_typed=strongly_typed)
        config = configure(parsed, precision="fp16", workspace_bytes=1 << 20, strongly_typed=strongly_typed)
        assert calls == [("create_network", network_flags), *(("set_flag", f) for f in precision_flags)]
        assert not hasattr(config, "builder_optimization_level")  # the builder's default: left alone
    config = configure(parsed, precision="fp16", workspace_bytes=1 << 20, optimization_level=1)
    assert config.builder_optimization_level == 1


def test_the_optimization_level_reaches_tensorrt_rtxs_builder_config(tensorrt_rtx):
    """The real builder config gets each level; without one it keeps TensorRT-RTX's default (3, what
    shipped engines are built at); anything but an int in 0..5 is refused before a config is made."""
    trt = tensorrt_rtx
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parsed = ParsedGraph(trt, builder, network, trt.OnnxParser(network, logger), trt.__name__, trt.__version__,
                         logger=logger)
    settings = {"precision": "fp32", "workspace_bytes": 1 << 20, "compute_capabilities": [(8, 6)]}
    assert configure(parsed, **settings).builder_optimization_level == 3
    assert list(OPTIMIZATION_LEVELS) == [0, 1, 2, 3, 4, 5]
    for level in OPTIMIZATION_LEVELS:
        assert configure(parsed, **settings, optimization_level=level).builder_optimization_level == level
    for bad in (-1, 6, True, "0", 1.0):
        with pytest.raises(TransPruneError, match=rf"--optimization-level {re.escape(repr(bad))} is not one of "
                                                  r"TensorRT's builder optimisation levels: 0 \(fastest build\) to 5"):
            configure(parsed, **settings, optimization_level=bad)
