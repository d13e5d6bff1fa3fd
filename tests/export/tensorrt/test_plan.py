"""The build plan and its trtexec script: the script read back (and run with a stand-in trtexec that
records its arguments) tells trtexec exactly the plan's profiles; targets refuse what they cannot run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transprune.errors import TransPruneError
from transprune.export.tensorrt.plan import make_plan, parse_trtexec_script, trtexec_script, write_plan
from transprune.export.tensorrt.profiles import shape_limits
from transprune.export.tensorrt.targets import TARGETS, check_precision, get_target
from transprune.runtime.build import Build
from transprune.schedule import preset


def _plan(build, target="jetson-agx-orin", precision="fp16", **limits):
    return make_plan(build, target=get_target(target), precision=precision, limits=shape_limits(build, **limits),
                     engine_dir=build.directory / f"trt-{target}")


def _check_against_plan(engines: dict, plan: dict, build: Build) -> None:
    assert sorted(engines) == sorted(e["engine"] for e in plan["engines"])
    for entry in plan["engines"]:
        parsed = engines[entry["engine"]]
        graph = build.graphs[entry["graph"]]
        assert parsed["onnx"].endswith("/" + graph.file.name)
        assert len(parsed["profiles"]) == len(entry["profiles"])
        for got, want in zip(parsed["profiles"], entry["profiles"]):
            for which in ("min", "opt", "max"):
                assert got[which] == {name: tuple(spec[which]) for name, spec in want["inputs"].items()}
            # every input of the graph, with its manifest rank and fixed dimensions
            for tensor in graph.inputs:
                dims = got["max"][tensor.name]
                if want["inputs"][tensor.name]["value"]:
                    assert dims == (graph.attrs["keep"],)
                    continue
                assert len(dims) == len(tensor.axes)
                assert all(d == a for d, a in zip(dims, tensor.axes) if isinstance(a, int))


def test_script_read_back_holds_every_engine_and_profile(spec_build):
    build = spec_build("llava-1.5-7b", preset("paper"))
    plan = _plan(build, max_text_tokens=512, max_new_tokens=512)
    script = trtexec_script(plan)
    engines = parse_trtexec_script(script)
    _check_against_plan(engines, plan, build)
    assert engines["segment_1.engine"]["profiles"][1]["max"]["past_key.8"] == (1, 32, 504 + 512 + 511, 128)
    assert engines["scorer_0.engine"]["profiles"][0]["opt"]["keep"] == (504,)
    assert engines["head.engine"]["flags"] == ["--fp16", "--skipInference"]
    assert "--memPoolSize=workspace:4096M" in script and "--timingCacheFile=timing.cache" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_running_the_script_gives_trtexec_the_plan(paper_build, tmp_path):
    """build_engines.sh run with a stand-in trtexec (records its argv, writes the engine file) and a
    stand-in python: the arguments trtexec receives, parsed back, are the plan's profiles."""
    build = Build.open(paper_build[0])
    engine_dir = tmp_path / "engines"
    plan = make_plan(build, target=get_target("jetson-orin-nano"), precision="fp16",
                     limits=shape_limits(build, max_text_tokens=32, max_new_tokens=16), engine_dir=engine_dir)
    _, script = write_plan(plan, engine_dir)
    fake_trtexec = tmp_path / "trtexec"
    log = tmp_path / "argv.jsonl"
    fake_trtexec.write_text(f"#!{sys.executable}\nimport json, sys\n"
                            f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                            "engine = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--saveEngine='))\n"
                            "open(engine, 'wb').write(b'engine')\n")
    fake_trtexec.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(fake_trtexec), "PYTHON": "true"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "[11/11] head" in done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 11 and all((engine_dir / e["engine"]).is_file() for e in plan["engines"])
    # the build dir is relative to the engine dir only when it contains it: here it is absolute
    for call, entry in zip(calls, plan["engines"]):
        assert Path(next(a for a in call if a.startswith("--onnx=")).split("=", 1)[1]) == build.graphs[
            entry["graph"]].file
    as_script = "\n".join("$TRTEXEC " + " ".join(f"'{a}'" for a in call) for call in calls)
    _check_against_plan(parse_trtexec_script(as_script), plan, build)


