"""Export the tiny model and run the exported chain next to the PyTorch reference."""

import json

import numpy as np
import pytest

from transprune.errors import TransPruneError
from transprune.schedule import preset


def test_paper_chain_matches_reference(paper_build):
    out, manifest = paper_build
    chain = manifest["validation"]["chain"]
    assert chain["exact"] and chain["kept_overlap"] == [1.0, 1.0, 1.0]
    assert chain["tokens"] == chain["reference_tokens"] and len(chain["tokens"]) == 16
    assert chain["max_logit_error"] < 1e-4
    kinds = [g["kind"] for g in manifest["graphs"]]
    assert kinds == ["vision", "embed", "prefill_inputs", "segment", "scorer", "segment", "scorer",
                     "segment", "scorer", "segment", "head"]
    assert [g["layers"] for g in manifest["graphs"] if g["kind"] == "segment"] == [[1, 7], [8, 9], [10, 12], [13, 14]]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["keep_counts"] == [504, 360, 72]
    for graph in on_disk["graphs"]:
        assert (out / graph["file"]).is_file()
        assert graph["trt_lint"]["ok"], (graph["name"], graph["trt_lint"]["errors"])
        assert all(p["ok"] for p in graph["trt_parse"]), (graph["name"], graph["trt_parse"])
    # which checkers passed: the lint always, and every TensorRT parser that imported at export
    import importlib.util

    check = on_disk["trt_check"]
    assert check["ok"] and check["checkers"][-1].startswith("transprune operator lint")
    has_rtx = importlib.util.find_spec("tensorrt_rtx") is not None
    assert any(c.startswith("tensorrt_rtx ") and c.endswith(" ONNX parser") for c in check["checkers"]) == has_rtx


def test_existing_directory_is_refused_without_force(paper_build, tmp_path):
    from transprune.export.exporter import export_model

    out, _ = paper_build
    with pytest.raises(TransPruneError, match="already exists; pass --force"):
        export_model(model="tiny", out=out, schedule=preset("paper"))


def test_failure_midway_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    from transprune.export import exporter, onnx_writer

    def explode(*args, **kwargs):
        raise RuntimeError("exporter bug")

    monkeypatch.setattr(onnx_writer, "write_graph", explode)
    with pytest.raises(RuntimeError, match="exporter bug"):
        exporter.export_model(model=str(tiny_checkpoint), out=tmp_path / "build", schedule=preset("paper"))
    assert list(tmp_path.iterdir()) == []
