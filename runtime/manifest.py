"""Reading a build directory's manifest.json safely (standard library only).

A build directory may come from anywhere (copied to a Jetson, downloaded), so nothing in it is
trusted: the schema version must be one this code knows, every file it names must resolve inside
the directory (no absolute paths, no ``..``, no symlinks out), and every file's sha256 must match.
Every file a backend will open must be listed: each graph file and the external data files it names
(read from the ONNX itself, ``onnx_header``), and each graph file must say it is the graph the
manifest puts in its place (the identity the exporter writes into its metadata), so that files
swapped between roles, with hashes updated to match, are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from transprune.errors import TransPruneError

from .onnx_header import IDENTITY_KEY, read_header

MANIFEST = "manifest.json"
# 2: prompt and image_preprocess sections (the torch-free runtime)
# 3: LLaVA-NeXT (anyres) builds; limits.image_tokens is a {min, max} range, scorers carry keep_ratio
# 4: every graph's ONNX metadata carries its identity (graph_identity); older builds lack it
# 5: segments return only the new tokens' keys/values (new_*, appended to one cache buffer by the
#    host) instead of present = concat(past, new)
SCHEMA_VERSION = 5
MAX_MANIFEST_BYTES = 16 << 20  # a 7B build's manifest is about 60 kB; anything near this is not one
MAX_NESTING = 32  # the deepest a manifest nests is about 6 levels (model config)


class ManifestError(TransPruneError):
    """The build directory is missing, incomplete, tampered with or from an unknown version."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_inside(build_dir: Path, name: str) -> Path:
    """``build_dir / name``, refusing any name that would lead outside ``build_dir``."""
    root = Path(build_dir).resolve()
    if not isinstance(name, str) or not name or Path(name).is_absolute() or "\\" in name:
        raise ManifestError(f"{build_dir}: manifest names the file {name!r}, which is not a plain relative path")
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise ManifestError(f"{build_dir}: manifest file {name!r} escapes the build directory; refusing to read it")
    return path


# Graph names and file names a manifest may hold: they reach file names, logs and the generated
# build script, so nothing outside this alphabet (no shell metacharacters, spaces, slashes or
# control characters), and no leading dot (no ".", "..", hidden files).
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_safe_name(value, *, what: str, where) -> str:
    """``value`` if it is a safe name (``SAFE_NAME``), else a ManifestError naming it."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ManifestError(f"{where}: {what} {value!r} is not a safe name (letters, digits, '_', '.', '-'; at most "
                            f"128, not starting with '.' or '-'); the build was not written by transprune-export: "
                            f"re-export it")
    return value


def graph_identity(entry: dict, dtype: str, weights: str | None = None) -> dict:
    """What a graph file must say it is (its ``IDENTITY_KEY`` metadata): its name, role, layers and
    attributes (keep counts, scoring, position shift...), the build's dtype and, for quantized
    builds, how its weights are stored (``weights_label``: "int4/128"), as JSON values."""
    identity = {"name": entry["name"], "kind": entry["kind"], "layers": entry.get("layers"),
                "attrs": entry.get("attrs", {}), "dtype": dtype}
    if weights is not None:
        identity["weights"] = weights
    return json.loads(json.dumps(identity))  # tuples become lists: the form read back from the file


WEIGHT_FORMATS = ("float", "int4")  # "float": the build's dtype (the default); "int4": export/int4.py


def _check_weights_section(path: Path, section) -> None:
    if section is None:
        return
    block = section.get("block_size") if isinstance(section, dict) else None
    if (not isinstance(section, dict) or section.get("format") not in WEIGHT_FORMATS
            or (section["format"] == "int4" and not (type(block) is int and 1 <= block <= 4096))):
        raise ManifestError(f"{path}: 'weights' does not describe a weight format this transprune reads "
                            f"({', '.join(WEIGHT_FORMATS)}); re-export the build")


def weights_label(section: dict | None) -> str | None:
    """How a build stores its weights, as its graphs' identities say it: None for the float dtype,
    "int4/128" for int4 in blocks of 128 (the manifest's ``weights`` section)."""
    if not section or section.get("format") in (None, "float"):
        return None
    return f"{section.get('format')}/{section.get('block_size')}"


def manifest_files(manifest: dict) -> dict[str, str]:
    """Every file the manifest vouches for: {relative name: sha256}."""
    files = {}
    for graph in manifest.get("graphs", []):
        files.update(graph.get("sha256", {}))
    files.update(manifest.get("processor_files", {}))
    return files


def load_manifest(build_dir: Path, *, verify: bool = True) -> dict:
    """The parsed manifest of ``build_dir``; with ``verify`` every file is checked against its sha256."""
    build_dir = Path(build_dir)
    path = build_dir / MANIFEST
    if not build_dir.is_dir():
        raise ManifestError(f"build directory {build_dir} does not exist; create one with transprune-export")
    if not path.exists():
        raise ManifestError(f"{build_dir} has no {MANIFEST}; it is not a transprune build directory "
                            f"(create one with transprune-export)")
    manifest = _parse(path, read_regular_file(path, limit=MAX_MANIFEST_BYTES, what="manifest"))
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema version {manifest.get('schema_version')!r}, but this transprune reads "
                            f"version {SCHEMA_VERSION}; re-export the build with this version")
    for key in ("graphs", "model", "schedule", "dtype", "limits", "prompt", "image_preprocess"):
        if key not in manifest:
            raise ManifestError(f"{path}: required field {key!r} is missing; re-export the build")
    if not isinstance(manifest["graphs"], list) or not all(isinstance(g, dict) for g in manifest["graphs"]):
        raise ManifestError(f"{path}: 'graphs' is not a list of graph entries; re-export the build")
    for graph in manifest["graphs"]:
        check_safe_name(graph.get("name"), what="graph name", where=path)
        check_safe_name(graph.get("file"), what="graph file", where=path)
        resolve_inside(build_dir, graph["file"])
        if not isinstance(graph.get("sha256"), dict) or graph["file"] not in graph["sha256"]:
            raise ManifestError(f"{path}: graph {graph['name']!r} does not list its file {graph['file']!r} with a "
                                f"sha256, so it cannot be verified; re-export the build")
    _check_weights_section(path, manifest.get("weights"))
    if not isinstance(manifest.get("processor_files", {}), dict):
        raise ManifestError(f"{path}: 'processor_files' is not a table of files; re-export the build")
    files = manifest_files(manifest)
    for name, expected in files.items():
        check_safe_name(name, what="file", where=path)
        if not isinstance(expected, str):
            raise ManifestError(f"{path}: the sha256 of {name!r} is not a string; re-export the build")
    for name, expected in files.items():
        file = resolve_inside(build_dir, name)
        if not file.is_file():
            raise ManifestError(f"{build_dir}: {name} is listed in the manifest but missing; copy the whole "
                                f"build directory")
        if verify and sha256(file) != expected:
            raise ManifestError(f"{build_dir}: {name} does not match its sha256 in the manifest (corrupt or "
                                f"modified); copy or export the build again")
    for graph in manifest["graphs"]:
        _check_graph_file(build_dir, graph, manifest["dtype"], weights_label(manifest.get("weights")))
    return manifest


