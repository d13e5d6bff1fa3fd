"""A killed export's staging directory (issue 28): SIGKILL (the OOM killer's) runs no cleanup, so
the hidden ``.NAME.xxxxxxxx`` beside ``--out`` (a partial build, up to the model's size) stayed
forever. Now the next ``transprune-export`` on the same ``--out`` removes it with one notice, but
only when its marker proves it is an export's staging directory, for this ``--out``, on this host,
of a process that is gone; every look-alike stays (``transprune.staging``).

The killed process is ``staged_output`` alone writing a large file slowly (a second to start); the
next run is the ``--matmulnbits-from`` copy of the session's int4 build (seconds), which stages
the same way. The look-alikes are checked on ``staged_output`` directly, in-process.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transprune import staging
from transprune.export.out_dir import staged_output

from .conftest import Tree

WRITER = """
import sys, time
from pathlib import Path
from transprune.export.out_dir import staged_output

with staged_output(Path(sys.argv[1]), force=False) as staging:
    with open(staging / "segment_0.onnx.data", "wb") as file:
        while True:  # a graph's weights, written slowly: killed mid-write
            file.write(b"\\0" * 65536)
            file.flush()
            time.sleep(0.01)
"""


def _kill_mid_write(out: Path) -> tuple[Path, int]:
    """Starts an export's staging into ``out``, SIGKILLs it mid-write; returns what it left, and its pid."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size > 1 << 20 for p in out.parent.glob(f".{out.name}.*/segment_0.onnx.data")):
            assert process.poll() is None, f"the writer ended: {process.communicate()}"
            assert time.monotonic() < deadline, "the writer wrote nothing"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    (left,) = out.parent.glob(f".{out.name}.*")
    return left, process.pid


def _marker(directory: Path) -> dict:
    return json.loads((directory / staging.MARKER).read_text())


