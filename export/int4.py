"""Block-wise symmetric int4 weight-only quantization, in the standard form TensorRT takes.

The scheme (the one TensorRT Edge-LLM and ModelOpt use for weight-only INT4): a MatMul weight
``[K, N]`` (input channels x output channels) is cut into blocks of ``block_size`` input channels
per output channel; each block has one scale ``max|w| / 7`` and its values are rounded to the
nearest integer in ``[-8, 7]`` (zero point 0). In ONNX that is ``DequantizeLinear(q, scale,
axis=0, block_size=B)`` feeding ``MatMul``: opset 21, the first that defines INT4 and blocked
dequantization (docs/DESIGN.md §4).

Why not onnxruntime's ``quantize_qdq_matmul_4bits``: it maps each block's largest magnitude to -8,
so half of its scales are negative; TensorRT's quantization layers take positive scales, and one
artifact is meant for both runtimes. Rounding is plain round-to-nearest (RTN): calibrated methods
(AWQ, GPTQ) would only change how ``quantize`` picks the integers and scales, never the graph.

Which weights: ``PARTS`` names the groups of checkpoint tensors and ``DEFAULT_PARTS`` the ones an
``--weights int4`` build quantizes, chosen by measurement (docs/export.md, "4-bit weights"). The embedding
table is never quantized: the embed graph reads it with a Gather, not a MatMul, and TensorRT would
dequantize the whole table into a float constant anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from transprune.errors import TransPruneError

INT4_MIN, INT4_MAX = -8, 7
DEFAULT_BLOCK_SIZE = 128
BLOCK_SIZES = (16, 32, 64, 128, 256)  # powers of two: what onnxruntime's fused kernel and TensorRT take
DEQUANTIZE_OPSET = 21

# canonical checkpoint names (export/weights.py) of the weights each part quantizes
PARTS = {
    # every Linear of every decoder layer; the scorers' copies of layer p+1's q/k projections are
    # these same tensors, so a scorer sees exactly the quantized layer the segment after it runs
    "decoder": re.compile(r"^text\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$"),
    "lm_head": re.compile(r"^lm_head\.weight$"),
    "vision": re.compile(r"^vision\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$"),
    "projector": re.compile(r"^projector\.linear_[12]\.weight$"),
}
DEFAULT_PARTS = ("decoder", "lm_head")


@dataclass(frozen=True)
class Int4Weights:
    """What an int4 build quantizes and how: the manifest's ``weights`` section."""

    block_size: int = DEFAULT_BLOCK_SIZE
    parts: tuple[str, ...] = DEFAULT_PARTS

    def __post_init__(self) -> None:
        if self.block_size not in BLOCK_SIZES:
            raise TransPruneError(f"--block-size {self.block_size} is not supported; use one of "
                                  f"{', '.join(map(str, BLOCK_SIZES))} (input channels per scale)")
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise TransPruneError(f"--int4-parts {','.join(self.parts) or '(empty)'}: unknown part "
                                  f"{', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS)}")

    def quantizes(self, checkpoint_name: str) -> bool:
        return any(PARTS[part].match(checkpoint_name) for part in self.parts)

    def check_shapes(self, names_and_shapes) -> None:
        """Refuses, before anything is written, a checkpoint whose quantized weights' input channels
        the block size does not divide (``names_and_shapes``: (canonical name, [out, in]) pairs)."""
        for name, shape in names_and_shapes:
            if self.quantizes(name) and len(shape) == 2 and shape[1] % self.block_size:
                raise TransPruneError(f"--block-size {self.block_size} does not divide the {shape[1]} input channels "
                                      f"of {name}; pass --block-size {largest_block(shape[1])} (or smaller)")

    def to_dict(self) -> dict:
        return {"format": "int4", "scheme": "symmetric, round to nearest, scale = max|w| / 7 per block",
                "block_size": self.block_size, "axis": "input channels", "parts": list(self.parts),
                "dequantize_opset": DEQUANTIZE_OPSET}


