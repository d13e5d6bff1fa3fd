"""``transprune-export``: a real export through the CLI, ``--check-trt``, and every user error
as one line on stderr with exit status 2 and nothing left behind."""

import json
import shutil

import onnx
import pytest
from onnx import helper

from transprune.cli.export import main, summary_table
from transprune.runtime.manifest import MANIFEST, sha256


def test_iga_only_export_through_the_cli_matches_the_reference(iga_only_cli_build):
    out, printed, errors = iga_only_cli_build  # transprune-export --schedule iga-only --max-text-tokens 256
    assert "kept indices and 16 greedy tokens identical to the PyTorch reference" in printed
    assert "576 -> 504 -> 360 -> 72" in printed
    assert "[" in errors and "11/12" in errors  # the progress bar
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["schedule"]["criterion"] == "iga"
    assert manifest["validation"]["chain"]["exact"] and manifest["validation"]["chain"]["tokens_identical"] == 16
    assert manifest["limits"]["max_text_tokens"] == 256
    assert manifest["limits"]["max_prompt_tokens"] == 256 + 576
    # IGA-only scorers take no TTV inputs and segments produce none
    scorers = [g for g in manifest["graphs"] if g["kind"] == "scorer"]
    assert all("ttv_sum" not in [t["name"] for t in g["inputs"]] for g in scorers)
    assert all("ttv" not in [t["name"] for t in g["outputs"]] for g in manifest["graphs"] if g["kind"] == "segment")


def test_summary_table_lists_every_graph(paper_build):
    _, manifest = paper_build
    table = summary_table(manifest).splitlines()
    assert table[0].split() == ["graph", "runs", "size", "max", "error", "TensorRT", "parser", "TensorRT", "lint"]
    assert [line.split()[0] for line in table[2:]] == [g["name"] for g in manifest["graphs"]]
    assert "layers 1-7" in table[5] and "keep 504 after layer 7" in table[6]


def test_the_report_says_why_the_parser_column_is_empty(paper_build, tmp_path):
    from transprune.cli.export import NO_PARSER_NOTE, _report

    _, manifest = paper_build
    without = {**manifest, "graphs": [{**g, "trt_parse": []} for g in manifest["graphs"]]}
    assert NO_PARSER_NOTE in _report(without, tmp_path, 1.0)
    parsed = {**manifest, "graphs": [{**g, "trt_parse": [{"ok": True, "rejected": []}]} for g in manifest["graphs"]]}
    assert NO_PARSER_NOTE not in _report(parsed, tmp_path, 1.0)


def test_check_trt_passes_on_the_default_export(paper_build, capsys):
    out, manifest = paper_build
    assert main(["--check-trt", str(out)]) == 0
    assert f"{len(manifest['graphs'])}/{len(manifest['graphs'])} graphs pass" in capsys.readouterr().out


def test_check_trt_flags_a_planted_unsupported_operator(paper_build, tmp_path, capsys):
    out, _ = paper_build
    copy = tmp_path / "planted"
    shutil.copytree(out, copy)
    model = onnx.load(copy / "head.onnx")
    logits = model.graph.output[0].name
    model.graph.node[-1].output[0] = "raw_logits"
    model.graph.node.append(helper.make_node("Det", ["raw_logits"], [logits]))  # TensorRT has no Det
    onnx.save(model, copy / "head.onnx")
    manifest = json.loads((copy / MANIFEST).read_text())
    head = next(g for g in manifest["graphs"] if g["name"] == "head")
    head["sha256"]["head.onnx"] = sha256(copy / "head.onnx")  # a legitimate rebuild, not tampering
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert main(["--check-trt", str(copy)]) == 1
    printed = capsys.readouterr().out
    assert "head: FAILS" in printed and "Det" in printed


