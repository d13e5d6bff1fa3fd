"""The manifest reader refuses anything it cannot trust: escapes, tampering, unknown schemas."""

import json
import os

import pytest

from onnx import helper

from transprune.runtime.manifest import (MANIFEST, SCHEMA_VERSION, ManifestError, graph_identity, load_manifest,
                                         resolve_inside, sha256)
from transprune.runtime.onnx_header import IDENTITY_KEY


def _graph_file(entry: dict) -> bytes:
    """An empty ONNX model that says it is ``entry`` (the identity the exporter writes)."""
    model = helper.make_model(helper.make_graph([], entry["name"], [], []))
    helper.set_model_props(model, {IDENTITY_KEY: json.dumps(graph_identity(entry, "fp32"))})
    return model.SerializeToString()


def _build(tmp_path, files=None, **overrides):
    """A minimal build directory: one graph file and one processor file, checksummed."""
    build = tmp_path / "build"
    build.mkdir()
    (build / "head.onnx").write_bytes(_graph_file({"name": "head", "kind": "head"}))
    (build / "tokenizer.json").write_text("{}")
    manifest = {"schema_version": SCHEMA_VERSION, "model": {}, "schedule": {}, "dtype": "fp32", "limits": {},
                "prompt": {}, "image_preprocess": {},
                "graphs": [{"name": "head", "kind": "head", "file": "head.onnx", "sha256": {"head.onnx": sha256(build / "head.onnx")}}],
                "processor_files": {"tokenizer.json": sha256(build / "tokenizer.json")}}
    manifest.update(overrides)
    (build / MANIFEST).write_text(json.dumps(manifest))
    return build, manifest


def test_a_good_build_loads(tmp_path):
    build, manifest = _build(tmp_path)
    assert load_manifest(build) == manifest


@pytest.mark.parametrize("name", ["../evil.onnx", "/etc/passwd", "sub/../../evil.onnx", "", "a\\..\\b"])
def test_paths_that_leave_the_directory_are_refused(tmp_path, name):
    build, _ = _build(tmp_path)
    with pytest.raises(ManifestError):
        resolve_inside(build, name)


def test_a_graph_file_outside_the_build_is_refused(tmp_path):
    build, manifest = _build(tmp_path)
    manifest["graphs"][0]["file"] = "../outside.onnx"
    (build / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="graph file '../outside.onnx' is not a safe name"):
        load_manifest(build)


def test_a_symlink_out_of_the_build_is_refused(tmp_path):
    build, manifest = _build(tmp_path)
    (tmp_path / "secret.onnx").write_bytes(b"x")
    os.symlink(tmp_path / "secret.onnx", build / "link.onnx")
    manifest["graphs"][0]["sha256"]["link.onnx"] = sha256(tmp_path / "secret.onnx")
    (build / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="escapes"):
        load_manifest(build)


def test_a_modified_file_fails_its_checksum(tmp_path):
    build, _ = _build(tmp_path)
    (build / "tokenizer.json").write_text('{"changed": true}')
    with pytest.raises(ManifestError, match="tokenizer.json does not match its sha256"):
        load_manifest(build)
    assert load_manifest(build, verify=False)["dtype"] == "fp32"


def test_a_missing_file_is_named(tmp_path):
    build, _ = _build(tmp_path)
    (build / "head.onnx").unlink()
    with pytest.raises(ManifestError, match="head.onnx is listed in the manifest but missing"):
        load_manifest(build)


def test_unknown_schema_version_and_broken_json(tmp_path):
    build, _ = _build(tmp_path, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ManifestError, match="schema version"):
        load_manifest(build)
    (build / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(build)


def test_not_a_build_directory(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="has no manifest.json"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("field, value", [
    ("name", "vision$(touch pwned)"), ("name", "a b"), ("name", "-rf"), ("name", ".hidden"), ("name", "x" * 200),
    ("name", 7), ("name", None), ("file", "g;rm -rf ~.onnx"), ("file", "."), ("file", "..")])
def test_unsafe_graph_names_and_files_are_refused_at_load(tmp_path, field, value):
    """Names from a manifest reach file names, logs and build_engines.sh: only a safe alphabet loads."""
    build, manifest = _build(tmp_path)
    manifest["graphs"][0][field] = value
    (build / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=f"graph {field} .* is not a safe name"):
        load_manifest(build)


@pytest.mark.parametrize("graphs", ["vision", None, [1, 2], {"name": "x"}])
def test_graphs_of_the_wrong_json_type_are_refused(tmp_path, graphs):
    build, manifest = _build(tmp_path)
    manifest["graphs"] = graphs
    (build / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="'graphs' is not a list of graph entries"):
        load_manifest(build)