def quantize(weight: np.ndarray, block_size: int, scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` [K, N] -> (int8 values in [-8, 7] [K, N], scales [K / block_size, N]).

    The integers are rounded against the scales as stored (``scale_dtype``), so dequantizing with
    the stored scales is exactly what the graph computes.
    """
    rows, cols = weight.shape
    if rows % block_size:
        raise TransPruneError(f"a weight with {rows} input channels cannot be cut into blocks of {block_size}; "
                              f"pass --block-size {largest_block(rows)}")
    blocks = weight.astype(np.float32, copy=False).reshape(rows // block_size, block_size, cols)
    scale = (np.abs(blocks).max(axis=1) / INT4_MAX).astype(scale_dtype)
    divisor = scale.astype(np.float32)
    divisor[divisor == 0] = 1.0  # an all-zero block: any scale gives zeros
    values = np.clip(np.rint(blocks / divisor[:, None, :]), INT4_MIN, INT4_MAX).astype(np.int8)
    return values.reshape(rows, cols), scale


def dequantize(values: np.ndarray, scale: np.ndarray, block_size: int) -> np.ndarray:
    """What ``DequantizeLinear(values, scale, axis=0, block_size)`` computes, in float32."""
    return values.astype(np.float32) * np.repeat(scale.astype(np.float32), block_size, axis=0)


def fake_quantize(weight: np.ndarray, block_size: int, scale_dtype=np.float32) -> np.ndarray:
    """A checkpoint Linear weight [out, in] replaced by its int4 values, dequantized (same shape):
    what the reference model holds when it checks an int4 build."""
    values, scale = quantize(np.ascontiguousarray(weight.T), block_size, scale_dtype)
    return dequantize(values, scale, block_size).T


def pack(values: np.ndarray) -> np.ndarray:
    """int8 values in [-8, 7] -> ONNX INT4 bytes: two per byte, the first in the low nibble."""
    flat = values.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return flat[0::2] | (flat[1::2] << 4)


def unpack(packed: np.ndarray, count: int) -> np.ndarray:
    """The inverse of ``pack``: ``count`` int8 values."""
    low = (packed & 0x0F).astype(np.int8)
    high = (packed >> 4).astype(np.int8)
    values = np.empty(packed.size * 2, dtype=np.int8)
    values[0::2], values[1::2] = low, high
    values = values[:count]
    return np.where(values > INT4_MAX, values - 16, values).astype(np.int8)


def largest_block(rows: int) -> int:
    """The largest supported block size that divides ``rows`` (the smallest one if none does)."""
    return max((b for b in BLOCK_SIZES if rows % b == 0), default=BLOCK_SIZES[0])


def insert_dequantize(graph, *, sources: dict[str, str], scheme: Int4Weights, float_type) -> dict[str, tuple]:
    """Puts ``DequantizeLinear`` before every MatMul whose weight ``scheme`` quantizes.

    ``sources``: {initializer name: checkpoint name} of the graph's MatMul-layout weights [K, N].
    Returns {new initializer name: (checkpoint name, "values" | "scales")}; the float initializer
    is removed. The caller raises the graph's opset to ``DEQUANTIZE_OPSET``.
    """
    import onnx_ir as ir

    from .weight_layout import pending_tensor

    made: dict[str, tuple] = {}
    for name, source in sources.items():
        weight = graph.initializers.get(name)
        if weight is None or not scheme.quantizes(source):
            continue
        uses = list(weight.uses())
        if not uses or not all(node.op_type == "MatMul" and node.domain == "" and index == 1 for node, index in uses):
            continue
        rows, cols = weight.shape  # block_size divides rows: Int4Weights.check_shapes ran before the export
        values = ir.Value(name=f"{name}.int4", shape=ir.Shape([rows, cols]), type=ir.TensorType(ir.DataType.INT4),
                          const_value=pending_tensor(ir.DataType.INT4, [rows, cols]))
        scale_shape = [rows // scheme.block_size, cols]
        scales = ir.Value(name=f"{name}.scale", shape=ir.Shape(scale_shape), type=ir.TensorType(float_type),
                          const_value=pending_tensor(float_type, scale_shape))
        graph.register_initializer(values)
        graph.register_initializer(scales)
        node = ir.Node("", "DequantizeLinear", [values, scales], name=f"{name}.dequantize",
                       attributes=[ir.AttrInt64("axis", 0), ir.AttrInt64("block_size", scheme.block_size)])
        graph.insert_before(uses[0][0], node)
        node.outputs[0].name = f"{name}.dequantized"
        node.outputs[0].shape, node.outputs[0].type = weight.shape, ir.TensorType(float_type)
        weight.replace_all_uses_with(node.outputs[0])
        del graph.initializers[name]
        made[values.name], made[scales.name] = (source, "values"), (source, "scales")
    return made


class QuantizedTensors:
    """Streams int4 values and scales into the file, quantizing each checkpoint tensor once.

    The ONNX writer asks for a weight's values and its scales separately (two initializers); the
    pair is computed on the first request and dropped after the second, so at most a few
    quantized tensors are held at any time, whatever the model size.
    """

    def __init__(self, load_float32, scheme: Int4Weights, scale_dtype) -> None:
        self.load_float32, self.scheme, self.scale_dtype = load_float32, scheme, scale_dtype
        self._pending: dict[str, dict] = {}

    def get(self, source: str, part: str) -> np.ndarray:
        if source not in self._pending:
            # [out, in] in the checkpoint -> [in, out], the layout MatMul reads
            weight = np.ascontiguousarray(self.load_float32(source).T)
            values, scales = quantize(weight, self.scheme.block_size, self.scale_dtype)
            del weight
            self._pending[source] = {"values": pack(values), "scales": scales}
        entry = self._pending[source]
        result = entry.pop(part)
        if not entry:
            del self._pending[source]
        return result


def quantize_reference(model, scheme: Int4Weights, scale_dtype) -> int:
    """Replaces, in place, every weight of a transformers LLaVA that ``scheme`` quantizes by its int4
    values dequantized: the model then computes what an int4 build should compute, so validation
    can still check each graph tightly. Returns how many weights it replaced."""
    import torch

    from .weights import canonical_name

    replaced = 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            canonical = canonical_name(name)
            if canonical is None or parameter.dim() != 2 or not scheme.quantizes(canonical):
                continue
            weight = parameter.detach().float().numpy()
            parameter.copy_(torch.from_numpy(fake_quantize(weight, scheme.block_size, scale_dtype)))
            replaced += 1
    return replaced
