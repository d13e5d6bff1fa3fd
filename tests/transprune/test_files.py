"""transprune.files.write_atomic: all or nothing, and no temporary file left behind."""

from __future__ import annotations

import os
import stat

import pytest

from transprune import files
from transprune.files import write_atomic


def test_writes_text_and_bytes_and_replaces_with_plain_file_permissions(tmp_path):
    path = tmp_path / "plan.json"
    write_atomic(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch, error):
    path = tmp_path / "engine.json"
    path.write_text("old")

    def fail(*args):
        raise error

    monkeypatch.setattr(files.os, "fsync", fail)
    with pytest.raises(type(error)):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.json"]


# --- where a command may write (issue 19) ---------------------------------------------------------

from transprune.errors import TransPruneError  # noqa: E402
from transprune.files import (check_writable, create_hidden, create_parents, hidden_sibling, is_within,  # noqa: E402
                              refuse_overlap, remove_created, replace_directory)


@pytest.fixture
def checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    (directory / "sub").mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"weights")
    return directory


@pytest.mark.parametrize("output, phrase", [
    ("ckpt", "is the checkpoint"),
    ("ckpt/", "is the checkpoint"),
    ("ckpt/sub/../", "is the checkpoint"),
    ("ckpt/model.safetensors", "lies inside the checkpoint"),
    ("ckpt/sub/new/deeper", "lies inside the checkpoint"),
    (".", "contains the checkpoint"),
    ("link", "is the checkpoint"),  # a symlink is what it points to
    ("link/new", "lies inside the checkpoint"),
    ("outer-link/ckpt", "is the checkpoint"),  # a symlinked ancestor
])
def test_refuse_overlap_refuses_an_output_that_is_holds_or_lies_inside_an_input(tmp_path, checkpoint, monkeypatch,
                                                                                 output, phrase):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(checkpoint)
    (tmp_path / "outer-link").symlink_to(tmp_path)
    with pytest.raises(TransPruneError, match=phrase) as error:
        refuse_overlap(output, inputs={"the checkpoint": checkpoint, "unused": None}, what="--out")
    assert "--out" in str(error.value) and "\n" not in str(error.value)


def test_refuse_overlap_lets_outputs_beside_inputs_and_inside_allowed_ones_pass(tmp_path, checkpoint):
    build = tmp_path / "build"
    build.mkdir()
    for output in (tmp_path / "out", tmp_path / "ckpt-2", tmp_path / "ckp", build / "trt-rtx"):
        refuse_overlap(output, inputs={"the checkpoint": checkpoint, "the build directory": build}, what="--out",
                       may_lie_inside=("the build directory",))
    with pytest.raises(TransPruneError, match="is the build directory"):  # allowed inside, never the build itself
        refuse_overlap(build, inputs={"the build directory": build}, what="--out", may_lie_inside=("the build "
                                                                                                   "directory",))


def test_is_within_sees_one_directory_under_two_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").symlink_to(tmp_path / "a", target_is_directory=True)
    assert is_within(tmp_path / "b" / "x", tmp_path / "a") and is_within(tmp_path / "a", tmp_path / "b")
    assert not is_within(tmp_path / "a", tmp_path / "a" / "x")


@pytest.mark.parametrize("setup, path, kind, create_parents, phrase", [
    ("dir", "d", "file", False, "is a directory; name the file"),
    ("file", "f", "directory", False, "is a file, not a directory"),
    ("file", "f/x", "file", False, "f is a file, not a directory"),
    ("file", "f/x/y", "directory", True, "f is a file, not a directory"),
    (None, "missing/x", "file", False, "directory .*missing does not exist; create it"),
])
def test_check_writable_refuses_paths_that_cannot_be_written(tmp_path, setup, path, kind, create_parents, phrase):
    if setup == "dir":
        (tmp_path / "d").mkdir()
    elif setup == "file":
        (tmp_path / "f").write_text("x")
    with pytest.raises(TransPruneError, match=phrase):
        check_writable(tmp_path / path, what="--out", kind=kind, create_parents=create_parents)
    check_writable(tmp_path / "missing" / "x", what="--out", kind="directory", create_parents=True)


