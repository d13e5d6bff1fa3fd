"""``transprune-run``: JSON and streamed output on the tiny paper build, without torch in the
process, and every user error as one line on stderr with exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from transprune.cli.run import main


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from transprune.sample_image import sample_image

    path = tmp_path_factory.mktemp("images") / "sample.png"
    sample_image().save(path)
    return path


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_ids_tokens_text_kept_and_timings(paper_build, image_file, capsys):
    build_dir, manifest = paper_build
    result = _json(capsys, [str(build_dir), "--image", str(image_file), "--prompt", "What is this?",
                            "--max-new-tokens", "6", "--json"])
    assert result["input_ids"].count(manifest["model"]["facts"]["image_token_id"]) == 576
    assert len(result["tokens"]) == 6 and isinstance(result["text"], str)
    assert [len(k) for k in result["kept"]] == [504, 360, 72]
    assert all(0 <= i < 576 for stage in result["kept"] for i in stage)
    timings = result["timings"]
    assert {"vision", "segment_0", "scorer_0", "segment_3", "head", "decode_per_token"} <= set(timings)
    assert result["image_tokens"] == [576, 504, 360, 72] and result["backend"] == "onnxruntime"


def test_streamed_text_is_the_json_text(paper_build, image_file, capsys):
    argv = [str(paper_build[0]), "--image", str(image_file), "--prompt", "Describe it.", "--max-new-tokens", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert printed.out == _json(capsys, argv + ["--json"])["text"] + "\n"
    assert "image tokens 576 -> 504 -> 360 -> 72" in printed.err and "ms/token" in printed.err


def test_a_batch_of_two_pairs_and_seeded_sampling(paper_build, image_file, capsys):
    argv = [str(paper_build[0]), "--image", str(image_file), "--prompt", "Hi", "--image", str(image_file),
            "--prompt", "What colour is the big shape?", "--max-new-tokens", "5", "--temperature", "0.8",
            "--seed", "11", "--json"]
    first, second = _json(capsys, argv), _json(capsys, argv)
    assert first["batch"] == second["batch"] and len(first["batch"]) == 2
    assert first["batch"][0]["input_ids"] != first["batch"][1]["input_ids"]
    assert "timings" in first


def test_runs_with_torch_and_transformers_unimportable(paper_build, image_file, capsys):
    """The runtime path needs neither: import them and the subprocess fails."""
    argv = [str(paper_build[0]), "--image", str(image_file), "--prompt", "What is this?", "--max-new-tokens", "4",
            "--json"]
    bootstrap = textwrap.dedent("""
        import importlib.abc, json, sys
        BLOCKED = {"torch", "transformers", "onnx", "onnxscript", "safetensors"}
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked in this test")
        sys.meta_path.insert(0, Blocker())
        from transprune.cli.run import main
        code = main(json.loads(sys.argv[1]))
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", bootstrap, json.dumps(argv)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tokens"] == _json(capsys, argv)["tokens"]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("transprune-run: error: ")
    return err[0]


def test_user_errors_are_one_line_with_exit_2(paper_build, image_file, tmp_path, capsys):
    build = str(paper_build[0])
    image = str(image_file)
    assert "does not exist; create one with transprune-export" in _error(
        capsys, [str(tmp_path / "nowhere"), "--image", image, "--prompt", "Hi"])
    assert "not a transprune build directory" in _error(capsys, [str(tmp_path), "--image", image, "--prompt", "Hi"])
    assert "file not found" in _error(capsys, [build, "--image", str(tmp_path / "missing.png"), "--prompt", "Hi"])
    (tmp_path / "fake.png").write_text("not an image")
    assert "fake.png" in _error(capsys, [build, "--image", str(tmp_path / "fake.png"), "--prompt", "Hi"])
    long_prompt = "word " * 1100
    assert "at most 1024" in _error(capsys, [build, "--image", image, "--prompt", long_prompt])
    assert "exactly one image slot" in _error(capsys, [build, "--image", image, "--prompt", "no slot", "--raw-prompt"])
    assert "one prompt per image" in _error(capsys, [build, "--image", image, "--image", image, "--prompt", "a",
                                                     "--prompt", "b", "--prompt", "c"])
    assert "transprune-build" in _error(capsys, [build, "--image", image, "--prompt", "Hi", "--backend", "tensorrt"])
    assert "no CUDAExecutionProvider" in _error(capsys, [build, "--image", image, "--prompt", "Hi",
                                                         "--provider", "cuda"])
    assert "must be >= 1" in _error(capsys, [build, "--image", image, "--prompt", "Hi", "--threads", "0"])


def test_a_tampered_build_is_refused(paper_build, image_file, tmp_path, capsys):
    copy = tmp_path / "tampered"
    shutil.copytree(paper_build[0], copy)
    tokenizer = copy / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"<image>"', '"<imagf>"'))
    message = _error(capsys, [str(copy), "--image", str(image_file), "--prompt", "Hi"])
    assert "tokenizer.json does not match its sha256" in message
    (copy / "segment_1.onnx").unlink()
    assert "segment_1.onnx is listed in the manifest but missing" in _error(
        capsys, [str(copy), "--image", str(image_file), "--prompt", "Hi", "--no-verify"])


def test_an_int4_build_in_float_math_answers_as_validation_checked(int4_build, image_file, capsys):
    """--int4-accuracy-level 0 runs the int4 weights in float: exactly the tokens validation matched
    against the reference holding the same int4 weights."""
    build_dir, manifest = int4_build
    chain = manifest["validation"]["chain"]
    result = _json(capsys, [str(build_dir), "--image", str(image_file), "--prompt", chain["prompt"],
                            "--max-new-tokens", str(len(chain["tokens"])), "--int4-accuracy-level", "0", "--json"])
    assert result["tokens"] == chain["tokens"]
    # onnxruntime's default (int8 activations) still generates
    default = _json(capsys, [str(build_dir), "--image", str(image_file), "--prompt", chain["prompt"],
                             "--max-new-tokens", "4", "--json"])
    assert 1 <= len(default["tokens"]) <= 4
    assert "--int4-accuracy-level applies to the onnxruntime backend only" in _error(
        capsys, [str(build_dir), "--image", str(image_file), "--prompt", "Hi", "--backend", "torch",
                 "--int4-accuracy-level", "0"])
