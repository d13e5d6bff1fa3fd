"""``transprune-build`` on the tiny build, on a machine without TensorRT (as every CI machine is)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from transprune.cli.build import main
from transprune.export.tensorrt.plan import parse_trtexec_script


@pytest.fixture
def build_copy(paper_build, tmp_path):
    """A private copy of the tiny paper build (the default engine directory goes inside it)."""
    return shutil.copytree(paper_build[0], tmp_path / "tiny-paper")


def test_plan_only_writes_plan_and_script_inside_the_build(build_copy, capsys):
    assert main([str(build_copy), "--target", "jetson-orin-nano", "--max-text-tokens", "48", "--plan-only"]) == 0
    err = capsys.readouterr().err
    assert "plan: 11 engines for jetson-orin-nano" in err and "text <= 48 tokens" in err
    out = build_copy / "trt-jetson-orin-nano"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["build_dir"] == ".." and plan["limits"] == {"max_batch": 1, "max_text_tokens": 48,
                                                             "max_new_tokens": 2048 - 576 - 48}
    script = (out / "build_engines.sh").read_text()
    manifest = json.loads((build_copy / "manifest.json").read_text())
    assert set(parse_trtexec_script(script)) == {f"{g['name']}.engine" for g in manifest["graphs"]}
    assert (out / "build_engines.sh").stat().st_mode & 0o111


def test_without_tensorrt_it_writes_the_plan_and_says_how_to_build_on_the_target(build_copy, tmp_path, capsys,
                                                                                 monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "engines"
    assert main([str(build_copy), "--target", "jetson-agx-orin", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: no engines were built: TensorRT's Python module is not importable here" in err
    assert f"Build them with {out / 'build_engines.sh'} on the target" in err
    assert sorted(p.name for p in out.iterdir()) == ["build_engines.sh", "plan.json"]
    # --compare needs engines, so without TensorRT it is an error
    assert main([str(build_copy), "--target", "jetson-agx-orin", "--out", str(out), "--compare"]) == 2
    assert "error: TensorRT's Python module is not importable" in capsys.readouterr().err
    # an rtx plan without TensorRT-RTX: its script is the API build, runnable on any machine
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    rtx = tmp_path / "rtx"
    assert main([str(build_copy), "--target", "rtx", "--out", str(rtx)]) == 0
    err = capsys.readouterr().err
    assert "TensorRT-RTX's Python module is not importable here" in err and "pip install tensorrt-rtx-cu12" in err
    assert f"Build them with {rtx / 'build_engines.sh'} on any machine with TensorRT-RTX installed" in err


@pytest.mark.parametrize("args, message", [
    (["--target", "jetson-orin-nx", "--precision", "bf16"], "cannot build bf16: TensorRT on Orin has no bf16"),
    (["--target", "datacenter-ampere", "--precision", "fp8"], "cannot build fp8: fp8 needs Ada"),
    (["--target", "jetson-orin-nano", "--max-text-tokens", "5000"], r"--max-text-tokens 5000 must lie in 1..1024"),
    (["--target", "jetson-orin-nano", "--plan-only", "--compare"], "--compare needs engines; drop --plan-only"),
    (["--target", "rtx", "--optimization-level", "6"], r"--optimization-level 6 is not one of TensorRT's builder "
                                                        r"optimisation levels: 0 \(fastest build\) to 5"),
    (["--target", "jetson-orin-nano", "--memory-gib", "2.1"], r"needs about 2.\d\d GiB on jetson-orin-nano .*more "
                                                              r"than its 0.10 GiB budget.*Nothing was written"),
])
def test_bad_requests_exit_2_and_write_nothing(build_copy, tmp_path, capsys, args, message):
    out = tmp_path / "engines"
    assert main([str(build_copy), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("transprune-build: error: ")
    assert re.search(message, err), err
    assert not out.exists()
