"""Writing files so that a reader never sees half of one.

Plans, engines, engine metadata and ``transprune-explain``'s outputs are read by other processes
(the runtime, a build script on the device) and survive crashes and Ctrl-C. ``write_atomic``
writes the data to a temporary file in the same directory (so the rename stays on one file
system), flushes it to disk, then renames it over the target in one step: the target is either
the old file or the complete new one. A failure at any point, an interrupt included, removes the
temporary file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_writer", "write_atomic"]

_ATTEMPTS = 100  # temporary names are random: a clash means another writer, so try another name


def write_atomic(path: str | os.PathLike, data: str | bytes | memoryview) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` atomically; the new file gets the permissions a
    plain ``open(path, "w")`` would give it (0o666 less the umask)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data  # bytes-like: written without a copy
    with atomic_writer(path) as file:
        file.write(payload)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike):
    """A binary file to write ``path``'s new content into, piece by piece (an engine streamed out of
    TensorRT's builder); it replaces ``path`` only when the ``with`` block ends without an error."""
    path = Path(path)
    temporary, fd = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt too: never leave a half-written temporary file
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new, empty, hidden file beside ``path`` and its open descriptor. Not ``tempfile.mkstemp``:
    that creates the file 0o600, and the files written here are read by other users and tools."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_ATTEMPTS):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")