def test_default_engine_dir_inside_the_build_is_addressed_relatively(spec_build):
    build = spec_build("llava-1.5-7b", preset("paper"))
    assert _plan(build)["build_dir"] == ".."


def test_memory_budget_per_target(spec_build):
    build = spec_build("llava-1.5-7b", preset("paper"))
    nano = _plan(build, "jetson-orin-nano", max_text_tokens=256, max_new_tokens=256)["memory"]
    # 7,063,427,072 fp16 parameters = 13.16 GiB of weights: more than an 8 GB Orin Nano has
    assert nano["weights_gib"] == pytest.approx(13.157, abs=1e-3)
    assert not nano["fits"] and nano["budget_gib"] == 6.0
    agx = _plan(build, "jetson-agx-orin", max_text_tokens=256, max_new_tokens=256)["memory"]
    assert agx["fits"] and agx["total_gib"] < 20
    # an fp32 export is built at fp16: the engine weights are half the ONNX weights
    fp32 = spec_build("llava-1.5-7b", preset("paper"), dtype="fp32")
    assert _plan(fp32, max_text_tokens=256, max_new_tokens=256)["memory"]["weights_gib"] == nano["weights_gib"]


def test_precision_limits_of_the_targets(spec_build):
    with pytest.raises(TransPruneError, match="jetson-orin-nx .*cannot build bf16.*use --precision fp16"):
        check_precision(get_target("jetson-orin-nx"), "bf16")
    with pytest.raises(TransPruneError, match="datacenter-ampere .*cannot build fp8: fp8 needs Ada"):
        check_precision(get_target("datacenter-ampere"), "fp8")
    with pytest.raises(TransPruneError, match="unknown target 'orin'; use one of jetson-orin-nano"):
        get_target("orin")
    allowed = {name: target.precisions for name, target in TARGETS.items()}
    assert allowed["jetson-thor"] == allowed["datacenter-hopper"] == ("fp16", "bf16", "fp8")
    assert all(allowed[name] == ("fp16",) for name in ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"))
    build = spec_build("llava-1.5-7b", preset("paper"))
    fp8 = _plan(build, "datacenter-hopper", precision="fp8")
    assert "no FP8 Q/DQ nodes" in fp8["warnings"][0]
    assert parse_trtexec_script(trtexec_script(fp8))["vision.engine"]["flags"] == ["--fp16", "--fp8", "--skipInference"]


def test_a_graph_that_failed_the_tensorrt_lint_is_refused(spec_build):
    build = spec_build("llava-1.5-7b", preset("paper"))
    build.manifest["graphs"][5]["trt_lint"]["ok"] = False
    with pytest.raises(TransPruneError, match=r"graphs \['segment_1'\] failed the TensorRT lint"):
        _plan(build)


def test_names_from_a_hostile_build_never_run_in_the_script(paper_build, tmp_path):
    """Graph and file names reach build_engines.sh quoted: a plan whose names carry command
    substitutions runs them nowhere (the names are also refused at load: test_manifest)."""
    build = Build.open(paper_build[0])
    engine_dir = tmp_path / "engines"
    plan = make_plan(build, target=get_target("jetson-orin-nano"), precision="fp16",
                     limits=shape_limits(build, max_text_tokens=32, max_new_tokens=16), engine_dir=engine_dir)
    marker = tmp_path / "pwned"
    for entry in plan["engines"]:
        entry["graph"] += f"$(touch {marker})`touch {marker}`"
        entry["onnx"] += f"$(touch {marker})"
        entry["engine"] = f"x;touch {marker};{entry['engine']}"
    _, script = write_plan(plan, engine_dir)
    fake_trtexec = tmp_path / "trtexec"
    fake_trtexec.write_text("#!/bin/sh\nexit 0\n")
    fake_trtexec.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(fake_trtexec), "PYTHON": "true"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert f"[1/11] vision$(touch {marker})" in done.stderr  # printed as text, not run
    parsed = parse_trtexec_script(script.read_text())
    assert f"x;touch {marker};vision.engine" in parsed