def read_regular_file(path: Path, *, limit: int, what: str) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes. Opened without
    blocking and checked on the open descriptor, so a FIFO or device swapped in cannot hang or flood."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot open the {what} ({exc.strerror}); check the path and its "
                            f"permissions") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError(f"{path}: the {what} is not a regular file; copy the build directory again")
        if info.st_size > limit:
            raise ManifestError(f"{path}: the {what} is {info.st_size / 1e6:.1f} MB, over the {limit / 1e6:.0f} MB "
                                f"a build's {what} can be; it was not written by transprune-export")
        data = file.read(limit + 1)
    if len(data) > limit:  # grew after the stat
        raise ManifestError(f"{path}: the {what} is over the {limit / 1e6:.0f} MB a build's {what} can be")
    return data


def _parse(path: Path, data: bytes) -> dict:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:  # ValueError: a 5,000-digit number
        raise ManifestError(f"{path} is not valid JSON ({exc}); re-export the build") from None
    except RecursionError:
        raise ManifestError(f"{path} nests deeper than {MAX_NESTING} levels; not a transprune manifest, "
                            f"re-export the build") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} holds a JSON {type(manifest).__name__}, not a manifest object; re-export "
                            f"the build")
    if _depth(manifest) > MAX_NESTING:
        raise ManifestError(f"{path} nests deeper than {MAX_NESTING} levels; not a transprune manifest, "
                            f"re-export the build")
    return manifest


def _depth(value) -> int:
    """How deeply ``value`` nests (iteratively: a hostile file must not exhaust the stack)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        deepest = max(deepest, level)
        if level > MAX_NESTING:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        pending.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _check_graph_file(build_dir: Path, graph: dict, dtype: str, weights: str | None) -> None:
    """The graph file's external data lies inside the build and is listed with a sha256, and the file
    says it is the graph this entry describes."""
    path = resolve_inside(build_dir, graph["file"])
    header = read_header(path)
    for location in sorted(header.external_data):
        check_safe_name(location, what=f"external data file of {graph['file']}", where=path)
        resolve_inside(build_dir, location)
        if location not in graph["sha256"]:
            raise ManifestError(f"{build_dir}: {graph['file']} keeps weights in {location}, which the manifest does "
                                f"not list with a sha256; re-export the build")
    recorded = header.metadata.get(IDENTITY_KEY)
    if recorded is None:
        raise ManifestError(f"{build_dir}: {graph['file']} carries no transprune graph identity; it was not "
                            f"exported as this build's {graph['name']!r}: re-export the build")
    try:
        identity = json.loads(recorded)
    except (json.JSONDecodeError, ValueError, RecursionError):
        raise ManifestError(f"{build_dir}: {graph['file']} has an unreadable graph identity; re-export the "
                            f"build") from None
    expected = graph_identity(graph, dtype, weights)
    if identity != expected:
        claims = identity.get("name") if isinstance(identity, dict) else None
        raise ManifestError(f"{build_dir}: {graph['file']} is not the graph the manifest puts there (it says it is "
                            f"{claims!r}{'' if claims != graph['name'] else ' of another build'}, the manifest "
                            f"expects {graph['name']!r} as recorded); the files were swapped or mixed between "
                            f"builds: re-export the build")
