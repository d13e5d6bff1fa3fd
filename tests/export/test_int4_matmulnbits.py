"""export/int4_matmulnbits.py: an int4 build's DequantizeLinear + MatMul pairs rewritten as
onnxruntime's MatMulNBits from the same quantized values.

The graph tests compare onnxruntime's outputs of both forms: the QDQ form run with
``session.qdq_matmulnbits_accuracy_level`` = L (onnxruntime fuses it into its own MatMulNBits at
load) against the converted graph with ``accuracy_level`` L. Both then run the same kernel on the
same bits, so the outputs are equal to float rounding; a wrong nibble order or an untransposed
scale table scrambles the weights and misses by far more (checked below by breaking each on
purpose, so these tests cannot pass with either mistake).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx_ir")

from transprune.errors import TransPruneError  # noqa: E402
from transprune.export import int4_matmulnbits as nbits  # noqa: E402
from transprune.export.int4 import dequantize, pack, quantize  # noqa: E402

K, N, BLOCK = 128, 48, 32  # N != K / BLOCK: a scale table read untransposed cannot line up by chance


def _qdq_graph(path, *, seed=0, float_type=np.float32, shared=False):
    """x [2, S, K] -> y = x @ W and z = relu(x) @ V, W and V int4 [K, N], each behind its own
    DequantizeLinear (as the exporter writes them); ``shared``: V is W, one DequantizeLinear feeding
    both MatMuls. y is a graph output straight from MatMul. -> {weight name: (values, scales)}."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    elem = TensorProto.FLOAT if float_type == np.float32 else TensorProto.FLOAT16
    weights, initializers, nodes = {}, [], []
    for name in ("w",) if shared else ("w", "v"):
        values, scales = quantize(rng.standard_normal((K, N)).astype(np.float32), BLOCK, float_type)
        weights[name] = values, scales
        initializers += [helper.make_tensor(f"{name}.int4", TensorProto.INT4, [K, N], pack(values).tobytes(), raw=True),
                         numpy_helper.from_array(scales, f"{name}.scale")]
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}.int4", f"{name}.scale"], [name], axis=0,
                                      block_size=BLOCK))
    nodes += [helper.make_node("MatMul", ["x", "w"], ["y"]),
              helper.make_node("Relu", ["x"], ["rx"]),
              helper.make_node("MatMul", ["rx", "w" if shared else "v"], ["z"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", elem, [2, "s", K])],
        [helper.make_tensor_value_info("y", elem, [2, "s", N]), helper.make_tensor_value_info("z", elem, [2, "s", N])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, path)
    return weights


def _run(path, x, *, level=None, optimized=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if level is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level))
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _x(float_type=np.float32):
    return np.random.default_rng(7).standard_normal((2, 5, K)).astype(float_type)


def test_repack_layout_by_hand():
    """B[n, block, j]: low nibble = q[block * B + 2j, n] + 8, high = the next K's; scales transposed."""
    values = np.random.default_rng(3).integers(-8, 8, size=(64, 3)).astype(np.int8)
    scales = np.arange(2 * 3, dtype=np.float32).reshape(2, 3) + 1
    packed, table = nbits.repack(values, scales, 32)
    assert packed.dtype == np.uint8 and packed.shape == (3, 2, 16)
    for n, block, j in [(0, 0, 0), (2, 1, 15), (1, 0, 7), (1, 1, 3)]:
        byte = int(packed[n, block, j])
        assert byte & 0x0F == values[block * 32 + 2 * j, n] + 8
        assert byte >> 4 == values[block * 32 + 2 * j + 1, n] + 8
    np.testing.assert_array_equal(table, scales.T)
    back, back_scales = nbits.unrepack(packed, table)
    np.testing.assert_array_equal(back, values)
    np.testing.assert_array_equal(back_scales, scales)


@pytest.mark.parametrize("level", [0, 4])
def test_converted_graph_computes_what_the_qdq_graph_computes(tmp_path, level):
    weights = _qdq_graph(tmp_path / "qdq.onnx")
    assert nbits.convert_file(tmp_path / "qdq.onnx", tmp_path / "nbits.onnx", accuracy_level=level) == 2
    x = _x()
    qdq = _run(tmp_path / "qdq.onnx", x, level=level, optimized=tmp_path / "fused.onnx")
    ours = _run(tmp_path / "nbits.onnx", x)
    for a, b in zip(qdq, ours):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # onnxruntime fused each QDQ pair into the very op we write, at the level asked for
    fused = onnx.load(tmp_path / "fused.onnx")
    found = [{a.name: a.i for a in node.attribute} for node in fused.graph.node if node.op_type == "MatMulNBits"]
    assert len(found) == 2 and all(f["accuracy_level"] == level and f["block_size"] == BLOCK for f in found)
    if level == 0:  # float math: the product of the dequantized weights, to float rounding
        reference = x @ dequantize(*weights["w"], BLOCK)
        np.testing.assert_allclose(ours[0], reference, rtol=1e-4, atol=1e-4)


def test_one_weight_read_by_two_matmuls(tmp_path):
    """Both MatMuls share one packed weight. (onnxruntime leaves such a shared QDQ pair unfused,
    float math whatever the level; the exporter never writes one: each graph reads a weight once.)"""
    weights = _qdq_graph(tmp_path / "qdq.onnx", shared=True)
    assert nbits.convert_file(tmp_path / "qdq.onnx", tmp_path / "nbits.onnx", accuracy_level=0) == 2
    model = onnx.load(tmp_path / "nbits.onnx")
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits", "Relu", "MatMulNBits"]
    assert len(model.graph.initializer) == 2
    x = _x()
    y, z = _run(tmp_path / "nbits.onnx", x)
    dequantized = dequantize(*weights["w"], BLOCK)
    np.testing.assert_allclose(y, x @ dequantized, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(z, np.maximum(x, 0) @ dequantized, rtol=1e-4, atol=1e-4)


def test_converted_graph_nodes_initializers_and_attributes(tmp_path):
    _qdq_graph(tmp_path / "qdq.onnx")
    assert nbits.convert_file(tmp_path / "qdq.onnx", tmp_path / "nbits.onnx") == 2
    model = onnx.load(tmp_path / "nbits.onnx")
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits", "Relu", "MatMulNBits"]
    assert {n.domain for n in model.graph.node if n.op_type == "MatMulNBits"} == {"com.microsoft"}
    assert {o.domain: o.version for o in model.opset_import}["com.microsoft"] == 1
    inits = {i.name: (i.data_type, list(i.dims)) for i in model.graph.initializer}
    assert inits == {f"{w}.{part}": shape for w in ("w", "v") for part, shape in (
        ("int4.nbits", (onnx.TensorProto.UINT8, [N, K // BLOCK, BLOCK // 2])),
        ("scale.nbits", (onnx.TensorProto.FLOAT, [N, K // BLOCK])))}
    node = model.graph.node[0]
    assert {a.name: a.i for a in node.attribute} == {"K": K, "N": N, "bits": 4, "block_size": BLOCK,
                                                     "accuracy_level": nbits.DEFAULT_ACCURACY_LEVEL}
    assert [o.name for o in model.graph.output] == ["y", "z"]  # graph outputs keep their names


def test_fp16_scales(tmp_path):
    _qdq_graph(tmp_path / "qdq.onnx", float_type=np.float16)
    nbits.convert_file(tmp_path / "qdq.onnx", tmp_path / "nbits.onnx", accuracy_level=0)
    x = _x(np.float16)
    for a, b in zip(_run(tmp_path / "qdq.onnx", x, level=0), _run(tmp_path / "nbits.onnx", x)):
        assert b.dtype == np.float16
        np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), rtol=2e-2, atol=2e-2)


def _swapped_nibbles(values, block_size):
    packed = ORIGINAL_PACK(values, block_size)
    return (packed >> 4) | ((packed & 0x0F) << 4)


def _untransposed_scales(scale):
    def compute():
        import onnx_ir as ir

        array = scale.const_value.numpy()
        return ir.tensor(np.ascontiguousarray(array.reshape(array.shape[1], array.shape[0])))

    return compute


ORIGINAL_PACK = nbits.pack_codes


@pytest.mark.parametrize("mistake", ["nibble order", "scale transpose"])
def test_a_layout_mistake_is_caught(tmp_path, monkeypatch, mistake):
    """The comparison above has teeth: either mistake misses the QDQ outputs by a wide margin."""
    if mistake == "nibble order":
        monkeypatch.setattr(nbits, "pack_codes", _swapped_nibbles)
    else:
        monkeypatch.setattr(nbits, "_scales_of", _untransposed_scales)
    _qdq_graph(tmp_path / "qdq.onnx")
    nbits.convert_file(tmp_path / "qdq.onnx", tmp_path / "nbits.onnx", accuracy_level=0)
    x = _x()
    qdq, ours = _run(tmp_path / "qdq.onnx", x, level=0)[0], _run(tmp_path / "nbits.onnx", x)[0]
    assert np.abs(ours - qdq).max() > 0.1 * np.abs(qdq).max()


def test_a_float_build_is_refused(paper_build, tmp_path):
    build, _ = paper_build
    with pytest.raises(TransPruneError, match="does not hold int4 weights"):
        nbits.to_matmulnbits(build, tmp_path / "out")


def test_a_converted_build_loads_verified_and_generates_what_the_qdq_build_does(int4_build, tmp_path):
    """The whole build: checksums and graph identities verify, the lint flags the contrib op (so no
    TensorRT build takes it), and the chain's tokens, kept indices and logits are the QDQ build's
    at the same accuracy level."""
    from transprune.runtime.chain import Chain
    from transprune.runtime.manifest import load_manifest
    from transprune.runtime.pipeline import Pipeline
    from transprune.sample_image import sample_image

    source, source_manifest = int4_build
    out = tmp_path / "nbits"
    manifest = nbits.to_matmulnbits(source, out, accuracy_level=0)
    assert load_manifest(out, verify=True) == manifest
    weights = manifest["weights"]
    assert weights["form"] == "MatMulNBits" and weights["accuracy_level"] == 0
    assert weights["block_size"] == source_manifest["weights"]["block_size"]
    assert weights["converted_from"]["path"] == str(source)
    converted = [g for g in manifest["graphs"] if g.get("matmulnbits")]
    assert converted and all(g["matmulnbits"] == g["int4_matmuls"] for g in converted)
    assert all(not g["trt_lint"]["ok"] and any("com.microsoft" in e for e in g["trt_lint"]["errors"])
               for g in converted)
    assert manifest["trt_check"]["ok"] is False
    untouched = [g["name"] for g in manifest["graphs"] if not g.get("matmulnbits")]
    assert "vision" in untouched and "embed" in untouched
    assert json.loads((source / "manifest.json").read_text())["weights"].get("form") is None  # source unchanged
    with pytest.raises(TransPruneError, match="exists"):
        nbits.to_matmulnbits(source, out)

    image, prompt = sample_image(), "What is in the picture?"
    results = []
    for path, level in ((source, 0), (out, None)):
        with Pipeline.from_dir(path, threads=1, **({} if level is None else {"int4_accuracy_level": level})) as pipe:
            prepared = pipe.images.prepare([image])
            encoded = pipe.prompts.encode_batch([prompt], image_tokens=prepared.image_tokens)
            results.append(Chain(pipe.build, pipe.backend).generate(
                encoded.input_ids, encoded.attention_mask, prepared.pixel_values, max_new_tokens=4,
                eos_token_id=None))
    qdq, ours = results
    assert ours.tokens == qdq.tokens
    for a, b in zip(ours.stages, qdq.stages):
        np.testing.assert_array_equal(a.kept, b.kept)
    np.testing.assert_allclose(ours.step_logits[0], qdq.step_logits[0], rtol=1e-4, atol=1e-4)
