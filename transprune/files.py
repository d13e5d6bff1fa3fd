"""Writing files so that a reader never sees half of one.

Plans, engines, engine metadata and ``transprune-explain``'s outputs are read by other processes
(the runtime, a build script on the device) and survive crashes and Ctrl-C. ``write_atomic``
writes the data to a temporary file in the same directory (so the rename stays on one file
system), flushes it to disk, then renames it over the target in one step: the target is either
the old file or the complete new one. A failure at any point, an interrupt included, removes the
temporary file. ``replace_directory`` does the same for a whole build directory.

The rest is where a command may write at all (issue 19: writes never destroy what they did not
create), one rule for every CLI and API function: ``refuse_overlap`` refuses an output that is,
contains or lies inside one of the command's inputs (the checkpoint, the build, the image), with
symlinks resolved; ``check_writable`` refuses, before any work, an output that is a directory where
a file is meant (or the reverse), under a file, or in a directory this process cannot write.

A disk that fills up midway is the user's to fix too (issue 28): ``is_disk_full`` recognises the
failed write (ENOSPC, EDQUOT, or numpy's errno-less short write, which onnx_ir's external data goes
through), and ``atomic_writer`` and the exporter's ``staged_output`` turn it, once they have taken
back what they wrote, into ``DiskFull``: one line naming the path and what was being written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Mapping

from .errors import TransPruneError

__all__ = ["DiskFull", "atomic_writer", "check_writable", "create_hidden", "create_parents", "hidden_sibling",
           "is_disk_full", "is_within", "refuse_overlap", "remove_created", "replace_directory", "tree_bytes",
           "write_atomic"]

_ATTEMPTS = 100  # temporary names are random: a clash means another writer, so try another name


# numpy's ndarray.tofile when fwrite comes up short (a full disk): an OSError without an errno
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFull(TransPruneError):
    """A write that failed for want of room on its disk: one line naming the path and what was
    being written, said once what was written has been taken back."""

    def __init__(self, path: str | os.PathLike, what: str, *, remedy: str = "write it to another disk",
                 needed: int | None = None) -> None:
        self.path, self.what, self.remedy, self.needed = Path(path), what, remedy, needed
        need = f", which needs about {_size(needed)}" if needed else ""
        super().__init__(f"no space left on the disk holding {path} while writing {what}{need}; nothing of it was "
                         f"kept: free space or {remedy}")


def _size(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def is_disk_full(exc: BaseException, where: str | os.PathLike, *, written: int = 0) -> bool:
    """Whether ``exc`` is a write into ``where`` (a file or directory on the disk written to) that
    failed because that disk is full: ENOSPC or EDQUOT, or numpy's short write ("2048 requested
    and 1024 written", no errno) on a disk with less room left than the part not written, or than
    ``written``, what the failing command has written there so far (and is about to take back).

    Why ``written``: onnx_ir writes a graph's weights to a temporary file that it removes when the
    write fails, so by the time the error arrives that file's room is free again; a disk with less
    room than the build already holds was filled by it. A short write on a disk with more room
    than that has another cause (a file size limit, an I/O error) and keeps its traceback. Call
    this before removing what the failed command wrote, which frees the room again."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in _FULL_ERRNOS:
        return True
    match = _SHORT_WRITE.fullmatch(str(exc)) if exc.errno is None else None
    if match is None or int(match[2]) >= int(match[1]):
        return False
    existing = Path(where)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free  # what this user may still write (statvfs f_bavail)
    except OSError:
        return False
    return free < max(int(match[1]) - int(match[2]), written)  # items not written: a byte each at least


def tree_bytes(directory: str | os.PathLike) -> int:
    """The bytes the files under ``directory`` take on disk (symlinks not followed; 0 if unreadable)."""
    total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                status = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += getattr(status, "st_blocks", 0) * 512 or status.st_size
    return total


