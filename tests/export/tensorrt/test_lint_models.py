"""transprune.export.tensorrt.lint on whole models: a path whose weights are never read, big
in-memory weights, a directory, the CLI, a 30-layer decoder in time, and a real dynamo export."""

from __future__ import annotations

import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from transprune.export.tensorrt.lint import lint_directory, lint_model  # noqa: E402

from .onnx_graphs import INT64, clean_model, errors, i64, model, topk_model, vi, warnings_  # noqa: E402


# ---------------------------------------------------------------------------------------------
# files and directories


def test_path_is_linted_without_reading_external_weights(tmp_path):
    m = clean_model()
    big = numpy_helper.from_array(np.ones((8, 512), np.float32), "big")
    m.graph.initializer.append(big)
    m.graph.node.append(helper.make_node("MatMul", ["y", "big"], ["z"], name="mm2"))
    m.graph.output.append(vi("z", shape=("B", 512)))
    path = tmp_path / "seg.onnx"
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="seg.data", size_threshold=0)
    (tmp_path / "seg.data").unlink()  # proves the weights are never read
    report = lint_model(path)
    assert report.ok and report.path == str(path) and report.graph == "g", report.format()


def test_in_memory_weights_are_not_fed_to_shape_inference():
    # a 4 MiB weight is stubbed out before inference; types still flow through MatMul and Cast
    w = numpy_helper.from_array(np.zeros((8, 131072), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Cast", ["h"], ["hi"], to=INT64),
        helper.make_node("CumSum", ["hi", "axis"], ["y"], name="cs"),
    ]
    m = model(nodes, [vi("x")], [vi("y", INT64, None)], [w, i64("axis", 1)])
    report = lint_model(m)
    assert [i.node for i in errors(report)] == ["cs"], report.format()
    assert len(m.graph.initializer[0].raw_data) == 8 * 131072 * 4  # the caller's model is untouched


def test_lint_directory(tmp_path):
    onnx.save(clean_model(), tmp_path / "a.onnx")
    (tmp_path / "sub").mkdir()
    onnx.save(topk_model(k=5000), tmp_path / "sub" / "b.onnx")
    reports = lint_directory(tmp_path)
    assert [(r.graph, r.ok) for r in reports] == [("a", True), ("b", False)]
    assert [r.graph for r in lint_directory([tmp_path / "a.onnx"])] == ["a"]


def test_cli_exit_status(tmp_path, capsys):
    from transprune.export.tensorrt.lint import main

    onnx.save(clean_model(), tmp_path / "a.onnx")
    assert main([str(tmp_path)]) == 0
    onnx.save(topk_model(k=5000), tmp_path / "b.onnx")
    assert main([str(tmp_path), "--json"]) == 1
    assert '"ok": false' in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# a large graph


def decoder_like(layers=30, hidden=64, heads=4):
    """A Llama-ish decoder built node by node: ~45 nodes a layer, dynamic B and S."""
    nodes, inits = [], []
    f32 = lambda name, arr: inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))  # noqa: E731
    inits += [i64("axes_last", [-1]), i64("qkv_shape", [0, 0, heads, hidden // heads]), i64("flat", [0, 0, hidden])]
    f32("eps", 1e-6)
    f32("two", 2.0)
    h = "x"
    for n in range(layers):
        p = f"l{n}_"
        f32(p + "ln", np.ones(hidden))
        for w in ("q", "k", "v", "o", "up", "gate", "down"):
            f32(p + w, np.zeros((hidden, hidden)))
        nodes += [
            helper.make_node("Pow", [h, "two"], [p + "sq"]),
            helper.make_node("ReduceMean", [p + "sq", "axes_last"], [p + "ms"]),
            helper.make_node("Add", [p + "ms", "eps"], [p + "mse"]),
            helper.make_node("Sqrt", [p + "mse"], [p + "rt"]),
            helper.make_node("Reciprocal", [p + "rt"], [p + "inv"]),
            helper.make_node("Mul", [h, p + "inv"], [p + "nx"]),
            helper.make_node("Mul", [p + "nx", p + "ln"], [p + "n"]),
        ]
        for w in ("q", "k", "v"):
            nodes += [
                helper.make_node("MatMul", [p + "n", p + w], [p + w + "p"]),
                helper.make_node("Reshape", [p + w + "p", "qkv_shape"], [p + w + "r"]),
                helper.make_node("Transpose", [p + w + "r"], [p + w + "t"], perm=[0, 2, 1, 3]),
            ]
        nodes += [
            helper.make_node("Transpose", [p + "kt"], [p + "kT"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [p + "qt", p + "kT"], [p + "s"]),
            helper.make_node("Softmax", [p + "s"], [p + "a"], axis=-1),
            helper.make_node("MatMul", [p + "a", p + "vt"], [p + "c"]),
            helper.make_node("Transpose", [p + "c"], [p + "ct"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [p + "ct", "flat"], [p + "cf"]),
            helper.make_node("MatMul", [p + "cf", p + "o"], [p + "op"]),
            helper.make_node("Add", [h, p + "op"], [p + "h1"]),
            helper.make_node("MatMul", [p + "h1", p + "up"], [p + "u"]),
            helper.make_node("MatMul", [p + "h1", p + "gate"], [p + "g"]),
            helper.make_node("Sigmoid", [p + "g"], [p + "sg"]),
            helper.make_node("Mul", [p + "g", p + "sg"], [p + "silu"]),
            helper.make_node("Mul", [p + "silu", p + "u"], [p + "gu"]),
            helper.make_node("MatMul", [p + "gu", p + "down"], [p + "d"]),
            helper.make_node("Add", [p + "h1", p + "d"], [p + "out"]),
        ]
        h = p + "out"
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    x = vi("x", shape=("B", "S", hidden))
    return model(nodes, [x], [vi("y", shape=("B", "S", hidden))], inits)


def test_large_graph_is_fast():
    m = decoder_like()
    assert len(m.graph.node) > 900
    lint_model(m)  # warm the schema caches
    start = time.perf_counter()
    report = lint_model(m)
    elapsed = time.perf_counter() - start
    assert report.ok, report.format()
    assert elapsed < 2.0, f"lint took {elapsed:.2f} s on {len(m.graph.node)} nodes"


# ---------------------------------------------------------------------------------------------
# a real dynamo export


def test_dynamo_export_lints_clean(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class Scorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 16), requires_grad=False)

        def forward(self, x, k_tensor):
            # RMSNorm-like statistics, a float cumsum, then top-k with a runtime k, sorted indices
            x32 = x.float()
            normed = self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6))
            scores = torch.cumsum(normed.sum(-1), dim=-1)
            k = k_tensor.item()
            torch._check(k >= 1)
            torch._check(k <= x.shape[1])
            _, idx = torch.topk(scores, k)
            kept, _ = torch.sort(idx, dim=-1)
            return normed, kept

    x = torch.randn(2, 10, 16)
    k = torch.tensor(4, dtype=torch.int64)
    seq = torch.export.Dim("seq", min=2, max=4096)
    path = tmp_path / "scorer.onnx"
    torch.onnx.export(
        Scorer().eval(), (x, k), str(path), dynamo=True, opset_version=18,
        dynamic_shapes=({1: seq}, None), verbose=False,
    )
    m = onnx.load(path, load_external_data=False)
    start = time.perf_counter()
    report = lint_model(m)
    elapsed = time.perf_counter() - start
    print(report.format(), f"\n({elapsed * 1000:.1f} ms)")
    assert report.ok, report.format()
    assert {"TopK", "CumSum", "ReduceMean"} <= set(report.op_counts)
    topk_warnings = [w for w in warnings_(report) if w.op_type == "TopK"]
    assert topk_warnings and all("run time" in w.message for w in topk_warnings)
    assert all(w.op_type == "TopK" for w in warnings_(report)), report.format()
