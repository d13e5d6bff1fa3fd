"""Reading a build directory's manifest.json safely (standard library only).

A build directory may come from anywhere (copied to a Jetson, downloaded), so nothing in it is
trusted: the schema version must be one this code knows, every file it names must resolve inside
the directory (no absolute paths, no ``..``, no symlinks out), and every file's sha256 must match.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from transprune.errors import TransPruneError

MANIFEST = "manifest.json"
# 2: prompt and image_preprocess sections (the torch-free runtime)
# 3: LLaVA-NeXT (anyres) builds; limits.image_tokens is a {min, max} range, scorers carry keep_ratio
SCHEMA_VERSION = 3


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
    if not path.is_file():
        raise ManifestError(f"{build_dir} has no {MANIFEST}; it is not a transprune build directory "
                            f"(create one with transprune-export)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); re-export the build") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ManifestError(f"{path}: schema version {found!r}, but this transprune reads version "
                            f"{SCHEMA_VERSION}; re-export the build with this version")
    for key in ("graphs", "model", "schedule", "dtype", "limits", "prompt", "image_preprocess"):
        if key not in manifest:
            raise ManifestError(f"{path}: required field {key!r} is missing; re-export the build")
    if not isinstance(manifest["graphs"], list) or not all(isinstance(g, dict) for g in manifest["graphs"]):
        raise ManifestError(f"{path}: 'graphs' is not a list of graph entries; re-export the build")
    for graph in manifest["graphs"]:
        check_safe_name(graph.get("name"), what="graph name", where=path)
        check_safe_name(graph.get("file"), what="graph file", where=path)
        resolve_inside(build_dir, graph.get("file"))
        if not isinstance(graph.get("sha256", {}), dict):
            raise ManifestError(f"{path}: graph {graph['name']!r} has no sha256 table; re-export the build")
    if not isinstance(manifest.get("processor_files", {}), dict):
        raise ManifestError(f"{path}: 'processor_files' is not a table of files; re-export the build")
    for name in manifest_files(manifest):
        check_safe_name(name, what="file", where=path)
    for name, expected in manifest_files(manifest).items():
        file = resolve_inside(build_dir, name)
        if not file.is_file():
            raise ManifestError(f"{build_dir}: {name} is listed in the manifest but missing; copy the whole "
                                f"build directory")
        if verify and sha256(file) != expected:
            raise ManifestError(f"{build_dir}: {name} does not match its sha256 in the manifest (corrupt or "
                                f"modified); copy or export the build again")
    return manifest
