"""Writes never destroy what they did not create (issue 19): every CLI that writes refuses an output
that is, holds or lies inside one of its inputs; ``transprune-export --force`` replaces only a
transprune build, and atomically; an interrupt (SIGTERM as well as Ctrl-C) leaves nothing behind;
an output that cannot be written is one line and exit status 2, before any work.

Most cases are refused before any work and run in-process in well under a second. Three need real
work: one export replacing a build (``--schedule none``: five graphs, ``--no-validate``) and two
exports killed with SIGTERM in a real process soon after they start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transprune.errors import TransPruneError

from .conftest import Tree, assert_one_line_error, assert_one_line_message


def _skip_unless_permissions_apply(directory: Path) -> None:
    """Skips when this process may write into the read-only ``directory`` anyway: root (or a process
    with CAP_DAC_OVERRIDE) ignores file permissions."""
    if os.access(directory, os.W_OK):
        os.chmod(directory, 0o755)
        pytest.skip("running as root: root ignores file permissions, so a read-only directory (os.chmod) cannot "
                    "be tested; run as a normal user (or without CAP_DAC_OVERRIDE)")


def _export(argv, capsys) -> tuple[int, str]:
    from transprune.cli.export import main

    status = main(argv)
    return status, capsys.readouterr().err


@pytest.fixture
def checkpoint_copy(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny checkpoint (3 MB), free to be (not) destroyed."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def _add_engine_dir(build: Path, name: str = "trt-rtx") -> Path:
    """What transprune-build leaves in a build: its real plan and script (--plan-only), plus an
    engine and metadata file per planned engine (standing in for TensorRT's output)."""
    from transprune.export.tensorrt.workflow import plan_build

    engine_dir = build / name
    plan = plan_build(build_dir=build, target="rtx", out=engine_dir).plan
    for engine in plan["engines"]:
        (engine_dir / engine["engine"]).write_bytes(b"engine")
        (engine_dir / (engine["engine"] + ".json")).write_text("{}")
    (engine_dir / "runtime.cache").write_bytes(b"kernels")
    return engine_dir


# --- 1. --out overlapping the checkpoint; --force on what is not (only) a transprune build ---------------


@pytest.mark.parametrize("where, phrase", [
    ("the checkpoint itself", "is the checkpoint"),
    ("inside it", "lies inside the checkpoint"),
    ("its parent", "contains the checkpoint"),
    ("a symlink to it", "is the checkpoint"),
])
def test_export_refuses_an_out_overlapping_the_checkpoint_it_reads(checkpoint_copy, paper_build, tmp_path, capsys,
                                                                   where, phrase):
    """The exact case: a manifest.json dropped into the checkpoint, --out CKPT --force; it used to
    export, then delete the checkpoint's weights, config and every other file in it."""
    shutil.copyfile(paper_build[0] / "manifest.json", checkpoint_copy / "manifest.json")
    (checkpoint_copy / "notes.txt").write_text("not transprune's")
    out = {"the checkpoint itself": checkpoint_copy, "inside it": checkpoint_copy / "build",
           "its parent": tmp_path, "a symlink to it": tmp_path / "link"}[where]
    if where == "a symlink to it":
        out.symlink_to(checkpoint_copy, target_is_directory=True)
    before = Tree.of(tmp_path)
    status, err = _export(["--model", str(checkpoint_copy), "--out", str(out), "--force", "--no-validate"], capsys)
    assert_one_line_error(status, err, "--out", phrase, "choose another --out")
    assert status == 2
    before.assert_unchanged()


def test_export_model_refuses_the_checkpoint_and_the_cache_from_python(checkpoint_copy, transprune_cache):
    from transprune.export.exporter import export_model
    from transprune.schedule import preset

    with pytest.raises(TransPruneError) as error:
        export_model(model=str(checkpoint_copy), out=checkpoint_copy, schedule=preset("paper"), force=True,
                     validate=False)
    assert_one_line_message(error.value, "is the checkpoint")
    # a synthetic preset is built into, and read from, the transprune cache: none of it is --out
    before = Tree.of(transprune_cache)
    with pytest.raises(TransPruneError) as error:
        export_model(model="tiny", cache_dir=transprune_cache, out=transprune_cache / "exports" / "tiny",
                     schedule=preset("paper"), validate=False)
    assert_one_line_message(error.value, "lies inside the transprune cache")
    before.assert_unchanged()


def _damage(build: Path, tmp_path: Path, how: str) -> Path:
    """``build`` (a real build) with something transprune did not write; returns --out."""
    if how == "a file of the user's":
        (build / "notes.txt").write_text("mine")
    elif how == "a directory of the user's":
        (build / "photos").mkdir()
        (build / "photos" / "cat.jpg").write_bytes(b"jpeg")
    elif how == "a symlink":
        (build / "link").symlink_to(tmp_path)
    elif how == "a hidden file":
        (build / ".keep").write_text("")
    elif how == "a file in an engine directory":
        (_add_engine_dir(build) / "trtexec.log").write_text("mine")
    elif how == "an engine directory whose plan is no plan":
        engine_dir = _add_engine_dir(build)
        (engine_dir / "plan.json").write_text(json.dumps({"engines": [{"engine": ["x"]}], "timing_cache": [1]}))
    elif how == "a manifest that is a symlink":
        shutil.move(build / "manifest.json", tmp_path / "manifest.json")
        (build / "manifest.json").symlink_to(tmp_path / "manifest.json")
    elif how == "a manifest dropped among other files":
        other = tmp_path / "mine"
        other.mkdir()
        shutil.copyfile(build / "manifest.json", other / "manifest.json")
        (other / "config.json").write_text("{}")
        return other
    elif how == "a manifest that is not JSON":
        (build / "manifest.json").write_text("{")
    elif how == "a manifest of a future schema":
        manifest = json.loads((build / "manifest.json").read_text())
        (build / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    return build


@pytest.mark.parametrize("how, phrase", [
    ("a file of the user's", "that transprune did not write (notes.txt)"),
    ("a directory of the user's", "that transprune did not write (photos/)"),
    ("a symlink", "that transprune did not write (link)"),
    ("a hidden file", "that transprune did not write (.keep)"),
    ("a file in an engine directory", "that transprune did not write (trt-rtx/)"),
    ("an engine directory whose plan is no plan", "that transprune did not write (trt-rtx/)"),
    ("a manifest that is a symlink", "is a non-empty directory that is not a transprune build"),
    ("a manifest dropped among other files", "is listed in the manifest but missing"),
    ("a manifest that is not JSON", "is not a transprune build that can be replaced"),
    ("a manifest of a future schema", "schema version 99"),
])
def test_force_never_deletes_what_transprune_did_not_write(build_copy, tiny_checkpoint, tmp_path, capsys, how,
                                                           phrase):
    out = _damage(build_copy, tmp_path, how)
    before = Tree.of(tmp_path)
    status, err = _export(["--model", str(tiny_checkpoint), "--out", str(out), "--force", "--no-validate"], capsys)
    assert_one_line_error(status, err, phrase, "refusing to replace it even with --force")
    before.assert_unchanged()


def test_force_accepts_builds_with_engine_directories_older_schemas_and_empty_directories(build_copy, tmp_path):
    """What --force may replace: the build's files, transprune-build's engine directories (built
    from the graphs being replaced), a build of an older schema (same file lists), nothing at all."""
    from transprune.export.out_dir import check_out

    _add_engine_dir(build_copy, "trt-rtx")
    _add_engine_dir(build_copy, "engines-elsewhere")  # any name: an engine directory is what it holds
    check_out(build_copy, force=True)
    manifest = json.loads((build_copy / "manifest.json").read_text())
    for version in (1, 2):
        (build_copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": version}))
        check_out(build_copy, force=True)
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", force=True)
    with pytest.raises(TransPruneError, match="already exists; pass --force"):
        check_out(build_copy, force=False)


def test_force_replaces_a_build_atomically_engine_directories_included(build_copy, tiny_checkpoint, tmp_path,
                                                                        monkeypatch):
    """The old build stays in place until the new one is complete: during the export, and at the
    swap itself (whenever --out is renamed onto, the old build still exists, set aside). It used
    to be deleted first, so that for a moment neither existed."""
    from transprune.export.exporter import export_model
    from transprune.runtime.manifest import load_manifest, manifest_files
    from transprune.schedule import preset

    _add_engine_dir(build_copy)
    old = Tree.of(build_copy)
    old_manifest = (build_copy / "manifest.json").read_text()
    old_in_place, old_somewhere = [], []

    def progress(step, steps, label):
        old_in_place.append(Tree.of(build_copy).entries == old.entries)

    def watching(real):
        def move(source, destination, *args, **kwargs):
            if Path(destination) == build_copy:
                old_somewhere.append(any(p.read_text() == old_manifest for p in tmp_path.glob("*/manifest.json")))
            return real(source, destination, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "rename", watching(os.rename))
    monkeypatch.setattr(os, "replace", watching(os.replace))
    manifest = export_model(model=str(tiny_checkpoint), out=build_copy, schedule=preset("none"), force=True,
                            validate=False, progress=progress)
    monkeypatch.undo()
    assert old_in_place and all(old_in_place)
    assert old_somewhere == [True]
    assert load_manifest(build_copy)["schedule"]["name"] == "none" == manifest["schedule"]["name"]
    assert sorted(p.name for p in build_copy.iterdir()) == sorted({"manifest.json", *manifest_files(manifest)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]  # no staging, no old build set aside


# --- 2. SIGTERM cleans up like Ctrl-C -----------------------------------------------------------------


def _terminate_export_once_staging_appears(argv: list[str], parent: Path, name: str) -> tuple[int, str]:
    process = subprocess.Popen([sys.executable, "-m", "transprune.cli.export", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine needs a minute to import torch and start
        while not (parent.is_dir() and any(parent.glob(f".{name}.*"))):
            assert process.poll() is None, f"the export ended before it started writing: {process.communicate()}"
            assert time.monotonic() < deadline, "no staging directory appeared"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, err


def test_sigterm_during_export_leaves_nothing_behind(tiny_checkpoint, tmp_path):
    """The staging directory (up to a whole 7B export) and the parent directories the export made."""
    out = tmp_path / "new" / "deeper" / "b"
    status, err = _terminate_export_once_staging_appears(
        ["--model", str(tiny_checkpoint), "--out", str(out), "--no-validate"], out.parent, out.name)
    assert status == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines[-1] == "transprune-export: terminated"
    assert sum("terminated" in line for line in lines) == 1
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_export_with_force_keeps_the_previous_build(build_copy, tiny_checkpoint, tmp_path):
    before = Tree.of(tmp_path)
    status, err = _terminate_export_once_staging_appears(
        ["--model", str(tiny_checkpoint), "--out", str(build_copy), "--force", "--no-validate"], tmp_path, "build")
    assert status == 143, err
    assert err.splitlines()[-1] == "transprune-export: terminated" and "Traceback" not in err
    before.assert_unchanged()


@pytest.fixture
def sigterm_guard():
    """In-process SIGTERM tests signal the test process itself: should a CLI fail to catch it, this
    handler turns it into a failing test instead of Python's default, death of the whole run."""
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the test: the CLI did not handle it")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_runs_the_commands_cleanup_and_exits_143(sigterm_guard, capsys):
    """Every CLI runs in run_user_command: SIGTERM unwinds through the command's cleanup; a second
    SIGTERM during that cleanup does not cut it short; the previous handler comes back."""
    from transprune.cli._common import run_user_command

    cleaned = []

    def command():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler raises at the next bytecode
                time.sleep(0.01)
            raise AssertionError("SIGTERM did not interrupt the command")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            cleaned.append(True)

    assert run_user_command("transprune-x", command) == 143
    assert cleaned == [True]
    assert capsys.readouterr().err == "transprune-x: terminated\n"
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard  # put back


def _terminate_at_fsync(monkeypatch):
    """SIGTERM arrives while a file is being written (its temporary exists, half done)."""
    from transprune import files

    def fsync(fd):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)

    monkeypatch.setattr(files.os, "fsync", fsync)


def test_sigterm_during_explain_and_build_leaves_no_partial_file(sigterm_guard, build_copy, tmp_path, capsys,
                                                                 monkeypatch):
    from transprune.cli import build, explain
    from transprune.sample_image import sample_image

    sample_image().save(tmp_path / "photo.png")
    (tmp_path / "out").mkdir()
    before = Tree.of(tmp_path)
    _terminate_at_fsync(monkeypatch)
    status = explain.main([str(build_copy), "--image", str(tmp_path / "photo.png"), "--prompt", "What is it?",
                           "--out", str(tmp_path / "out" / "x.png"), "--max-new-tokens", "1"])
    err = capsys.readouterr().err
    assert status == 143 and err.splitlines()[-1] == "transprune-explain: terminated", err
    status = build.main([str(build_copy), "--target", "rtx", "--out", str(tmp_path / "out" / "trt"), "--plan-only"])
    err = capsys.readouterr().err
    assert status == 143 and err.splitlines()[-1] == "transprune-build: terminated", err
    before.assert_unchanged()


def test_sigterm_during_run_exits_143(sigterm_guard, build_copy, tmp_path, capsys, monkeypatch):
    from transprune.cli import run
    from transprune.runtime.pipeline import Pipeline
    from transprune.sample_image import sample_image

    sample_image().save(tmp_path / "photo.png")

    def generate_batch(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
        raise AssertionError("SIGTERM did not interrupt the run")

    monkeypatch.setattr(Pipeline, "generate_batch", generate_batch)
    status = run.main([str(build_copy), "--image", str(tmp_path / "photo.png"), "--prompt", "What is it?"])
    assert status == 143 and capsys.readouterr().err.splitlines()[-1] == "transprune-run: terminated"


# --- 3. outputs that cannot be written: one line, exit 2, nothing written -------------------------------


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("where, phrase", [
    ("a regular file", "out is a file, not a directory"),
    ("under a file", "out is a file, not a directory"),
    ("two levels under a file", "out is a file, not a directory"),
])
def test_export_onto_or_under_a_file(tiny_checkpoint, tmp_path, capsys, force, where, phrase):
    (tmp_path / "out").write_text("precious")
    out = {"a regular file": tmp_path / "out", "under a file": tmp_path / "out" / "b",
           "two levels under a file": tmp_path / "out" / "x" / "b"}[where]
    before = Tree.of(tmp_path)
    status, err = _export(["--model", str(tiny_checkpoint), "--out", str(out), "--no-validate",
                           *(["--force"] if force else [])], capsys)
    assert_one_line_error(status, err, phrase, "choose another --out")
    assert status == 2
    before.assert_unchanged()


@pytest.mark.parametrize("where", ["into it", "into a new directory in it", "replacing a build in it",
                                   "replacing a read-only build"])
def test_export_into_a_read_only_directory(build_copy, tiny_checkpoint, tmp_path, capsys, where):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    if where == "replacing a build in it":
        build_copy = Path(shutil.move(build_copy, read_only / "build"))
    out = {"into it": read_only / "b", "into a new directory in it": read_only / "new" / "b",
           "replacing a build in it": build_copy, "replacing a read-only build": build_copy}[where]
    locked = build_copy if where == "replacing a read-only build" else read_only
    os.chmod(locked, 0o555)
    try:
        _skip_unless_permissions_apply(locked)
        before = Tree.of(tmp_path)
        status, err = _export(["--model", str(tiny_checkpoint), "--out", str(out), "--force", "--no-validate"],
                              capsys)
        assert_one_line_error(status, err, "read-only", "--out")
        assert status == 2
        before.assert_unchanged()
    finally:
        os.chmod(locked, 0o755)


# --- 4. transprune-explain and transprune-build: outputs may not be their inputs --------------------------


@pytest.fixture
def explain_setup(build_copy, tmp_path):
    from transprune.sample_image import sample_image

    image = tmp_path / "photo.png"
    sample_image().save(image)
    (tmp_path / "a-directory.png").mkdir()
    (tmp_path / "link.png").symlink_to(image)
    (tmp_path / "file").write_text("x")
    return build_copy, image


@pytest.mark.parametrize("flags, phrase", [
    (["--json", "{build}/manifest.json"], "--json {build}/manifest.json lies inside the build directory"),
    (["--json", "{build}/head.onnx"], "lies inside the build directory"),
    (["--out", "{build}/explain.png"], "--out {build}/explain.png lies inside the build directory"),
    (["--out", "{image}"], "--out {image} is --image"),
    (["--out", "{tmp}/link.png"], "is --image"),
    (["--json", "{image}"], "--json {image} is --image"),
    (["--json", "{tmp}/x.png"], "--json {tmp}/x.png is --out"),
    (["--out", "{tmp}/a-directory.png"], "is a directory; name the file"),
    (["--json", "{tmp}/a-directory.png"], "is a directory; name the file"),
    (["--out", "{tmp}/file/x.png"], "is a file, not a directory"),
])
def test_explain_refuses_outputs_that_are_its_inputs(explain_setup, tmp_path, capsys, flags, phrase):
    from transprune.cli.explain import main

    build, image = explain_setup
    names = dict(build=build, image=image, tmp=tmp_path)
    argv = {"--out": str(tmp_path / "x.png")}
    argv.update({flags[0]: flags[1].format(**names)})
    before = Tree.of(tmp_path)
    status = main([str(build), "--image", str(image), "--prompt", "What is it?", "--max-new-tokens", "1",
                   *(item for pair in argv.items() for item in pair)])
    assert_one_line_error(status, capsys.readouterr().err, phrase.format(**names))
    assert status == 2
    before.assert_unchanged()


@pytest.fixture
def build_with_checkpoint(build_copy, tmp_path):
    """The build copy, its manifest pointing at a private checkpoint directory (so that a failing
    case cannot write into the session's checkpoint)."""
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    manifest = json.loads((build_copy / "manifest.json").read_text())
    manifest["model"]["checkpoint"] = str(checkpoint)
    (build_copy / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "vision.engine").write_bytes(b"not an engine of ours")
    (tmp_path / "a-directory").mkdir()
    return build_copy, checkpoint


@pytest.mark.parametrize("flags, phrase", [
    (["--out", "{build}"], "--out {build} is the build directory"),
    (["--out", "{tmp}"], "contains the build directory"),
    (["--out", "{ckpt}"], "is the checkpoint"),
    (["--out", "{ckpt}/trt"], "lies inside the checkpoint"),
    (["--out", "{build}/manifest.json"], "is a file, not a directory"),
    (["--out", "{tmp}/mine"], "is no engine directory"),
    (["--timing-cache", "{build}/manifest.json"], "--timing-cache {build}/manifest.json lies inside the build "
                                                  "directory"),
    (["--timing-cache", "{build}/head.onnx"], "lies inside the build directory"),
    (["--timing-cache", "{ckpt}/model.safetensors"], "lies inside the checkpoint"),
    (["--timing-cache", "{build}/trt-jetson-orin-nano/plan.json"], "which transprune-build writes itself"),
    (["--timing-cache", "{tmp}/a-directory"], "is a directory; name the file"),
])
def test_build_refuses_outputs_that_are_its_inputs(build_with_checkpoint, tmp_path, capsys, flags, phrase):
    from transprune.cli.build import main

    build, checkpoint = build_with_checkpoint
    names = dict(build=build, ckpt=checkpoint, tmp=tmp_path)
    before = Tree.of(tmp_path)
    status = main([str(build), "--target", "jetson-orin-nano", "--plan-only", flags[0], flags[1].format(**names)])
    assert_one_line_error(status, capsys.readouterr().err, phrase.format(**names))
    assert status == 2
    before.assert_unchanged()


# --- 5. a LLaVA config whose language model is not LLaMA ------------------------------------------------


@pytest.mark.parametrize("text_model", ["mistral", "gpt2"])
def test_export_refuses_a_language_model_other_than_llama(checkpoint_copy, tmp_path, capsys, text_model):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["text_config"]["model_type"] = text_model
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    before = Tree.of(tmp_path)
    status, err = _export(["--model", str(checkpoint_copy), "--out", str(tmp_path / "b"), "--no-validate"], capsys)
    assert_one_line_error(status, err, f"language model is '{text_model}'", "text_config.model_type", "'llama'")
    assert status == 2
    before.assert_unchanged()


def test_model_facts_refuses_a_language_model_other_than_llama(tiny_checkpoint):
    """The same check on a transformers config object (export_model's path after loading)."""
    from transformers import LlavaConfig

    from transprune.family import model_facts

    config = LlavaConfig.from_pretrained(tiny_checkpoint)
    model_facts(config)
    text = config.text_config.to_dict()
    text["model_type"] = "mistral"
    with pytest.raises(TransPruneError) as error:
        model_facts(LlavaConfig(**{**config.to_dict(), "text_config": text}))
    assert_one_line_message(error.value, "'mistral'", "'llama'")