def test_check_trt_real_parser_reports_every_node_it_rejects(paper_build, tmp_path, capsys, tensorrt_rtx):
    """With TensorRT-RTX installed the check parses for real: a MatMul of mismatched shapes, which no
    operator lint can see, is rejected by the parser; a Det (no importer) is reported too."""
    import numpy as np
    from onnx import numpy_helper

    out, _ = paper_build
    copy = tmp_path / "planted"
    shutil.copytree(out, copy)
    model = onnx.load(copy / "head.onnx")
    model.graph.initializer.extend([numpy_helper.from_array(np.ones((3, 5), np.float32), "odd_a"),
                                    numpy_helper.from_array(np.ones((4, 7), np.float32), "odd_b")])
    model.graph.node.append(helper.make_node("MatMul", ["odd_a", "odd_b"], ["odd_c"], name="mismatched_matmul"))
    model.graph.node.append(helper.make_node("Det", ["odd_c"], ["odd_d"], name="determinant"))
    model.graph.output.append(helper.make_tensor_value_info("odd_d", onnx.TensorProto.FLOAT, None))
    onnx.save(model, copy / "head.onnx")
    manifest = json.loads((copy / MANIFEST).read_text())
    head = next(g for g in manifest["graphs"] if g["name"] == "head")
    head["sha256"]["head.onnx"] = sha256(copy / "head.onnx")
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert main(["--check-trt", str(copy)]) == 1
    printed = capsys.readouterr().out
    checker = f"tensorrt_rtx {tensorrt_rtx.__version__} ONNX parser"
    assert f"{checker} rejects node " in printed and "mismatched_matmul (MatMul): " in printed
    assert "last dimension of input0 = 5 and second to last dimension of input1 = 4" in printed
    assert "determinant (Det): tensorrt_rtx has no importer for Det" in printed
    assert "lint error" in printed and "Det" in printed  # the lint sees the Det only
    assert f"10/11 graphs pass: {checker} and transprune operator lint" in printed
    assert main(["--check-trt", str(copy), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["head"]["parsers"][0]["checker"] == checker and len(report["head"]["parsers"][0]["rejected"]) == 2


def test_check_trt_refuses_a_tampered_build(paper_build, tmp_path, capsys):
    out, _ = paper_build
    copy = tmp_path / "tampered"
    shutil.copytree(out, copy)
    with open(copy / "scorer_0.onnx", "ab") as f:
        f.write(b"\0")
    assert main(["--check-trt", str(copy)]) == 2
    assert "scorer_0.onnx does not match its sha256" in capsys.readouterr().err


def _user_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    # the progress bar may have drawn lines before the failure; the error is the last line
    assert err.splitlines()[-1].startswith("transprune-export: error: ") and "Traceback" not in err
    return err


def test_real_model_without_local_weights_names_the_hub_id(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    err = _user_error(["--model", "llava-1.5-7b", "--out", str(tmp_path / "b")], capsys)
    assert "llava-hf/llava-1.5-7b-hf" in err and "--model DIR" in err
    assert not (tmp_path / "b").exists()


def test_not_a_llava_checkpoint(tmp_path, capsys):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    err = _user_error(["--model", str(tmp_path / "llama"), "--out", str(tmp_path / "b")], capsys)
    assert "holds a 'llama' model" in err


def test_missing_checkpoint_directory(tmp_path, capsys):
    assert "does not exist" in _user_error(["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")],
                                           capsys)


def test_invalid_schedule_is_refused_before_any_work(tmp_path, tiny_checkpoint, capsys):
    err = _user_error(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--prune", "7,9,20"], capsys)
    assert "layer 20 is outside 1..13" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--opset", "21"], "outside 18..20"),
    (["--max-text-tokens", "0"], "must be a positive integer"),
    (["--max-text-tokens", "5000"], "exceeds the model's"),
])
def test_bad_limits(tmp_path, tiny_checkpoint, capsys, flags, message):
    assert message in _user_error(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "b"), *flags], capsys)
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_needs_force_and_foreign_ones_are_never_replaced(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "precious.txt").write_text("keep me")
    assert "pass --force" in _user_error(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "b")], capsys)
    err = _user_error(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--force"], capsys)
    assert "not a transprune build" in err
    assert (tmp_path / "b" / "precious.txt").read_text() == "keep me"


def test_full_disk_is_caught_before_writing(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    from collections import namedtuple

    from transprune.export import exporter

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(exporter.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    err = _user_error(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "b")], capsys)
    assert "GB free but the export needs about" in err
    assert list(tmp_path.iterdir()) == []


def test_disk_filling_up_midway_leaves_nothing(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    from transprune.export import onnx_writer

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_writer, "write_graph", full)
    assert "no space left on the disk holding" in _user_error(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "b")], capsys)
    assert list(tmp_path.iterdir()) == []


def test_check_trt_takes_no_out(tmp_path, capsys):
    assert main(["--check-trt", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "takes no --out" in capsys.readouterr().err


def test_matmulnbits_from_converts_an_int4_build_that_then_runs(int4_build, tmp_path, capsys):
    from transprune.cli.run import main as run_main

    source, _ = int4_build
    out = tmp_path / "nbits"
    assert main(["--matmulnbits-from", str(source), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "now MatMulNBits at accuracy level 4" in report and "onnxruntime only" in report
    weights = json.loads((out / MANIFEST).read_text())["weights"]
    assert (weights["form"], weights["accuracy_level"]) == ("MatMulNBits", 4)
    assert weights["converted_from"]["manifest_sha256"] == sha256(source / MANIFEST)
    assert run_main([str(out), "--image", str(_sample_png(tmp_path)), "--prompt", "What is it?",
                     "--max-new-tokens", "2", "--threads", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tokens"]) >= 1
    # again: the build is there (--force replaces it, being a build this wrote), at another level
    assert "already exists; pass --force" in _user_error(["--matmulnbits-from", str(source), "--out", str(out)], capsys)
    assert main(["--matmulnbits-from", str(source), "--out", str(out), "--force", "--int4-accuracy-level", "0"]) == 0
    assert json.loads((out / MANIFEST).read_text())["weights"]["accuracy_level"] == 0


def test_matmulnbits_from_refuses_what_it_cannot_convert_and_writes_nothing(paper_build, int4_build, tmp_path, capsys):
    source, _ = int4_build
    err = _user_error(["--matmulnbits-from", str(paper_build[0]), "--out", str(tmp_path / "x")], capsys)
    assert "does not hold int4 weights" in err and "--weights int4" in err
    assert "is the source build" in _user_error(["--matmulnbits-from", str(source), "--out", str(source)], capsys)
    assert "lies inside the source build" in _user_error(
        ["--matmulnbits-from", str(source), "--out", str(source / "nbits")], capsys)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    err = _user_error(["--matmulnbits-from", str(source), "--out", str(tmp_path / "mine"), "--force"], capsys)
    assert "not a transprune build" in err
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging left behind
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert "applies to --matmulnbits-from only" in _user_error(["--int4-accuracy-level", "0"], capsys)
    assert main(["--check-trt", str(source), "--matmulnbits-from", str(source)]) == 2
    assert "two commands" in capsys.readouterr().err


def _sample_png(tmp_path):
    from transprune.sample_image import sample_image

    path = tmp_path / "sample.png"
    sample_image().save(path)
    return path
