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
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Mapping

from .errors import TransPruneError

__all__ = ["atomic_writer", "check_writable", "create_hidden", "create_parents", "hidden_sibling", "is_within", "refuse_overlap",
           "remove_created", "replace_directory", "write_atomic"]

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
    claimed: list[Path] = []
    try:
        # Not tempfile.mkstemp: that creates the file 0o600, and the files written here are read
        # by other users and tools
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        temporary, fd = create_hidden(path, ".partial", lambda name: os.open(name, flags, 0o666), claimed)
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt and SIGTERM too: never leave a half-written temporary file
        for temporary in claimed:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        raise


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