def skip_unless_permissions_apply(directory) -> None:
    """Skips when this process may write into the read-only ``directory`` anyway: running as root
    (or with CAP_DAC_OVERRIDE), which ignores file permissions."""
    if os.access(directory, os.W_OK):
        os.chmod(directory, 0o755)
        pytest.skip("running as root: root ignores file permissions, so a read-only directory (os.chmod) cannot "
                    "be tested; run as a normal user (or without CAP_DAC_OVERRIDE)")


def test_check_writable_refuses_a_read_only_directory(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    skip_unless_permissions_apply(tmp_path / "ro")
    try:
        for path in (tmp_path / "ro" / "x", tmp_path / "ro" / "new" / "x"):
            with pytest.raises(TransPruneError, match="cannot write in .*ro"):
                check_writable(path, what="--out", kind="directory", create_parents=True)
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_create_parents_and_remove_created_take_back_only_what_they_made(tmp_path):
    (tmp_path / "a").mkdir()
    created = create_parents(tmp_path / "a" / "b" / "c" / "out")
    assert created == [tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    (tmp_path / "a" / "b" / "someone-elses").write_text("x")  # written meanwhile: b is no longer ours to remove
    remove_created(created)
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["someone-elses"]
    assert create_parents(tmp_path / "a" / "out") == []


def _tree(root):
    return {str(p.relative_to(root)): p.read_text() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.fixture
def old_and_new(tmp_path):
    old, new = tmp_path / "build", tmp_path / ".build.staging"
    for directory, text in ((old, "old"), (new, "new")):
        (directory / "sub").mkdir(parents=True)
        (directory / "manifest.json").write_text(text)
        (directory / "sub" / "x").write_text(text)
    return old, new


def test_replace_directory_swaps_in_the_new_directory_and_leaves_no_sibling(tmp_path, old_and_new):
    old, new = old_and_new
    replace_directory(new, old)
    assert _tree(old) == {"manifest.json": "new", "sub": None, "sub/x": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]
    replace_directory(old, tmp_path / "fresh")  # onto nothing: a plain rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh"]


@pytest.mark.parametrize("failing_call", [1, 2])
@pytest.mark.parametrize("error", [OSError("EIO"), KeyboardInterrupt()])
def test_replace_directory_keeps_the_old_directory_when_a_rename_fails(tmp_path, old_and_new, monkeypatch,
                                                                       failing_call, error):
    old, new = old_and_new
    real_rename, calls = os.rename, []

    def rename(source, destination):
        calls.append(source)
        if len(calls) == failing_call:
            raise error
        real_rename(source, destination)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(type(error)):
        replace_directory(new, old)
    monkeypatch.undo()
    assert _tree(old) == {"manifest.json": "old", "sub": None, "sub/x": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build.staging", "build"]  # the caller removes staging


def test_replace_directory_interrupted_after_the_swap_keeps_the_new_one_and_removes_the_old(tmp_path, old_and_new,
                                                                                            monkeypatch):
    old, new = old_and_new
    real_rmtree, calls = files.shutil.rmtree, []

    def rmtree(path, *args, **kwargs):  # the signal arrives while the old directory is being removed
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(new, old)
    assert _tree(old) == {"manifest.json": "new", "sub": None, "sub/x": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_hidden_sibling_is_hidden_beside_and_free(tmp_path):
    sibling = hidden_sibling(tmp_path / "build", "old")
    assert sibling.parent == tmp_path and sibling.name.startswith(".build.old-") and not sibling.exists()


def test_create_hidden_claims_the_name_before_creating_and_drops_taken_names(tmp_path):
    claimed = []

    def interrupted(name):  # the signal arrives right after the directory is made
        os.mkdir(name)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        create_hidden(tmp_path / "build", "", interrupted, claimed)
    assert len(claimed) == 1 and claimed[0].is_dir() and claimed[0].name.startswith(".build.")
    tried = []

    def busy_once(name):
        tried.append(name)
        if len(tried) == 1:
            raise FileExistsError(name)  # another writer's name: never claimed
        return "created"

    taken = []
    assert create_hidden(tmp_path / "x", ".partial", busy_once, taken) == (tried[1], "created")
    assert taken == [tried[1]] and tried[1].name.endswith(".partial")


def test_an_interrupt_right_after_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    path.write_text("old")
    real_open = os.open

    def open_then_interrupted(*args):
        real_open(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
