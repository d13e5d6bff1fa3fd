"""onnxruntime's own 4-bit form: an int4 build's ``DequantizeLinear -> MatMul`` pairs rewritten as
``com.microsoft.MatMulNBits``, from the same quantized values (no second quantization).

An ``--weights int4`` build stores each quantized weight ``[K, N]`` (input x output channels) as
standard ONNX: INT4 values ``q`` in [-8, 7] and scales ``[K / B, N]`` behind
``DequantizeLinear(axis=0, block_size=B)`` feeding ``MatMul`` (``int4.py``). That is what
TensorRT takes, and onnxruntime's CPU provider already fuses the pair into ``MatMulNBits`` at
session load (``session.qdq_matmulnbits_accuracy_level`` picks how it computes; 4 by default).
This module writes the fused form into the file instead, for onnxruntime only: the weights
benchmark (scripts/bench_weights.py; docs/performance.md "Weight formats") measures both.

``MatMulNBits`` (contrib op, domain ``com.microsoft``; attributes K, N, bits, block_size,
accuracy_level) computes ``A @ dequant(B)``, where, for 4 bits,

* ``B`` is uint8 ``[N, K / B, B / 2]``: per output channel, per block, the block's ``B`` codes
  along K two per byte, the first in the low nibble;
* ``scales`` are ``[N, K / B]``, the type of ``A`` (our ``[K / B, N]`` transposed);
* without ``zero_points`` every block's zero point is 2^(bits-1) = 8, so a code ``c`` stands for
  ``(c - 8) * scale``: our symmetric value ``q`` is stored as the code ``q + 8`` in [0, 15].

So the conversion only moves bits: ``(q + 8) * scale - 8 * scale == q * scale`` exactly, and the
two forms compute the same product. ``to_matmulnbits`` copies a whole build, converts every graph
that has such pairs, and rewrites the manifest (sha256, sizes, the TensorRT lint: a graph with a
contrib op is an error there, so ``transprune-build`` refuses the copy, as it must). The graphs'
identities (runtime/manifest.py) are kept: the weights are still int4 in blocks of B, only their
``form`` in the manifest's ``weights`` section changes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from transprune.errors import TransPruneError

MS_DOMAIN = "com.microsoft"
FORM = "MatMulNBits"
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # 0 unset (as 1), 1 fp32, 2 fp16, 3 bf16, 4 int8 activations inside the op
DEFAULT_ACCURACY_LEVEL = 4  # what onnxruntime's CPU provider uses when it fuses the QDQ form itself
ZERO_POINT = 8  # MatMulNBits' default zero point for 4 bits


def repack(values: np.ndarray, scales: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Our int4 weight (``values`` int8 in [-8, 7], ``[K, N]``; ``scales`` ``[K / B, N]``) ->
    ``MatMulNBits``' (B uint8 ``[N, K / B, B / 2]``, scales ``[N, K / B]``), same numbers."""
    rows, cols = values.shape
    if scales.shape != (rows // block_size, cols):
        raise ValueError(f"scales {scales.shape} are not those of {values.shape} values in blocks of {block_size}")
    return pack_codes(values, block_size), np.ascontiguousarray(scales.T)


def pack_codes(values: np.ndarray, block_size: int) -> np.ndarray:
    """int8 values in [-8, 7] ``[K, N]`` -> MatMulNBits' B: uint8 ``[N, K / B, B / 2]`` of codes
    ``q + 8``, two per byte along K, the even one in the low nibble."""
    rows, cols = values.shape
    if rows % block_size or block_size % 2:
        raise ValueError(f"{rows} input channels cannot be cut into blocks of {block_size}")
    codes = (np.ascontiguousarray(values.T).astype(np.int16) + ZERO_POINT).astype(np.uint8)  # [N, K], 0..15
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed.reshape(cols, rows // block_size, block_size // 2)


def unrepack(packed: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`repack` (for tests): -> (values int8 ``[K, N]``, scales ``[K / B, N]``)."""
    cols, blocks, half = packed.shape
    flat = packed.reshape(cols, blocks * half)
    codes = np.empty((cols, blocks * half * 2), dtype=np.int16)
    codes[:, 0::2], codes[:, 1::2] = flat & 0x0F, flat >> 4
    return (codes - ZERO_POINT).astype(np.int8).T.copy(), np.ascontiguousarray(scales.T)


def convert_model(model, *, accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> int:
    """Rewrites, in place, every ``DequantizeLinear(INT4 initializer, scale initializer, axis 0,
    block_size) -> MatMul(A, .)`` of ``model`` (onnx_ir) as ``MatMulNBits(A, B, scales)``.
    Returns how many MatMuls it rewrote. A dequantized weight read by anything but MatMul's
    second input is left as it was. The new initializers are lazy: they are computed from the
    old ones (which may be external data) when the model is saved."""
    import onnx_ir as ir

    if accuracy_level not in ACCURACY_LEVELS:
        raise TransPruneError(f"accuracy level {accuracy_level} is not one of {ACCURACY_LEVELS} "
                              f"(MatMulNBits' accuracy_level)")
    graph = model.graph
    converted = 0
    for node in list(graph):
        weight = _blocked_int4(node, graph)
        if weight is None:
            continue
        values, scale, block_size = weight
        rows, cols = values.shape
        uses = list(node.outputs[0].uses())
        if not uses or node.outputs[0].is_graph_output() or not all(
                user.op_type == "MatMul" and user.domain == "" and index == 1 for user, index in uses):
            continue
        packed = ir.Value(name=f"{values.name}.nbits", shape=ir.Shape([cols, rows // block_size, block_size // 2]),
                          type=ir.TensorType(ir.DataType.UINT8),
                          const_value=ir.LazyTensor(_packed_of(values, block_size), dtype=ir.DataType.UINT8,
                                                    shape=ir.Shape([cols, rows // block_size, block_size // 2])))
        scales = ir.Value(name=f"{scale.name}.nbits", shape=ir.Shape([cols, rows // block_size]), type=scale.type,
                          const_value=ir.LazyTensor(_scales_of(scale), dtype=scale.dtype,
                                                    shape=ir.Shape([cols, rows // block_size])))
        graph.register_initializer(packed)
        graph.register_initializer(scales)
        for matmul, _ in uses:
            name = f"{matmul.name}.nbits" if matmul.name else f"{values.name}.nbits.{converted}"
            fused = ir.Node(MS_DOMAIN, FORM, [matmul.inputs[0], packed, scales], name=name,
                            attributes=[ir.AttrInt64("K", rows), ir.AttrInt64("N", cols), ir.AttrInt64("bits", 4),
                                        ir.AttrInt64("block_size", block_size),
                                        ir.AttrInt64("accuracy_level", accuracy_level)])
            graph.insert_before(matmul, fused)
            _take_over(matmul.outputs[0], fused.outputs[0])
            graph.remove(matmul, safe=True)
            converted += 1
        graph.remove(node, safe=True)
        for old in (values, scale):
            if not list(old.uses()):
                del graph.initializers[old.name]
    if converted:
        model.opset_imports[MS_DOMAIN] = 1
        graph.opset_imports[MS_DOMAIN] = 1
    return converted


def _blocked_int4(node, graph):
    """(values, scale, block_size) when ``node`` is a blocked INT4 DequantizeLinear of two
    initializers along axis 0 with no zero point (or an all-zero one); else None."""
    import onnx_ir as ir

    if node.op_type != "DequantizeLinear" or node.domain != "" or len(node.inputs) < 2:
        return None
    values, scale, *zero = node.inputs
    attrs = node.attributes
    axis = attrs.get("axis")
    block = attrs.get("block_size")
    if (values is None or scale is None or values.name not in graph.initializers
            or scale.name not in graph.initializers or values.dtype != ir.DataType.INT4
            or values.shape is None or len(values.shape) != 2 or block is None
            or (axis is not None and axis.as_int() != 0)):
        return None
    block_size = block.as_int()
    rows, cols = values.shape
    if (block_size < 16 or block_size & (block_size - 1) or rows % block_size
            or scale.shape is None or tuple(scale.shape) != (rows // block_size, cols)):
        return None
    if zero and zero[0] is not None:
        point = zero[0]
        if point.name not in graph.initializers or np.any(point.const_value.numpy().astype(np.int8) != 0):
            return None
    return values, scale, block_size


def _packed_of(values, block_size):
    def compute():
        import onnx_ir as ir

        return ir.tensor(pack_codes(values.const_value.numpy().astype(np.int8), block_size))

    return compute


def _scales_of(scale):
    def compute():
        import onnx_ir as ir

        return ir.tensor(np.ascontiguousarray(scale.const_value.numpy().T))

    return compute


def _take_over(old, new) -> None:
    """``new`` replaces ``old`` everywhere; a graph output keeps its name."""
    name, is_output = old.name, old.is_graph_output()
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if is_output:
        old.name = f"{name}.matmul"
    new.name = name


def convert_file(src: Path, dst: Path, *, accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> int:
    """Converts the graph in ``src`` into ``dst`` (external data, if ``src`` has any, as
    ``dst.name + '.data'``). Returns how many MatMuls became MatMulNBits (0: copied unchanged)."""
    import onnx_ir as ir

    model = ir.load(src)
    converted = convert_model(model, accuracy_level=accuracy_level)
    if not converted:
        shutil.copyfile(src, dst)
        return 0
    external = any(isinstance(value.const_value, ir.ExternalTensor) for value in model.graph.initializers.values())
    if external:
        ir.save(model, dst, external_data=f"{dst.name}.data", max_workers=1)
    else:
        ir.save(model, dst)
    return converted


def to_matmulnbits(src_build_dir: Path, out_dir: Path, *, accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
                   force: bool = False) -> dict:
    """Copies the int4 build in ``src_build_dir`` to ``out_dir`` with its quantized MatMuls as
    ``MatMulNBits``; returns the manifest written there.

    The quantized values and scales are the source's, moved (:func:`repack`); every other file is
    copied as is. The manifest keeps the source's graph identities and records, per converted
    graph, its new sha256, bytes, ``matmulnbits`` count and TensorRT lint (which fails on the
    contrib op); ``weights`` gains ``form: MatMulNBits``, ``accuracy_level`` and ``converted_from``
    (the source's path and its manifest's sha256).
    """
    from transprune.files import refuse_overlap
    from transprune.runtime.manifest import load_manifest, manifest_files, sha256

    from .out_dir import staged_output
    from .tensorrt.check import lint_entry
    from .tensorrt.lint import lint_model

    src_build_dir, out_dir = Path(src_build_dir), Path(out_dir)
    manifest = load_manifest(src_build_dir, verify=True)
    weights = manifest.get("weights") or {}
    if weights.get("format") != "int4":
        raise TransPruneError(f"{src_build_dir} does not hold int4 weights (its manifest's weights: "
                              f"{weights or 'float'}); export it with --weights int4 first")
    if weights.get("form", "QDQ") != "QDQ":
        raise TransPruneError(f"{src_build_dir} is already in the {weights['form']} form")
    refuse_overlap(out_dir, inputs={"the source build": src_build_dir}, what="--out")
    with staged_output(out_dir, force=force) as staging:
        graph_files = set()
        for graph in manifest["graphs"]:
            graph_files.update(graph["sha256"])
            converted = convert_file(src_build_dir / graph["file"], staging / graph["file"],
                                     accuracy_level=accuracy_level)
            if not converted:
                for name in graph["sha256"]:  # external data of an unchanged graph
                    if name != graph["file"]:
                        shutil.copyfile(src_build_dir / name, staging / name)
                continue
            files = sorted(p.name for p in staging.glob(f"{graph['file']}*"))
            graph["sha256"] = {name: sha256(staging / name) for name in files}
            graph["bytes"] = sum((staging / name).stat().st_size for name in files)
            graph["matmulnbits"] = converted
            graph["trt_lint"] = lint_entry(lint_model(staging / graph["file"], name=graph["name"]))
            graph["trt_parse"] = []  # not parsed: a graph with a contrib op is onnxruntime's only
        for name in manifest_files(manifest):
            if name not in graph_files:  # the tokenizer and processor files, as the manifest lists them
                shutil.copyfile(src_build_dir / name, staging / name)
        manifest["weights"] = {**weights, "form": FORM, "accuracy_level": accuracy_level,
                               "converted_from": {"path": os.path.abspath(src_build_dir),
                                                  "manifest_sha256": sha256(src_build_dir / "manifest.json")}}
        if "trt_check" in manifest:
            manifest["trt_check"] = {
                **manifest["trt_check"],
                "ok": all(g["trt_lint"]["ok"] and all(p["ok"] for p in g.get("trt_parse", []))
                          for g in manifest["graphs"]),
                "note": "graphs with com.microsoft.MatMulNBits run on onnxruntime only"}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
