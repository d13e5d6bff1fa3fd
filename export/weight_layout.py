"""Checkpoint weights stored in the layout MatMul consumes, so no graph transposes a weight at load.

A checkpoint's Linear weight is ``[out, in]``; ``x @ W.T`` traces to ``MatMul(x, Transpose(W))``
(or ``Gemm(x, W, transB=1)`` for 2-D inputs). Our weights are streamed into the file after
tracing, so nothing constant-folds those transposes: onnxruntime folds them at every session load
(bench segment_1: 353 ms to load as traced, 159 ms with the weights stored ``[in, out]``), and
onnxruntime's 4-bit quantizer skips every MatMul whose weight is not a plain initializer
(docs/DESIGN.md §4). This pass stores each such weight transposed and drops the Transpose; the
ONNX writer transposes the checkpoint tensor while streaming it into the file.
"""

from __future__ import annotations

from typing import Callable


def fold_weight_transposes(graph, *, is_checkpoint_weight: Callable[[object], bool]) -> dict[str, str]:
    """Rewrites ``graph`` (onnx_ir) in place; returns {new initializer name: checkpoint initializer
    name it is the transpose of}.

    A weight is folded only when every use of it is a 2-D transpose into MatMul's second input or
    a ``Gemm(transB=1)`` with default alpha/beta (rewritten to MatMul, plus Add for a bias), so a
    weight read any other way (a Gather of the embedding table) is left exactly as it was.
    """
    import onnx_ir as ir

    folded: dict[str, str] = {}
    for name, weight in list(graph.initializers.items()):
        if not is_checkpoint_weight(weight) or weight.shape is None or len(weight.shape) != 2:
            continue
        uses = list(weight.uses())
        if not uses or not all(_transposed_use(node, index) for node, index in uses):
            continue
        rows, cols = weight.shape
        transposed = ir.Value(name=f"{name}.T", shape=ir.Shape([cols, rows]), type=weight.type,
                              const_value=pending_tensor(weight.dtype, [cols, rows]))
        graph.register_initializer(transposed)
        for node, _ in uses:
            if node.op_type == "Transpose":
                node.outputs[0].replace_all_uses_with(transposed)
                graph.remove(node, safe=True)
            else:
                _gemm_to_matmul(graph, node, transposed)
        del graph.initializers[name]
        folded[transposed.name] = name
    return folded


def pending_tensor(dtype, shape):
    """A placeholder for a weight whose values the ONNX writer attaches later (an initializer must
    have a value to be registered); reading it is a bug."""
    import onnx_ir as ir

    def unset():
        raise RuntimeError("a weight's values were read before the ONNX writer attached them")

    return ir.LazyTensor(unset, dtype=dtype, shape=ir.Shape(shape))


def _transposed_use(node, index: int) -> bool:
    if node.op_type == "Transpose" and node.domain == "" and index == 0:
        perm = node.attributes.get("perm")
        return perm is not None and list(perm.as_ints()) == [1, 0] and all(
            user.op_type == "MatMul" and user_index == 1 for user, user_index in node.outputs[0].uses())
    if node.op_type == "Gemm" and node.domain == "" and index == 1:
        attr = node.attributes
        return (_attr(attr, "transB", 0) == 1 and _attr(attr, "transA", 0) == 0
                and _attr(attr, "alpha", 1.0) == 1.0 and _attr(attr, "beta", 1.0) == 1.0)
    return False


def _attr(attributes, name: str, default):
    value = attributes.get(name)
    return default if value is None else value.value


def _gemm_to_matmul(graph, gemm, weight) -> None:
    """``Gemm(a, W, c, transB=1)`` -> ``MatMul(a, W.T)`` (+ ``Add(., c)``), same output value."""
    import onnx_ir as ir

    a, _, *bias = gemm.inputs
    bias = bias[0] if bias else None
    matmul = ir.Node("", "MatMul", [a, weight], name=f"{gemm.name}.matmul")
    graph.insert_before(gemm, matmul)
    result = matmul.outputs[0]
    result.name = f"{gemm.name}.matmul_out"
    if bias is not None:
        add = ir.Node("", "Add", [result, bias], name=f"{gemm.name}.bias")
        graph.insert_before(gemm, add)
        result = add.outputs[0]
        result.name = f"{gemm.name}.bias_out"
    out = gemm.outputs[0]
    result.shape, result.type = out.shape, out.type
    is_output, name = out.is_graph_output(), out.name
    out.replace_all_uses_with(result, replace_graph_outputs=True)
    graph.remove(gemm, safe=True)
    if is_output:  # the graph's output keeps its name (the spec's)
        out.name = f"{name}.gemm"
        result.name = name