@functools.lru_cache(maxsize=None)
def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_export_removes_what_a_killed_export_left_once(int4_build, tmp_path, capsys):
    from transprune.cli.export import main

    out = tmp_path / "b"
    left, pid = _kill_mid_write(out)
    assert left.name.startswith(".b.") and len(left.name) == len(".b.") + 8
    assert (left / "segment_0.onnx.data").stat().st_size > 1 << 20  # the partial build, left by SIGKILL
    assert _marker(left)["pid"] == pid and _marker(left)["command"] == "transprune-export"

    assert main(["--matmulnbits-from", str(int4_build[0]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    notice = f"transprune-export: removed {left.name}, the staging directory of an export killed earlier (pid {pid})"
    assert err.splitlines().count(notice) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # the leftover is gone, no new one stayed
    assert not (out / staging.MARKER).exists() and (out / "manifest.json").is_file()

    assert main(["--matmulnbits-from", str(int4_build[0]), "--out", str(out), "--force"]) == 0
    assert "removed" not in capsys.readouterr().err  # nothing more to remove


def _fake_staging(parent: Path, name: str, **changes) -> Path:
    """A directory named like a staging directory with a marker of ``changes`` over a dead export's."""
    directory = parent / name
    directory.mkdir()
    (directory / "segment_0.onnx.data").write_bytes(b"\0" * 4096)
    record = {"command": "transprune-export", "pid": _dead_pid(), "start_time": 12345,
              "hostname": socket.gethostname(), "out": os.path.realpath(parent / "b")}
    record.update(changes)
    for key in [k for k, v in changes.items() if v is Ellipsis]:
        del record[key]
    (directory / staging.MARKER).write_text(json.dumps(record))
    return directory


def _zombie() -> tuple[subprocess.Popen, int]:
    """A child killed but not reaped: its pid still answers, its state is Z."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = None
    while start is None:
        start = staging.process_start_time(process.pid)
    process.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return process, start


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times come from /proc (Linux)")
def test_only_provably_ours_and_dead_staging_directories_are_removed(tmp_path, capsys):
    parent = tmp_path / "exports"
    parent.mkdir()
    me, my_start = os.getpid(), staging.process_start_time(os.getpid())
    zombie, zombie_start = _zombie()
    try:
        removable = {
            "a dead export's": _fake_staging(parent, ".b.0000aaaa"),
            "a reused pid's (another start time)": _fake_staging(parent, ".b.0000bbbb", pid=me,
                                                                  start_time=my_start + 1),
            "an unreaped (zombie) export's": _fake_staging(parent, ".b.0000cccc", pid=zombie.pid,
                                                            start_time=zombie_start),
        }
        kept = [
            _fake_staging(parent, ".b.1111aaaa", pid=me, start_time=my_start),  # alive: this process
            _fake_staging(parent, ".b.1111bbbb", pid=me, start_time=None),  # alive, start unknown
            _fake_staging(parent, ".b.1111cccc", out=str(tmp_path / "elsewhere" / "b")),
            _fake_staging(parent, ".b.1111dddd", hostname="another-host"),
            _fake_staging(parent, ".b.1111eeee", command="transprune-build"),
            _fake_staging(parent, ".b.1111ffff", extra="field"),
            _fake_staging(parent, ".b.2222aaaa", hostname=...),  # a field missing
            _fake_staging(parent, ".b.2222bbbb", pid=True),  # not an int
            _fake_staging(parent, ".b.2222cccc", pid="1"),
            _fake_staging(parent, ".b.ABCD1234"),  # not lowercase hex
            _fake_staging(parent, ".b.1234567"),  # 7 digits
            _fake_staging(parent, ".b.12345678.partial"),
            _fake_staging(parent, ".b.old-12345678"),  # replace_directory's aside
            _fake_staging(parent, ".bb.12345678"),  # another --out's
        ]
        no_marker = parent / ".b.3333aaaa"
        no_marker.mkdir()
        (no_marker / "notes").write_text("someone's")
        kept.append(no_marker)
        not_json = _fake_staging(parent, ".b.3333bbbb")
        (not_json / staging.MARKER).write_text("{" * 10000)
        big = _fake_staging(parent, ".b.3333cccc")
        (big / staging.MARKER).write_text(json.dumps({**_marker(big), "out": "x" * 5000}))
        elsewhere = _fake_staging(tmp_path, ".b.9999aaaa", out=os.path.realpath(parent / "b"))
        linked_marker = parent / ".b.3333dddd"
        linked_marker.mkdir()
        (linked_marker / staging.MARKER).symlink_to(elsewhere / staging.MARKER)  # a valid marker, through a link
        linked_dir = parent / ".b.3333eeee"
        linked_dir.symlink_to(elsewhere, target_is_directory=True)  # a link to a valid staging directory
        fifo = parent / ".b.3333ffff"
        fifo.mkdir()
        os.mkfifo(fifo / staging.MARKER)  # read without blocking, and refused
        kept += [not_json, big, linked_marker, linked_dir, fifo]
        before = Tree.of(tmp_path)
        notices = sorted(f"transprune-export: removed {d.name}, the staging directory of an export killed earlier "
                         f"(pid {_marker(d)['pid']})" for d in removable.values())

        with staged_output(parent / "b", force=False) as stage:
            (stage / "manifest.json").write_text("{}")
    finally:
        zombie.wait()
    err = capsys.readouterr().err
    assert sorted(err.splitlines()) == notices, err
    for what, directory in removable.items():
        assert not os.path.lexists(directory), what
    now = Tree.of(tmp_path).entries
    for directory in kept:
        assert os.path.lexists(directory), directory.name
        inside = {k: v for k, v in before.entries.items() if k.startswith(str(directory.relative_to(tmp_path)))}
        assert inside and all(now.get(k) == v for k, v in inside.items()), directory.name
    assert os.listdir(parent / "b") == ["manifest.json"]  # the marker went before the swap


def test_a_staging_directory_of_another_user_stays(tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("making a directory of another user needs root")
    parent = tmp_path / "exports"
    parent.mkdir()
    theirs = _fake_staging(parent, ".b.4444aaaa")
    for path in (theirs, *theirs.iterdir()):
        os.chown(path, 12345, 12345)
    assert staging.remove_leftovers(parent / "b", command="transprune-export", what="an export") == []
    assert theirs.is_dir() and capsys.readouterr().err == ""


def test_a_leftover_that_cannot_be_removed_is_one_notice(tmp_path, monkeypatch):
    parent = tmp_path / "exports"
    parent.mkdir()
    left = _fake_staging(parent, ".b.5555aaaa")
    monkeypatch.setattr(staging.shutil, "rmtree", lambda path, ignore_errors=False: None)
    notices = []
    assert staging.remove_leftovers(parent / "b", command="transprune-export", what="an export",
                                    notice=notices.append) == []
    assert notices == [f"could not remove {left.name}, the staging directory of an export killed earlier (pid "
                       f"{_marker(left)['pid']}); remove it by hand"]
    monkeypatch.undo()
    shutil.rmtree(left)
