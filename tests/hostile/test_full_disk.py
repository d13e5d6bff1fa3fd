"""A disk that fills up midway (issue 28): every command that writes (``transprune-export``, its
``--matmulnbits-from`` copy, ``transprune-build``, ``transprune-explain``) ends with one error line
naming the path and what it was writing, exit status 2, and nothing of what it was writing left.

Each case runs twice: on a real full disk, a small tmpfs mounted for the test (ENOSPC, and numpy's
errno-less "2048 requested and 1024 written" that onnx_ir's external data ends in; mounting needs
root, and is skipped with the reason where it is not allowed), and with the error injected, which
runs anywhere. The tmpfs export is the slow one (about 15 s to its first graph); the rest take
seconds once the session's builds exist.
"""

from __future__ import annotations

import collections
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from transprune import files
from transprune.files import DiskFull, atomic_writer, is_disk_full

from .conftest import Tree

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
SHORT_WRITE = OSError("2048 requested and 1024 written")  # numpy's tofile on a full disk: no errno


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a new directory with a tmpfs of ``size`` ("64k") mounted on it."""
    mounted = []

    def mount(size: str) -> Path:
        directory = tmp_path / f"disk-{size}"
        directory.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here to make a small full disk (the injected cases cover it)")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs here (it needs root; {done.stderr.strip()}): the injected "
                        f"cases cover the same code")
        mounted.append(directory)
        return directory

    yield mount
    for directory in mounted:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def _error_line(status: int, err: str, *phrases: str) -> str:
    """Exit 2 and one error line, the last; progress lines before it are fine, a traceback is not."""
    assert status == 2, f"exit status {status}; stderr: {err[-3000:]}"
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert errors == lines[-1:], f"expected one error line, the last:\n{err[-3000:]}"
    for phrase in phrases:
        assert phrase in lines[-1], f"{phrase!r} not in {lines[-1]!r}"
    return lines[-1]


def _fail_on_the_first_write(monkeypatch, error: OSError) -> None:
    """The atomically written files' next write (their fsync) fails with ``error``."""
    def fsync(fd):
        raise error

    monkeypatch.setattr(files.os, "fsync", fsync)


def _no_room(monkeypatch) -> None:
    """The disk reads as full (for numpy's short write, which is told from the room left)."""
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))


# --- what counts as a full disk -----------------------------------------------------------------------


def test_a_full_disk_is_told_by_errno_or_by_a_short_write_with_no_room_left(tmp_path, monkeypatch):
    assert is_disk_full(ENOSPC, tmp_path)
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert not is_disk_full(SHORT_WRITE, tmp_path)  # this disk has room: another failure, kept as it is
    assert not is_disk_full(OSError("disk full"), tmp_path) and not is_disk_full(ValueError("x"), tmp_path)
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"), tmp_path)
    # onnx_ir has removed the file it was writing: a disk with less room than the build holds was filled by it
    assert is_disk_full(SHORT_WRITE, tmp_path, written=shutil.disk_usage(tmp_path).free + 1)
    _no_room(monkeypatch)
    assert is_disk_full(SHORT_WRITE, tmp_path / "not" / "yet" / "made")
    assert not is_disk_full(OSError("2048 requested and 2048 written"), tmp_path)


def test_a_write_that_failed_fails_the_file_even_when_the_writer_swallowed_it(small_disk):
    """TensorRT's builder catches what its stream writer raises and reports success: the engine,
    cut short, used to be renamed into place."""
    disk = small_disk("64k")
    with pytest.raises(DiskFull) as caught:
        with atomic_writer(disk / "vision.engine", what="the vision engine") as file:
            try:
                file.write(b"\0" * (1 << 20))
            except OSError:
                pass  # the builder's way
    assert str(caught.value).startswith(f"no space left on the disk holding {disk / 'vision.engine'} while "
                                        f"writing the vision engine; nothing of it was kept")
    assert os.listdir(disk) == []


