"""Block-wise symmetric int4 quantization: the numbers, the packing, and what onnxruntime makes of them."""

import numpy as np
import pytest

from transprune.errors import TransPruneError
from transprune.export.int4 import (DEFAULT_PARTS, INT4_MAX, Int4Weights, dequantize, fake_quantize, pack, quantize,
                                    unpack)


def _weights(rows=256, cols=24, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def test_values_scales_and_rounding_error():
    weight = _weights()
    values, scale = quantize(weight, 128)
    assert values.dtype == np.int8 and values.shape == weight.shape and scale.shape == (2, 24)
    assert values.min() >= -8 and values.max() <= INT4_MAX
    assert (scale > 0).all()  # TensorRT's dequantization takes positive scales only
    blocks = np.abs(weight.reshape(2, 128, 24)).max(axis=1)
    np.testing.assert_allclose(scale, blocks / 7, rtol=1e-6)
    # the largest magnitude of each block is represented exactly (+-7), every value within half a step
    assert (np.abs(values.reshape(2, 128, 24)).max(axis=1) == 7).all()
    error = np.abs(dequantize(values, scale, 128) - weight)
    assert (error <= np.repeat(scale, 128, axis=0) / 2 + 1e-7).all()


def test_zero_blocks_and_fp16_scales():
    weight = _weights(64, 4)
    weight[:32, 1] = 0
    values, scale = quantize(weight, 32, np.float16)
    assert scale.dtype == np.float16
    assert (values[:32, 1] == 0).all()
    # integers are rounded against the scales as stored: dequantizing with them stays within half a step
    error = np.abs(dequantize(values, scale, 32) - weight)
    assert (error <= np.repeat(scale.astype(np.float32), 32, axis=0) / 2 + 1e-6).all()


def test_fake_quantize_is_in_the_checkpoint_layout():
    weight = _weights(24, 64)  # [out, in] as a checkpoint stores it
    values, scale = quantize(np.ascontiguousarray(weight.T), 32)
    np.testing.assert_array_equal(fake_quantize(weight, 32), dequantize(values, scale, 32).T)


def test_packing_is_low_nibble_first_and_round_trips():
    assert pack(np.array([1, 2], dtype=np.int8)).tolist() == [0x21]
    assert pack(np.array([-1, -8, 7], dtype=np.int8)).tolist() == [0x8F, 0x07]
    values = np.random.default_rng(1).integers(-8, 8, size=(7, 5)).astype(np.int8)
    np.testing.assert_array_equal(unpack(pack(values), values.size).reshape(7, 5), values)


def test_blocks_that_do_not_divide_the_input_channels_are_refused_with_a_fix():
    with pytest.raises(TransPruneError, match="pass --block-size 32"):
        quantize(_weights(96, 4), 128)


@pytest.mark.parametrize("kwargs, message", [
    ({"block_size": 100}, "--block-size 100 is not supported"),
    ({"block_size": 8}, "--block-size 8 is not supported"),
    ({"parts": ("decoder", "embedding")}, "unknown part embedding"),
    ({"parts": ()}, "--int4-parts"),
])
def test_bad_schemes_are_refused(kwargs, message):
    with pytest.raises(TransPruneError, match=message):
        Int4Weights(**kwargs)


def test_which_weights_each_part_quantizes():
    default = Int4Weights()
    assert default.parts == DEFAULT_PARTS
    assert default.quantizes("text.layers.3.self_attn.q_proj.weight")
    assert default.quantizes("text.layers.31.mlp.down_proj.weight")
    assert default.quantizes("lm_head.weight") == ("lm_head" in DEFAULT_PARTS)
    # never: the embedding table (a Gather, not a MatMul), norms, biases
    for name in ("text.embed_tokens.weight", "text.layers.0.input_layernorm.weight",
                 "vision.encoder.layers.0.self_attn.q_proj.bias"):
        assert not Int4Weights(parts=("decoder", "lm_head", "vision", "projector")).quantizes(name)
    assert Int4Weights(parts=("vision",)).quantizes("vision.encoder.layers.0.mlp.fc2.weight")
    assert not Int4Weights(parts=("vision",)).quantizes("text.layers.0.mlp.up_proj.weight")
    assert Int4Weights(parts=("projector",)).quantizes("projector.linear_2.weight")


def test_onnxruntime_computes_exactly_the_dequantized_weights(tmp_path):
    """Our packed values and scales, as DequantizeLinear (opset 21, blocked, axis 0) + MatMul, give
    x @ dequantize(values) in onnxruntime's float math: the layout and nibble order are right."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    weight = _weights(128, 16, seed=3)
    values, scale = quantize(weight, 32)
    packed = helper.make_tensor("w", TensorProto.INT4, [128, 16], pack(values).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], axis=0, block_size=32),
         helper.make_node("MatMul", ["x", "wf"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 16])],
        initializer=[packed, onnx.numpy_helper.from_array(scale, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).standard_normal((3, 128)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ dequantize(values, scale, 32), rtol=1e-5, atol=1e-5)
