"""Engine metadata: what the runtime refuses before handing an engine to TensorRT."""

from __future__ import annotations

import json
import shutil

import pytest

from transprune.errors import TransPruneError
from transprune.export.tensorrt.plan import make_plan, write_plan
from transprune.export.tensorrt.profiles import shape_limits
from transprune.export.tensorrt.targets import get_target
from transprune.runtime.build import Build
from transprune.runtime.tensorrt.engines import (EngineMismatch, Platform, check_metadata, find_engine_dir,
                                            load_engine_set, make_metadata, metadata_path, record, write_metadata)

ORIN = Platform("10.3.0.30", (8, 7), "Jetson AGX Orin")


@pytest.fixture
def engines(paper_build, tmp_path):
    """(build, engine dir, plan) with placeholder engine files and real metadata for ORIN."""
    build = Build.open(paper_build[0])
    directory = tmp_path / "trt-jetson-agx-orin"
    plan = make_plan(build, target=get_target("jetson-agx-orin"), precision="fp16",
                     limits=shape_limits(build, max_text_tokens=32, max_new_tokens=8), engine_dir=directory)
    write_plan(plan, directory)
    for entry in plan["engines"]:
        (directory / entry["engine"]).write_bytes(f"engine of {entry['graph']}".encode())
        write_metadata(entry, plan, directory / entry["engine"], ORIN, built_with="test")
    return build, directory, plan


def _meta(plan, graph="segment_0", **changes):
    entry = next(e for e in plan["engines"] if e["graph"] == graph)
    meta = make_metadata(entry, plan, ORIN, engine_sha256="0" * 64, built_with="test")
    meta.update(changes)
    return meta, entry["onnx_sha256"]


def test_metadata_that_matches_is_accepted_and_a_patch_build_number_does_not_matter(engines):
    _, _, plan = engines
    meta, onnx = _meta(plan)
    check_metadata(meta, platform=ORIN, onnx_sha256=onnx, where="x")
    check_metadata(meta, platform=Platform("10.3.0.26", (8, 7)), onnx_sha256=onnx, where="x")
    assert [p["phase"] for p in meta["profiles"]] == ["prefill", "decode"]
    assert meta["tensorrt_version"] == "10.3.0.30" and meta["compute_capabilities"] == [[8, 7]]
    assert meta["tensorrt_module"] == "tensorrt"
    assert meta["precision"] == "fp16" and meta["target"] == "jetson-agx-orin"


@pytest.mark.parametrize("change, platform, message", [
    ({}, Platform("10.4.0", (8, 7)), r"built with TensorRT 10.3.0.30, this is TensorRT 10.4.0; engines do not carry "
                                     r"over .*rebuild on the target"),
    ({}, Platform("10.3.0.30", (8, 9), "L4"), r"compute capability 8.7 \(Jetson AGX Orin\), this GPU is 8.9 \(L4\); "
                                              r"rebuild on the target"),
    ({}, Platform("1.7.1.116", (8, 7), "", "tensorrt_rtx"), r"built with TensorRT, but TensorRT-RTX is loading it"),
    ({"tensorrt_module": "tensorrt_llm"}, ORIN, r"unknown module 'tensorrt_llm'"),
    ({"onnx_sha256": "f" * 64}, ORIN, r"built from a different segment_0.onnx .*re-exported after the engines"),
    ({"schema": 1}, ORIN, "metadata schema 1, this runtime reads 2"),
    ({"profiles": []}, ORIN, r"profiles \[\] are not prefill\[, decode\]"),
])
def test_mismatched_metadata_is_refused_with_the_fix(engines, change, platform, message):
    _, _, plan = engines
    meta, onnx = _meta(plan)
    meta.update(change)
    with pytest.raises(EngineMismatch, match=message):
        check_metadata(meta, platform=platform, onnx_sha256=onnx, where="segment_0.engine")


def test_load_engine_set_finds_checks_and_refuses(engines, tmp_path):
    build, directory, plan = engines
    with pytest.raises(TransPruneError, match="holds no engine directory; build engines with `transprune-build"):
        find_engine_dir(build, None)
    loaded = load_engine_set(build, directory, platform=ORIN)
    assert list(loaded.engines) == list(build.graphs) and loaded.plan["limits"]["max_text_tokens"] == 32
    # a changed engine file no longer matches its metadata's sha256
    (directory / "head.engine").write_bytes(b"tampered")
    with pytest.raises(EngineMismatch, match="head.engine: the file differs from the one its metadata describes"):
        load_engine_set(build, directory, platform=ORIN)
    load_engine_set(build, directory, platform=ORIN, verify=False)
    # a missing engine (a plan-only build)
    (directory / "vision.engine").unlink()
    with pytest.raises(EngineMismatch, match="vision.engine or its metadata is missing .*build the engines on the "
                                             "target"):
        load_engine_set(build, directory, platform=ORIN, verify=False)


def test_engine_paths_in_a_plan_cannot_leave_the_engine_directory(engines):
    build, directory, plan = engines
    plan["engines"][0]["engine"] = "../../outside.engine"
    (directory / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(TransPruneError, match="outside"):
        load_engine_set(build, directory, platform=ORIN)


def test_a_plan_for_another_build_is_refused(engines, tmp_path):
    build, directory, plan = engines
    plan["engines"] = [e for e in plan["engines"] if e["graph"] != "scorer_1"]
    (directory / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(EngineMismatch, match="no engine for graph 'scorer_1'"):
        load_engine_set(build, directory, platform=ORIN)


def test_record_writes_metadata_after_a_trtexec_build_and_needs_tensorrt(engines, monkeypatch):
    """``record`` (the last step of build_engines.sh): metadata for every engine of the plan. TensorRT
    is simulated here by a module whose runtime deserializes any non-empty file."""
    import sys
    import types

    build, directory, plan = engines
    for entry in plan["engines"]:
        metadata_path(directory / entry["engine"]).unlink()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TransPruneError, match="TensorRT's Python module is not importable here"):
        record(directory, built_with="trtexec", platform=ORIN)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = ORIN.tensorrt_version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, data: object() if data else None})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    written = record(directory, built_with="trtexec", platform=ORIN)
    assert len(written) == len(plan["engines"])
    assert load_engine_set(build, directory, platform=ORIN).engines["scorer_2"][1]["built_with"] == "trtexec"
    (directory / "embed.engine").write_bytes(b"")
    with pytest.raises(TransPruneError, match="embed.engine: TensorRT 10.3.0.30 cannot load this engine"):
        record(directory, built_with="trtexec", platform=ORIN)
    shutil.rmtree(directory)


def test_malformed_metadata_is_refused_not_a_crash(engines):
    build, directory, _ = engines
    (directory / "scorer_0.engine.json").write_text("{not json")
    with pytest.raises(EngineMismatch, match="scorer_0.engine.json: malformed engine metadata .*rebuild"):
        load_engine_set(build, directory, platform=ORIN)
    (directory / "scorer_0.engine.json").write_text(json.dumps({"schema": 2}))
    with pytest.raises(EngineMismatch, match="malformed engine metadata \\(KeyError: 'tensorrt_module'\\)"):
        load_engine_set(build, directory, platform=ORIN)
