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
