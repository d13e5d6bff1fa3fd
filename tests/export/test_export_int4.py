"""``--weights int4``: what the build holds, that it computes exactly its quantized model, and what
it costs in accuracy against the float model (reported, with a floor on tiny)."""

import json
import shutil

import numpy as np
import onnx
import pytest

from transprune.errors import TransPruneError
from transprune.runtime.manifest import ManifestError, load_manifest, sha256

from ..conftest import TINY_INT4_BLOCK

LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


def test_the_manifest_says_what_is_quantized_and_the_graphs_hold_it(int4_build):
    build_dir, manifest = int4_build
    weights = manifest["weights"]
    assert weights["format"] == "int4" and weights["block_size"] == TINY_INT4_BLOCK
    assert weights["parts"] == ["decoder", "lm_head"] and weights["dequantize_opset"] == 21
    for graph in manifest["graphs"]:
        model = onnx.load(build_dir / graph["file"], load_external_data=False)
        dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        expected = {"segment": LINEARS_PER_LAYER * (graph["layers"][1] - graph["layers"][0] + 1) if graph["layers"]
                    else 0, "scorer": 2, "head": 1}.get(graph["kind"], 0)  # a scorer projects q and k
        assert graph["int4_matmuls"] == len(dequantize) == expected, graph["name"]
        int4 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT4}
        assert len(int4) == expected
        opset = {o.domain: o.version for o in model.opset_import}[""]
        assert opset == (21 if expected else manifest["opset"]), graph["name"]  # 21 only where it is needed
        for node in dequantize:
            assert node.input[0] in int4 and {a.name: a.i for a in node.attribute} == {"axis": 0,
                                                                                      "block_size": TINY_INT4_BLOCK}


def _weight_bytes(path) -> int:
    return sum(len(i.raw_data) for i in onnx.load(path).graph.initializer)


def test_int4_weights_are_a_fraction_of_the_fp32_ones(int4_build, paper_build):
    for graph in ("segment_0", "segment_3", "head"):
        int4, fp32 = (_weight_bytes(build[0] / f"{graph}.onnx") for build in (int4_build, paper_build))
        # half a byte a value plus a 4-byte scale per 32 (0.625 of 4 bytes = 0.16), norms stay fp32
        assert int4 < 0.2 * fp32, graph
    # the embedding table stays float
    assert _weight_bytes(int4_build[0] / "embed.onnx") == _weight_bytes(paper_build[0] / "embed.onnx")


def test_the_build_computes_exactly_its_quantized_model(int4_build):
    """Validation ran every graph and the chain against the reference with the same int4 weights,
    at fp32 tolerance: kept indices and all 16 greedy tokens identical."""
    _, manifest = int4_build
    validation = manifest["validation"]
    assert validation["chain"]["exact"] and validation["chain"]["tokens_identical"] == 16
    assert validation["chain"]["tokens"] == validation["chain"]["reference_tokens"]
    assert max(max(g["max_error"].values()) for g in validation["graphs"].values()) < 1e-3


def test_accuracy_against_the_float_model_is_reported(int4_build):
    accuracy = int4_build[1]["validation"]["int4_accuracy"]
    for form in ("float_math", "onnxruntime_default"):
        (first,) = accuracy[form]
        assert first["tokens"] == 16 and 0 <= first["tokens_identical"] <= 16
        assert len(first["kept_overlap"]) == 3
        # compared with the float model, not the quantized one: int4 must show
        assert first["max_logit_error"] > 1e-3
        # Floor from measurement (2026-11-24, block 32, RTN): the first prune, after 7 layers of
        # random Gaussian weights in int4, kept 94% of the float model's tokens; later stages drift
        # much further on random weights (73%, 26%) and are only reported. Below 85% the
        # quantization itself got worse.
        assert first["kept_overlap"][0] >= 0.85, first


def test_the_runtime_generates_from_an_int4_build(int4_build):
    from transprune.runtime.pipeline import Pipeline
    from transprune.sample_image import sample_image

    with Pipeline.from_dir(int4_build[0], backend="onnxruntime") as pipeline:
        result = pipeline.generate(sample_image(), "What is shown in this picture?", max_new_tokens=8)
    assert 1 <= len(result.tokens) <= 8 and result.image_tokens == [576, 504, 360, 72]
    assert [len(kept) for kept in result.kept] == [504, 360, 72]


def _copy(build_dir, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(build_dir, copy)
    return copy, json.loads((copy / "manifest.json").read_text())


def test_a_manifest_that_misstates_the_weights_is_refused(int4_build, tmp_path):
    copy, manifest = _copy(int4_build[0], tmp_path)
    manifest["weights"]["block_size"] = 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="is not the graph the manifest puts there"):
        load_manifest(copy, verify=False)
    manifest["weights"] = "int4"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="'weights' does not describe a weight format"):
        load_manifest(copy, verify=False)


def test_an_int4_graph_in_a_float_build_is_refused(int4_build, paper_build, tmp_path):
    copy, manifest = _copy(paper_build[0], tmp_path)
    entry = next(g for g in manifest["graphs"] if g["name"] == "segment_1")
    entry["sha256"] = {}
    for name in ("segment_1.onnx", "segment_1.onnx.data"):  # the graph and its weights, hashes updated
        shutil.copyfile(int4_build[0] / name, copy / name)
        entry["sha256"][name] = sha256(copy / name)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="of another build"):
        load_manifest(copy)


@pytest.mark.parametrize("kwargs, message", [
    ({"block_size": 32}, "--block-size and --int4-parts apply to --weights int4 only"),
    ({"weight_format": "int8"}, "--weights 'int8' is not supported"),
    ({"weight_format": "int4"}, r"--block-size 128 does not divide the 64 input channels .*pass --block-size 64"),
    ({"weight_format": "int4", "block_size": 32, "int4_parts": ("decoder", "norms")}, "unknown part norms"),
])
def test_bad_weight_flags_are_refused_before_anything_is_written(tiny_checkpoint, tmp_path, kwargs, message):
    from transprune.export.exporter import export_model
    from transprune.schedule import preset

    with pytest.raises(TransPruneError, match=message):
        export_model(model=str(tiny_checkpoint), out=tmp_path / "out", schedule=preset("paper"), validate=False,
                     **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_the_summary_reports_int4_accuracy(int4_build):
    from transprune.cli.export import _report

    text = _report(int4_build[1], int4_build[0], 1.0)
    assert "int4 weights (decoder+lm_head, blocks of 32)" in text and "21 where int4" in text
    assert "the PyTorch reference with the same int4 weights" in text
    assert text.count("int4 against the float model") == 2
    assert np.isfinite(int4_build[1]["validation"]["int4_accuracy"]["float_math"][0]["max_logit_error"])
