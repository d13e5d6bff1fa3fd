"""What ``export_model`` may do to its ``--out`` (issue 19): create it, or with ``force`` replace a
directory that is a transprune build and holds nothing transprune did not write.

Why so strict: ``--force`` used to delete any directory that held a ``manifest.json``, the
checkpoint being read included. Now a directory is replaced only when every entry in it is the
manifest, a file the manifest lists, or an engine directory ``transprune-build`` wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from transprune import staging as leftovers
from transprune.errors import TransPruneError
from transprune.files import (DiskFull, check_writable, create_hidden, create_parents, is_disk_full, remove_created,
                              replace_directory, tree_bytes)
from transprune.runtime.manifest import MANIFEST, SCHEMA_VERSION, manifest_files


def check_out(out: Path, *, force: bool) -> None:
    """Refuses an ``--out`` the export may not write, before any work (and again before the swap).

    ``--force`` replaces an existing directory only when it is a transprune build and holds nothing
    else, so that nothing transprune did not write is ever deleted (``_check_replaceable``); an empty
    directory holds nothing to lose. A symlink is refused (replacing it would move the link, not the
    build it points to), and so is a file.
    """
    if out.is_symlink():
        raise TransPruneError(f"--out {out} is a symbolic link; pass the directory it points to "
                              f"({os.path.realpath(out)})")
    check_writable(out, what="--out", kind="directory", create_parents=True)
    if not out.exists():
        return
    if not force:
        raise TransPruneError(f"{out} already exists; pass --force to replace it")
    if any(out.iterdir()):
        _check_replaceable(out)


@contextlib.contextmanager
def staged_output(out: Path, *, force: bool, command: str = "transprune-export") -> Iterator[Path]:
    """Yields a new hidden directory beside ``out`` to write a whole build into; when the block ends
    normally, ``out`` is checked again (it had time to change) and replaced by it in one step.

    If the block fails or is interrupted (Ctrl-C, SIGTERM), the staging directory and any parent
    directories this made are removed and the exception propagates: ``out`` is as it was. A full
    disk (``transprune.files.is_disk_full``) propagates as ``DiskFull`` naming ``out`` and the file
    last written. SIGKILL cleans up nothing: so the staging directory carries a marker of
    ``command`` (``transprune.staging``), and one that a run of ``command`` killed earlier left
    beside the same ``out`` is removed here, with a notice on stderr, before the new one is made
    (it may hold the room the new one needs).
    """
    check_out(out, force=force)
    created, claimed = [], []  # appended to before each is made: an interrupt midway still knows them

    def make(name: Path) -> None:
        # a plain mkdir (not mkdtemp's 0o700): a build is read by other users and tools, like its files
        os.mkdir(name)
        leftovers.mark(name, command=command, out=out)

    try:
        create_parents(out, created)
        leftovers.remove_leftovers(out, command=command, what="an export")
        staging, _ = create_hidden(out, "", make, claimed)
        yield staging
        check_out(out, force=force)
        leftovers.unmark(staging)  # the build holds its own files only (_check_replaceable)
        replace_directory(staging, out)
    except BaseException as exc:
        # a full disk is told by the room left, so before the staging directory goes and frees it
        full = isinstance(exc, OSError) and is_disk_full(exc, out.parent,
                                                         written=tree_bytes(claimed[-1]) if claimed else 0)
        name = _being_written(exc, claimed[-1]) if full and claimed else None
        for directory in claimed:
            shutil.rmtree(directory, ignore_errors=True)
        remove_created(created)
        if full:
            raise DiskFull(out, f"the build{f' ({name})' if name else ''}",
                           remedy="pass --out on another disk") from None
        raise


def _being_written(exc: OSError, staging: Path) -> str | None:
    """The name of the build's file that a failed write was writing: the error's, or else (numpy's
    short write names none) the file in ``staging`` modified last."""
    if isinstance(exc.filename, (str, os.PathLike)) and os.path.dirname(os.fspath(exc.filename)) == str(staging):
        name = os.path.basename(os.fspath(exc.filename))
        return name if name != leftovers.MARKER else None
    try:
        files = [entry for entry in os.scandir(staging) if entry.is_file(follow_symlinks=False)
                 and entry.name != leftovers.MARKER]
        return max(files, key=lambda entry: entry.stat(follow_symlinks=False).st_mtime_ns).name if files else None
    except OSError:
        return None


def _check_replaceable(out: Path) -> None:
    """Refuses to replace ``out`` unless everything in it was written by transprune.

    Replaceable: ``manifest.json`` of a transprune build (``load_manifest(verify=False)`` for this
    schema; for an older schema, which this version can no longer load, the same file lists), the
    files that manifest lists, and engine directories ``transprune-build`` wrote into the build
    (``_is_engine_dir``): those engines were built from the graphs being replaced, so they go with
    them. Anything else (a file the user added, a half-written temporary of a killed run, a
    symlink) is not transprune's to delete: the whole directory is refused. A build of this schema
    whose manifest lists a missing file is refused too (``load_manifest`` calls it incomplete); an
    older one is only checked for what it holds, since its fields may differ.
    """
    if (out / MANIFEST).is_symlink() or not (out / MANIFEST).is_file():
        raise TransPruneError(f"{out} is a non-empty directory that is not a transprune build; refusing to "
                              f"replace it even with --force (choose another --out)")
    manifest = _replaceable_manifest(out)
    listed = {MANIFEST, *manifest_files(manifest), *(g["file"] for g in manifest["graphs"])}
    foreign = []
    for entry in sorted(out.iterdir()):
        if entry.is_symlink():
            foreign.append(entry.name)
        elif entry.is_file() and entry.name in listed:
            continue
        elif entry.is_dir() and _is_engine_dir(entry):
            continue
        else:
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise TransPruneError(f"{out} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that transprune "
                              f"did not write ({shown}); refusing to replace it even with --force: move them out or "
                              f"choose another --out")
    for directory, _, _ in os.walk(out):
        # renaming the build needs its parent writable (checked), removing it every directory in it
        if not os.access(directory, os.W_OK | os.X_OK):
            raise TransPruneError(f"cannot replace {out}: {directory} is read-only; make it writable or choose "
                                  f"another --out")


def _replaceable_manifest(out: Path) -> dict:
    """The manifest of the build in ``out``, or a refusal saying why it is not one."""
    from transprune.runtime.manifest import ManifestError, check_safe_name, load_manifest

    try:
        return load_manifest(out, verify=False)
    except ManifestError as exc:
        reason = str(exc)
    manifest = _read_json(out / MANIFEST)
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if (type(version) is int and 1 <= version < SCHEMA_VERSION and isinstance(manifest.get("graphs"), list)
            and all(isinstance(g, dict) and isinstance(g.get("sha256", {}), dict) for g in manifest["graphs"])
            and isinstance(manifest.get("processor_files", {}), dict)):
        # an older transprune's build: its manifest lists its files the same way (graphs' sha256
        # tables and processor_files since schema 1)
        try:
            for name in [*manifest_files(manifest), *(g.get("file") for g in manifest["graphs"])]:
                check_safe_name(name, what="file", where=out / MANIFEST)
            return manifest
        except ManifestError as exc:
            reason = str(exc)
    raise TransPruneError(f"{out} has a {MANIFEST} but is not a transprune build that can be replaced "
                          f"({reason.rstrip('.')}); refusing to replace it even with --force: move it away or "
                          f"choose another --out")


def _is_engine_dir(directory: Path) -> bool:
    """Whether ``directory`` holds exactly what ``transprune-build`` writes: its plan, the trtexec
    script, the timing cache, TensorRT-RTX's runtime cache, and the plan's engines with their
    metadata, all plain files."""
    from transprune.runtime.tensorrt.backend import RUNTIME_CACHE_FILE
    from transprune.runtime.tensorrt.engines import PLAN_FILE, metadata_path

    from .tensorrt.plan import SCRIPT_FILE, TIMING_CACHE_FILE

    entries = list(directory.iterdir())
    if not all(entry.is_file() and not entry.is_symlink() for entry in entries):
        return False
    plan = _read_json(directory / PLAN_FILE)
    if not isinstance(plan, dict) or not isinstance(plan.get("engines"), list):
        return False
    known = {PLAN_FILE, SCRIPT_FILE, TIMING_CACHE_FILE, RUNTIME_CACHE_FILE}
    if isinstance(plan.get("timing_cache"), str):  # any JSON may be in there: names (strings) only
        known.add(plan["timing_cache"])
    for engine in plan["engines"]:
        name = engine.get("engine") if isinstance(engine, dict) else None
        if isinstance(name, str) and name:
            known.update({name, metadata_path(Path(name)).name})
    return all(entry.name in known for entry in entries)


def _read_json(path: Path):
    """The JSON in ``path`` (an older build's manifest, an engine plan: read only to learn which
    files they list), or None for anything that is not a regular file of at most a manifest's size
    holding JSON (a hostile file may nest a million deep)."""
    from transprune.runtime.manifest import MAX_MANIFEST_BYTES, ManifestError, read_regular_file

    try:
        return json.loads(read_regular_file(path, limit=MAX_MANIFEST_BYTES, what="manifest"))
    except (ManifestError, UnicodeDecodeError, ValueError, RecursionError):
        return None