# --- transprune-export ----------------------------------------------------------------------------------


def _export(argv, capsys) -> tuple[int, str]:
    from transprune.cli.export import main

    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_export_onto_a_full_disk(small_disk, tiny_checkpoint, capsys, monkeypatch):
    """The case of the issue: onnx_ir's "N requested and M written", no errno, used to be a traceback.
    400k hold the first graph (vision, 255 kB), not the next (embed, 264 kB)."""
    from transprune.export import exporter

    disk = small_disk("400k")
    # the check before any work would refuse a disk this small: this is the disk that fills up later
    monkeypatch.setattr(exporter, "_check_free_space", lambda directory, needed: None)
    status, err = _export(["--model", tiny_checkpoint, "--out", disk / "b", "--no-validate"], capsys)
    _error_line(status, err, f"transprune-export: error: no space left on the disk holding {disk / 'b'} while "
                             f"writing the build (", "which needs about",
                "nothing of it was kept: free space or pass --out on another disk")
    assert os.listdir(disk) == []


@pytest.mark.parametrize("error", [ENOSPC, SHORT_WRITE], ids=["ENOSPC", "short-write"])
def test_export_onto_a_full_disk_injected(tiny_checkpoint, tmp_path, capsys, monkeypatch, error):
    from transprune.export import exporter

    out = tmp_path / "new" / "b"

    def fill_up(directory, needed):  # the first graph's weights, half written, then no room
        (staging,) = out.parent.glob(".b.*")
        (staging / "vision.onnx.data").write_bytes(b"\0" * 1024)
        raise error

    monkeypatch.setattr(exporter, "_check_free_space", fill_up)
    _no_room(monkeypatch)
    status, err = _export(["--model", tiny_checkpoint, "--out", out, "--no-validate"], capsys)
    _error_line(status, err, f"no space left on the disk holding {out} while writing the build (vision.onnx.data), "
                             f"which needs about")
    assert list(tmp_path.iterdir()) == []  # the staging directory and the parent the export made


def test_export_force_onto_a_full_disk_keeps_the_previous_build(build_copy, tiny_checkpoint, capsys, monkeypatch):
    from transprune.export import exporter

    def full(directory, needed):
        raise ENOSPC

    monkeypatch.setattr(exporter, "_check_free_space", full)
    before = Tree.of(build_copy.parent)
    status, err = _export(["--model", tiny_checkpoint, "--out", build_copy, "--force", "--no-validate"], capsys)
    _error_line(status, err, f"no space left on the disk holding {build_copy} while writing the build")
    before.assert_unchanged()


# --- transprune-export --matmulnbits-from ----------------------------------------------------------------


def test_matmulnbits_copy_onto_a_full_disk(small_disk, int4_build, capsys):
    disk = small_disk("256k")
    status, err = _export(["--matmulnbits-from", int4_build[0], "--out", disk / "m"], capsys)
    _error_line(status, err, f"transprune-export: error: no space left on the disk holding {disk / 'm'} while "
                             f"writing the build (", "pass --out on another disk")
    assert os.listdir(disk) == []


def test_matmulnbits_copy_onto_a_full_disk_injected(int4_build, tmp_path, capsys, monkeypatch):
    from transprune.export import int4_matmulnbits

    def convert_file(source, target, **kwargs):
        Path(target).write_bytes(b"\0" * 1024)
        raise ENOSPC

    monkeypatch.setattr(int4_matmulnbits, "convert_file", convert_file)
    status, err = _export(["--matmulnbits-from", int4_build[0], "--out", tmp_path / "m"], capsys)
    _error_line(status, err, f"no space left on the disk holding {tmp_path / 'm'} while writing the build "
                             f"(vision.onnx)")
    assert list(tmp_path.iterdir()) == []


# --- transprune-build -----------------------------------------------------------------------------------