def write_atomic(path: str | os.PathLike, data: str | bytes | memoryview, *, what: str | None = None,
                 remedy: str | None = None) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` atomically; the new file gets the permissions a
    plain ``open(path, "w")`` would give it (0o666 less the umask). ``what`` and ``remedy`` word
    the ``DiskFull`` a full disk raises (``atomic_writer``)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data  # bytes-like: written without a copy
    with atomic_writer(path, what=what, remedy=remedy) as file:
        file.write(payload)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, what: str | None = None, remedy: str | None = None):
    """A binary file to write ``path``'s new content into, piece by piece (an engine streamed out of
    TensorRT's builder); it replaces ``path`` only when the ``with`` block ends without an error.

    A write that failed fails the whole file even if the block caught the error (TensorRT's builder
    catches what its stream writer raises, and reports success with the engine cut short). A write,
    flush or fsync that fails because the disk is full (``is_disk_full``) becomes ``DiskFull``
    naming ``path`` and ``what`` (default: ``path``'s name), with ``remedy`` (default: write it to
    another disk), once the temporary file is gone: ``path`` is as it was."""
    path = Path(path)
    claimed: list[Path] = []
    try:
        # Not tempfile.mkstemp: that creates the file 0o600, and the files written here are read
        # by other users and tools
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        temporary, fd = create_hidden(path, ".partial", lambda name: os.open(name, flags, 0o666), claimed)
        with os.fdopen(fd, "wb") as file:
            recording = _FailedWrites(file)
            yield recording
            if recording.failure is not None:
                raise recording.failure
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:  # KeyboardInterrupt and SIGTERM too: never leave a half-written temporary file
        full = is_disk_full(exc, path.parent)  # before the temporary goes, and the room with it
        for temporary in claimed:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        if full:
            raise DiskFull(path, what or path.name, **({"remedy": remedy} if remedy else {})) from None
        raise


class _FailedWrites:
    """A file whose ``write`` remembers the first exception it raised (``failure``); all else is the file's."""

    def __init__(self, file) -> None:
        self._file, self.failure = file, None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except BaseException as exc:
            if self.failure is None:
                self.failure = exc
            raise

    def __getattr__(self, name):
        return getattr(self._file, name)


def create_hidden(beside: str | os.PathLike, suffix: str, create, claimed: list) -> tuple:
    """Creates a new hidden entry ``.NAME.xxxxxxxx<suffix>`` beside ``beside`` with ``create(name)``
    (which must fail with FileExistsError when the name is taken: O_EXCL, mkdir); returns the name
    and what ``create`` returned. The name is appended to ``claimed`` before it is created, so an
    interrupt at any moment, even between the creation and this function's return, leaves the
    caller knowing what to remove; a name found taken is dropped from it (another writer's)."""
    beside = Path(beside)
    for _ in range(_ATTEMPTS):
        name = beside.with_name(f".{beside.name}.{secrets.token_hex(4)}{suffix}")
        claimed.append(name)
        try:
            return name, create(name)
        except FileExistsError:
            claimed.remove(name)
    raise FileExistsError(f"could not create a temporary entry beside {beside}")


# --- where a command may write (issue 19: writes never destroy what they did not create) ---------


def _real(path: str | os.PathLike) -> Path:
    """``path`` with every symlink resolved, whether or not it exists (the part that does not is kept)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def is_within(inner: str | os.PathLike, outer: str | os.PathLike) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it. Real paths first; then device and inode of
    every existing ancestor, which also sees through bind mounts and case-insensitive file systems,
    where two different spellings name one directory."""
    outer, inner = _real(outer), _real(inner)
    if inner == outer or outer in inner.parents:
        return True
    wanted = _identity(outer)
    return wanted is not None and any(_identity(p) == wanted for p in (inner, *inner.parents))


def refuse_overlap(output: str | os.PathLike, *, inputs: Mapping[str, str | os.PathLike | None], what: str,
                   may_lie_inside: Iterable[str] = ()) -> None:
    """Refuses ``output`` (flag ``what``) if it is, contains or lies inside one of ``inputs`` ({how to
    name it: path}; ``None`` values are skipped): writing or replacing it would destroy the input.
    The inputs named in ``may_lie_inside`` may hold the output (an engine directory inside its build)
    but still not be it or lie inside it. Symlinks are resolved: a link to the checkpoint is the
    checkpoint."""
    allowed = set(may_lie_inside)
    for label, path in inputs.items():
        if path is None:
            continue
        if is_within(output, path) and is_within(path, output):
            raise TransPruneError(f"{what} {output} is {label} ({path}); writing there would destroy it: choose "
                                  f"another {what}")
        if is_within(output, path) and label not in allowed:
            raise TransPruneError(f"{what} {output} lies inside {label} ({path}); write it outside: choose another "
                                  f"{what}")
        if is_within(path, output):
            raise TransPruneError(f"{what} {output} contains {label} ({path}); writing there could destroy it: "
                                  f"choose another {what}")


def check_writable(path: str | os.PathLike, *, what: str, kind: str, create_parents: bool = False) -> None:
    """Refuses, before anything is written, an output ``path`` (flag ``what``) that cannot be
    written as a ``kind`` ("file" or "directory"): a directory where a file is meant or the reverse,
    a parent that is a file, a missing parent (unless the command creates parents), or a directory
    this process may not write in. (Permissions are read with ``os.access``; root passes it.)"""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise TransPruneError(f"{what} {path} is a directory; name the file to write")
    if kind == "directory" and (path.exists() or path.is_symlink()) and not path.is_dir():
        raise TransPruneError(f"{what} {path} is a file, not a directory; choose another {what}")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TransPruneError(f"{what} {path}: {existing} is a file, not a directory; choose another {what}")
    if existing != path.parent and not create_parents:
        raise TransPruneError(f"{what} {path}: directory {path.parent} does not exist; create it or choose another "
                              f"{what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TransPruneError(f"{what} {path}: cannot write in {existing} (read-only or permission denied); choose "
                              f"another {what}")


def create_parents(path: str | os.PathLike, created: list | None = None) -> list[Path]:
    """Creates the missing parent directories of ``path``; returns the ones this call created,
    outermost first, for ``remove_created`` to take back if the command fails. Each is appended to
    ``created`` (when given) before it is made, so an interrupt midway still leaves the list whole."""
    created = [] if created is None else created
    missing, parent = [], Path(path).parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        created.append(directory)
        try:
            os.mkdir(directory)
        except FileExistsError:  # made meanwhile by someone else: theirs to keep
            created.remove(directory)
    return created


def remove_created(directories: Iterable[Path]) -> None:
    """Removes directories ``create_parents`` made, innermost first, each only while still empty."""
    for directory in reversed(list(directories)):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def hidden_sibling(path: str | os.PathLike, tag: str) -> Path:
    """A name for a new hidden entry beside ``path`` (``.NAME.TAG-xxxxxxxx``); nothing is created."""
    path = Path(path)
    for _ in range(_ATTEMPTS):
        sibling = path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}")
        if not (sibling.exists() or sibling.is_symlink()):
            return sibling
    raise FileExistsError(f"could not find a free name beside {path}")


def replace_directory(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Moves the complete directory ``staging`` to ``target`` (same file system), replacing what is
    there without a moment in which neither exists: the old ``target`` is renamed to a hidden
    sibling, ``staging`` renamed into place, then the old one removed. A failure or an interrupt
    (SIGTERM included) at any step leaves either the old directory or the new one at ``target``,
    never both gone: before the second rename the old one is put back; after it the old one goes.
    The caller decides whether ``target`` may be replaced at all."""
    staging, target = Path(staging), Path(target)
    if not (target.exists() or target.is_symlink()):
        os.rename(staging, target)  # onto nothing (or an empty directory, which holds nothing to lose)
        return
    old = hidden_sibling(target, "old")
    try:
        os.rename(target, old)
        os.rename(staging, target)
    except BaseException:
        # which step was cut short shows on disk: the old directory aside and nothing in place (put
        # it back), or the new one already in place (the old one goes, as below)
        if os.path.lexists(old):
            if os.path.lexists(target):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(old, target)
        raise
    try:
        shutil.rmtree(old)
    except OSError as exc:
        shutil.rmtree(old, ignore_errors=True)
        if os.path.lexists(old):
            raise TransPruneError(f"the new {target} is in place, but the old one could not be removed from {old} "
                                  f"({exc.strerror or exc}); remove it by hand") from None
    except BaseException:  # interrupted while removing: finish, so no hidden half-directory stays
        shutil.rmtree(old, ignore_errors=True)
        raise
