"""Staging directories that a killed run left behind (issue 28), found and removed by the next run.

``transprune-export`` writes a whole build into a hidden sibling of ``--out`` (``.NAME.xxxxxxxx``,
``transprune.files.create_hidden``) and renames it into place when done; Ctrl-C and SIGTERM take it
back. SIGKILL (the kernel's OOM killer, likely on a 7B export) runs no cleanup: the directory, a
partial build up to the model's size, would stay forever. So each staging directory holds, while it
is being written, a marker (``MARKER``) saying who writes it: the command, its process id and that
process's start time, the host and the ``--out`` it is for. The next run of the same command on the
same ``--out`` removes a sibling only when all of this proves it is such a leftover:

- its name is exactly ``.NAME.`` and 8 hex digits, it is a directory (not a link to one) of this user;
- its marker is a regular file (not a link), small, JSON with exactly the fields written here, for
  this command, this host and this ``--out``;
- the process it names is gone: no such process, a zombie, or a process of another start time (the
  id was reused). Without a start time to compare (not Linux) only "no such process" counts.

Anything else, a look-alike of the same name included, is not provably ours and stays. The marker is
removed before the directory is renamed into place: a finished build holds only its own files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import Callable

__all__ = ["MARKER", "mark", "process_start_time", "remove_leftovers", "unmark"]

MARKER = ".transprune-staging.json"
_FIELDS = {"command": str, "pid": int, "start_time": (int, type(None)), "hostname": str, "out": str}
_MAX_MARKER_BYTES = 4096


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot: field 22 of /proc/PID/stat), or None
    where that cannot be read (no such process, not Linux)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (the state) on: the name in field 2 may hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read(4096)
        fields = data[data.rindex(b")") + 2:].decode("ascii").split()
        int(fields[19])
        return fields
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _out_key(out: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(out)))


def mark(directory: str | os.PathLike, *, command: str, out: str | os.PathLike) -> None:
    """Writes the marker into the new, empty staging ``directory`` of ``command`` for ``out``."""
    record = {"command": command, "pid": os.getpid(), "start_time": process_start_time(os.getpid()),
              "hostname": socket.gethostname(), "out": _out_key(out)}
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(os.path.join(directory, MARKER), flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def unmark(directory: str | os.PathLike) -> None:
    """Removes the marker: ``directory`` is complete and about to become the output."""
    os.unlink(os.path.join(directory, MARKER))


def _read_marker(directory: str) -> dict | None:
    """The marker in ``directory`` if it is one this module wrote (a small regular file holding
    JSON with exactly its fields, of their types), else None."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(os.path.join(directory, MARKER), flags)
    except OSError:  # none, a symlink (ELOOP), unreadable
        return None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_size > _MAX_MARKER_BYTES:
            return None
        data = os.read(fd, _MAX_MARKER_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or set(record) != set(_FIELDS):
        return None
    for name, kind in _FIELDS.items():
        if not isinstance(record[name], kind) or isinstance(record[name], bool):
            return None
    return record if record["pid"] > 0 else None


def _gone(pid: int, start_time: int | None) -> bool:
    """Whether the process that wrote a marker has ended; when in doubt, it has not."""
    if os.name != "posix":  # os.kill(pid, 0) is no probe there
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return False
    fields = _stat_fields(pid)
    if start_time is None or fields is None:
        return False  # a reused id cannot be told from the writer still at work
    return int(fields[19]) != start_time or fields[0] in ("Z", "X")  # another process, or dead and unreaped


def remove_leftovers(out: str | os.PathLike, *, command: str, what: str,
                     notice: Callable[[str], None] | None = None) -> list[Path]:
    """Removes the staging directories beside ``out`` that a killed run of ``command`` left (the
    rules above); each removal is one ``notice`` (default: a line on stderr, "COMMAND: removed
    .NAME.xxxxxxxx, the staging directory of WHAT killed earlier (pid N)"). Returns the removed."""
    out = Path(os.path.abspath(out))
    if notice is None:
        notice = lambda message: print(f"{command}: {message}", file=sys.stderr, flush=True)  # noqa: E731
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[0-9a-f]{{8}}")
    try:
        names = sorted(entry.name for entry in os.scandir(out.parent) if pattern.fullmatch(entry.name))
    except OSError:
        return []
    host, key, removed = socket.gethostname(), _out_key(out), []
    for name in names:
        path = out.parent / name
        try:
            status = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(status.st_mode) or (hasattr(os, "geteuid") and status.st_uid != os.geteuid()):
            continue
        record = _read_marker(str(path))
        if (record is None or record["command"] != command or record["hostname"] != host or record["out"] != key
                or not _gone(record["pid"], record["start_time"])):
            continue
        shutil.rmtree(path, ignore_errors=True)  # never follows a symlink inside
        if os.path.lexists(path):
            notice(f"could not remove {name}, the staging directory of {what} killed earlier (pid {record['pid']}); "
                   f"remove it by hand")
            continue
        notice(f"removed {name}, the staging directory of {what} killed earlier (pid {record['pid']})")
        removed.append(path)
    return removed