def _build(argv, capsys) -> tuple[int, str]:
    from transprune.cli.build import main

    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_build_onto_a_full_disk(small_disk, build_copy, tensorrt_rtx, capsys):
    """The plan and script fit, the first engine does not; TensorRT's own 'Exception caught in
    write()' printout is kept off stderr too."""
    disk = small_disk("64k")
    status, err = _build([build_copy, "--target", "rtx", "--out", disk / "trt"], capsys)
    _error_line(status, err, f"transprune-build: error: no space left on the disk holding {disk / 'trt'}/",
                ".engine while writing the ", " engine; nothing of it was kept: free space or pass --out on "
                                                "another disk")
    assert sorted(os.listdir(disk / "trt")) == ["build_engines.sh", "plan.json"]  # no engine, no .partial


def test_build_onto_a_full_disk_injected(build_copy, tmp_path, capsys, monkeypatch):
    _fail_on_the_first_write(monkeypatch, ENOSPC)
    status, err = _build([build_copy, "--target", "rtx", "--out", tmp_path / "trt", "--plan-only"], capsys)
    _error_line(status, err, f"transprune-build: error: no space left on the disk holding {tmp_path / 'trt'}/plan.json "
                             f"while writing the build plan; nothing of it was kept")
    assert list(tmp_path.iterdir()) == [build_copy]


def test_build_engine_onto_a_full_disk_injected(build_copy, tmp_path, tensorrt_rtx, capsys, monkeypatch):
    """An engine streamed into a file that fails every write (its descriptor on /dev/full)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here to fail every write of the engine with ENOSPC")
    real_open = files.os.open

    def open_full(name, flags, mode=0o777, **kwargs):
        fd = real_open(name, flags, mode, **kwargs)
        if str(name).endswith(".partial") and ".engine." in os.path.basename(name):
            full = real_open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
        return fd

    monkeypatch.setattr(files.os, "open", open_full)
    status, err = _build([build_copy, "--target", "rtx", "--out", tmp_path / "trt"], capsys)
    _error_line(status, err, f"no space left on the disk holding {tmp_path / 'trt'}/", ".engine while writing the ")
    assert sorted(os.listdir(tmp_path / "trt")) == ["build_engines.sh", "plan.json"]


# --- transprune-explain ---------------------------------------------------------------------------------


@pytest.fixture
def photo(tmp_path) -> Path:
    from transprune.sample_image import sample_image

    path = tmp_path / "photo.png"
    sample_image().save(path)
    return path


def _explain(build, photo, out, capsys, *more) -> tuple[int, str]:
    from transprune.cli.explain import main

    status = main([str(build), "--image", str(photo), "--prompt", "What is it?", "--out", str(out),
                   "--max-new-tokens", "1", *map(str, more)])
    return status, capsys.readouterr().err


def test_explain_onto_a_full_disk(small_disk, build_copy, photo, capsys):
    disk = small_disk("8k")
    status, err = _explain(build_copy, photo, disk / "x.png", capsys, "--json", disk / "x.json")
    _error_line(status, err, f"transprune-explain: error: no space left on the disk holding {disk / 'x.png'} while "
                             f"writing the PNG; nothing of it was kept: free space or pass --out on another disk")
    assert os.listdir(disk) == []


@pytest.mark.parametrize("error", [ENOSPC, SHORT_WRITE], ids=["ENOSPC", "short-write"])
def test_explain_onto_a_full_disk_injected(build_copy, photo, tmp_path, capsys, monkeypatch, error):
    (tmp_path / "out").mkdir()
    _fail_on_the_first_write(monkeypatch, error)
    _no_room(monkeypatch)
    status, err = _explain(build_copy, photo, tmp_path / "out" / "x.png", capsys)
    _error_line(status, err, f"no space left on the disk holding {tmp_path / 'out' / 'x.png'} while writing the PNG")
    assert os.listdir(tmp_path / "out") == []
