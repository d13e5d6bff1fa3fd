"""The build plan and its trtexec script: the script read back (and run with a stand-in trtexec that
records its arguments) tells trtexec exactly the plan's profiles; targets refuse what they cannot run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from transprune.errors import TransPruneError
from transprune.export.tensorrt.plan import build_script, make_plan, parse_trtexec_script, trtexec_script, write_plan
from transprune.export.tensorrt.profiles import shape_limits
from transprune.export.tensorrt.targets import TARGETS, check_precision, get_target, resolve_precision
from transprune.export.tensorrt.workflow import check_fits
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
                if want["inputs"][tensor.name]["value"]:  # TopK's K, or IGA's query rows (up to the text)
                    top = graph.attrs["keep"] if tensor.name == "keep" else plan["limits"]["max_text_tokens"]
                    assert dims == (top,)
                    continue
                assert len(dims) == len(tensor.axes)
                assert all(d == a for d, a in zip(dims, tensor.axes) if isinstance(a, int))


def test_script_read_back_holds_every_engine_and_profile(spec_build):
    build = spec_build("llava-1.5-7b", preset("paper"))
    plan = _plan(build, max_text_tokens=512, max_new_tokens=512)
    script = trtexec_script(plan)
    engines = parse_trtexec_script(script)
    _check_against_plan(engines, plan, build)
    assert engines["segment_1.engine"]["profiles"][1]["max"]["past_key.8"] == (1, 32, 504 + 512, 128)
    assert engines["segment_1.engine"]["profiles"][1]["max"]["gen_key.8"] == (1, 32, 512, 128)
    assert engines["scorer_0.engine"]["profiles"][0]["opt"]["keep"] == (504,)
    assert engines["head.engine"]["flags"] == ["--fp16", "--skipInference"]
    assert "--memPoolSize=workspace:4096M" in script and "--timingCacheFile=timing.cache" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_the_optimization_level_reaches_the_plan_and_both_scripts(spec_build):
    """A plan's builder optimisation level is one trtexec --builderOptimizationLevel per engine (and
    an --optimization-level of the rtx script's API build); without one, neither script names a
    level and the builder keeps its default. A level outside 0..5 makes no plan."""
    build = spec_build("llava-1.5-7b", preset("paper"))
    default = _plan(build, max_text_tokens=256, max_new_tokens=256)
    assert default["builder_optimization_level"] is None
    assert "--builderOptimizationLevel" not in trtexec_script(default) and "--optimization-level" not in build_script(
        _plan(build, "rtx", precision="fp16", max_text_tokens=256, max_new_tokens=256))
    assert {e["optimization_level"] for e in parse_trtexec_script(trtexec_script(default)).values()} == {None}
    fast = make_plan(build, target=get_target("jetson-agx-orin"), precision="fp16",
                     limits=shape_limits(build, max_text_tokens=256, max_new_tokens=256),
                     engine_dir=build.directory / "trt", optimization_level=0)
    assert fast["builder_optimization_level"] == 0
    script = trtexec_script(fast)
    assert script.count("--builderOptimizationLevel=0") == len(fast["engines"]) == 11
    engines = parse_trtexec_script(script)
    assert {e["optimization_level"] for e in engines.values()} == {0}
    assert engines["head.engine"]["flags"] == ["--fp16", "--skipInference"]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    rtx = make_plan(build, target=get_target("rtx"), precision="fp16",
                    limits=shape_limits(build, max_text_tokens=256, max_new_tokens=256),
                    engine_dir=build.directory / "rtx", optimization_level=5)
    assert '--target rtx --out . --optimization-level 5 \\\n' in build_script(rtx)
    for bad in (6, -1, True):
        with pytest.raises(TransPruneError, match=f"--optimization-level {bad!r} is not one of TensorRT's builder "
                                                  "optimisation levels"):
            make_plan(build, target=get_target("rtx"), precision="fp16", limits=shape_limits(build),
                      engine_dir=build.directory / "rtx", optimization_level=bad)


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


# ---------------------------------------------------------------------------------------------
# int4 weights


def test_an_int4_build_is_planned_strongly_typed(int4_tiny_build, spec_build, tmp_path):
    """trtexec builds int4 graphs with --stronglyTyped and no precision flag (it refuses both
    together); the engines' precision is the export's fp16 and their weights what the files hold."""
    directory, manifest = int4_tiny_build("fp16")
    build = Build.open(directory)
    assert all(g["trt_lint"]["ok"] for g in manifest["graphs"]), [g["trt_lint"] for g in manifest["graphs"]]
    plan = make_plan(build, target=get_target("jetson-orin-nano"), precision="fp16",
                     limits=shape_limits(build, max_text_tokens=32, max_new_tokens=16), engine_dir=tmp_path / "e")
    assert plan["strongly_typed"] and plan["weights"]["format"] == "int4" and plan["weights"]["block_size"] == 32
    script = trtexec_script(plan)
    engines = parse_trtexec_script(script)
    assert len(engines) == 11
    assert all(e["flags"] == ["--skipInference", "--stronglyTyped"] for e in engines.values()), engines
    assert "--fp16" not in script and "built strongly typed (--stronglyTyped)" in script
    file_bytes = sum(int(g["bytes"]) for g in manifest["graphs"])
    assert plan["memory"]["weights_gib"] == round(file_bytes / 2**30, 3)
    # a float build keeps --fp16 and is not strongly typed
    float_plan = _plan(spec_build("llava-1.5-7b", preset("paper")), "jetson-orin-nano")
    assert not float_plan["strongly_typed"] and float_plan["weights"] == {"format": "float", "dtype": "fp16"}
    assert parse_trtexec_script(trtexec_script(float_plan))["head.engine"]["flags"] == ["--fp16", "--skipInference"]


def test_int4_builds_get_the_exports_own_precision_or_a_refusal(spec_build):
    fp32 = spec_build("llava-1.5-7b", preset("paper"), dtype="fp32", weights="int4")
    with pytest.raises(TransPruneError, match=r"int4 weights, which TensorRT takes only in a strongly typed network: "
                                              r"engines compute in the export's own types \(fp32 here\), and "
                                              r"jetson-orin-nano builds fp16 engines; re-export with --dtype fp16 "
                                              r"--weights int4"):
        resolve_precision(get_target("jetson-orin-nano"), None, export_dtype="fp32", int4=True)
    with pytest.raises(TransPruneError, match="so --precision bf16 cannot apply; drop --precision"):
        resolve_precision(get_target("jetson-thor"), "bf16", export_dtype="fp16", int4=True)
    assert resolve_precision(get_target("jetson-thor"), None, export_dtype="fp16", int4=True) == "fp16"
    assert resolve_precision(get_target("jetson-thor"), "bf16", export_dtype="fp16") == "bf16"  # float weights
    assert resolve_precision(get_target("rtx"), None, export_dtype="fp32", int4=True) == "fp32"
    # weights are never converted to another width: that would shrink the packed int4 values too
    with pytest.raises(TransPruneError, match="strongly typed"):
        _plan(fp32, "jetson-agx-orin", precision="fp16")


def test_7b_on_the_orin_nano_16_bit_is_refused_and_int4_gets_a_verdict_from_the_numbers(spec_build):
    """LLaVA-1.5-7B on the 8 GB Orin Nano (6.0 GiB budget), 128 text + 512 new tokens: 16-bit weights
    are refused outright; int4 weights (decoder and lm_head, blocks of 128, the rest fp16) are 4.02
    GiB, and the verdict is what weights + KV cache + the 1 GiB workspace + 1 GiB runtime add up to."""
    sixteen = _plan(spec_build("llava-1.5-7b", preset("paper")), "jetson-orin-nano", max_text_tokens=128,
                    max_new_tokens=512)
    memory = sixteen["memory"]
    assert memory["weights_gib"] == pytest.approx(13.157, abs=1e-3) and not memory["fits"]
    with pytest.raises(TransPruneError, match=r"llava-1.5-7b at fp16 with fp16 weights needs about 15.59 GiB on "
                                              r"jetson-orin-nano \(weights 13.16, KV cache 0.43, activations 1.00, "
                                              r"runtime 1.00\), 9.59 GiB more than its 6.00 GiB budget; its "
                                              r"weights, workspace and runtime alone take 15.16 GiB, so no shorter "
                                              r"prompt or answer fits: .*or re-export with 4-bit weights "
                                              r"\(--dtype fp16 --weights int4\)"):
        check_fits(sixteen)

    int4 = _plan(spec_build("llava-1.5-7b", preset("paper"), weights="int4"), "jetson-orin-nano",
                 max_text_tokens=128, max_new_tokens=512)
    # 6,607,339,520 quantized parameters (32 layers x 202,375,168 + lm_head 131,334,144) at half a byte
    # plus a 2-byte scale per 128; the other 456,087,552 (vision tower, projector, embeddings, norms) fp16
    quantized, others = 32 * 202_375_168 + 131_334_144, 7_063_427_072 - 6_607_339_520
    weight_bytes = quantized // 2 + quantized // 128 * 2 + others * 2
    assert quantized == 6_607_339_520 and weight_bytes == 4_319_084_544
    memory = int4["memory"]
    assert memory["weights_gib"] == pytest.approx(weight_bytes / 2**30, abs=1e-3)  # 4.022
    assert memory["kv_cache_gib"] == sixteen["memory"]["kv_cache_gib"]  # int4 weights leave the KV cache alone
    total = memory["weights_gib"] + memory["kv_cache_gib"] + memory["activations_gib"] + memory["overhead_gib"]
    assert memory["total_gib"] == pytest.approx(total, abs=2e-3)
    assert memory["fits"] == (memory["total_gib"] <= memory["budget_gib"])
    assert memory["headroom_gib"] == pytest.approx(memory["budget_gib"] - memory["total_gib"], abs=2e-3)
    if memory["fits"]:
        check_fits(int4)
    else:
        over = memory["total_gib"] - memory["budget_gib"]
        with pytest.raises(TransPruneError, match=rf"at fp16 with int4 weights needs about {memory['total_gib']:.2f} "
                                                  rf"GiB on jetson-orin-nano .*, {over:.2f} GiB more than its "
                                                  rf"6.00 GiB budget; .*quantize more of the model"):
            check_fits(int4)
    # the same int4 build fits an Orin NX (13 GiB budget) with room to spare
    nx = _plan(spec_build("llava-1.5-7b", preset("paper"), weights="int4"), "jetson-orin-nx", max_text_tokens=128,
               max_new_tokens=512)["memory"]
    assert nx["fits"] and nx["headroom_gib"] > 5


def test_transprune_build_plan_only_says_by_how_much_an_int4_build_fits(int4_tiny_build, tmp_path, capsys):
    from transprune.cli.build import main as build_main

    directory, _ = int4_tiny_build("fp16")
    out = tmp_path / "nano"
    assert build_main([str(directory), "--target", "jetson-orin-nano", "--max-text-tokens", "32", "--plan-only",
                       "--out", str(out)]) == 0
    err = capsys.readouterr().err
    memory = json.loads((out / "plan.json").read_text())["memory"]
    assert "fp16 with int4 weights (blocks of 32, strongly typed)" in err
    assert (f"memory: about {memory['total_gib']:.2f} GiB of a 6.00 GiB budget (weights {memory['weights_gib']:.2f}, "
            f"KV cache {memory['kv_cache_gib']:.2f}, activations 1.00, runtime 1.00): fits with "
            f"{6.0 - memory['total_gib']:.2f} GiB to spare") in err
    # the same build for a 2.1 GB device: refused with the numbers, nothing written
    assert build_main([str(directory), "--target", "jetson-orin-nano", "--memory-gib", "2.1", "--plan-only",
                       "--out", str(tmp_path / "small")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"at fp16 with int4 weights needs about 2\.\d\d GiB on jetson-orin-nano \(weights 0\.00, KV cache "
                     r"0\.\d\d, activations 1\.00, runtime 1\.00\), 1\.\d\d GiB more than its 0\.10 GiB budget; its "
                     r"weights, workspace and runtime alone take 2\.00 GiB", err), err
    assert not (tmp_path / "small").exists()
