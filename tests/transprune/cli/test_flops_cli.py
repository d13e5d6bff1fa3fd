"""transprune-flops: JSON output, schedule flags, user errors as exit 2, checkpoint directories."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transprune.cli.flops import main


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def test_json_default_is_paper_7b(capsys):
    d = run_json(capsys)
    assert d["model"]["name"] == "llava-1.5-7b"
    assert d["schedule"]["name"] == "paper"
    assert round(d["baseline_tflops"], 2) == 3.82 and round(d["pruned_tflops"], 2) == 1.56
    assert round(d["ratio"], 3) == 0.408
    assert d["whole_prompt"]["text_tokens"] == 64
    assert d["whole_prompt"]["ratio"] == pytest.approx(0.466, abs=5e-4)
    assert d["iga_tflops"] > 0
    assert d["whole_prompt_with_iga"]["ratio"] > d["whole_prompt"]["ratio"]
    assert d["per_layer_image_tokens"][6:13] == [576, 504, 504, 360, 360, 360, 72]


def test_human_summary(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "576 -> 504 -> 360 -> 72" in out
    assert "3.82 -> 1.56 TFLOPs (40.8%)" in out
    assert "(46.6%)" in out and "IGA scoring overhead" in out


def test_table9_shift_and_text_tokens(capsys):
    d = run_json(capsys, "--prune", "5,7,10", "--ratios", "0.875,0.625,0.125", "--text-tokens", "100")
    assert d["schedule"]["prune"] == [5, 7, 10]
    assert d["schedule"]["accumulate"] == [5, 6, 7, 8, 9, 10]
    assert d["per_layer_image_tokens"][4:11] == [576, 504, 504, 360, 360, 360, 72]
    assert d["whole_prompt"]["text_tokens"] == 100
    assert d["ratio"] < 0.408  # pruning earlier saves more


def test_ttv_only_json(capsys):
    d = run_json(capsys, "--criterion", "ttv")
    assert d["iga_tflops"] == 0
    assert d["whole_prompt_with_iga"]["ratio"] == d["whole_prompt"]["ratio"]


@pytest.mark.parametrize("argv, needle", [
    (["--ratios", "0.5,0.7,0.1"], "0.5 then 0.7"),
    (["--model", "no-such-model"], "no-such-model"),
    (["--text-tokens", "-3"], "-3"),
    (["--prune", "7,9,40"], "40"),
])
def test_user_errors_exit_2_without_traceback(capsys, argv, needle):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("transprune-flops: error: ")
    assert needle in captured.err
    assert "Traceback" not in captured.err


def test_unknown_model_lists_presets(capsys):
    assert main(["--model", "llava-2"]) == 2
    err = capsys.readouterr().err
    assert "llava-1.5-7b" in err and "config.json" in err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as exc:
        main(["--text-tokens", "many"])
    assert exc.value.code == 2


def llava_config(**text_overrides):
    text = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32064}
    text.update(text_overrides)
    return {
        "model_type": "llava",
        "text_config": text,
        "vision_config": {"image_size": 336, "patch_size": 14, "hidden_size": 1024,
                          "num_hidden_layers": 24, "num_attention_heads": 16,
                          "intermediate_size": 4096},
    }


def test_checkpoint_directory(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(llava_config()))
    d = run_json(capsys, "--model", str(tmp_path))
    assert d["model"]["name"] == str(tmp_path)
    assert d["model"]["n_image_tokens"] == 576
    assert round(d["pruned_tflops"], 2) == 1.56  # same geometry as the 7B preset


@pytest.mark.parametrize("content, needle", [
    (None, "no config.json"),
    ("{not json", "JSON"),
    (json.dumps({"model_type": "llama"}), "not a LLaVA config"),
])
def test_bad_checkpoint_directory(tmp_path, capsys, content, needle):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    assert main(["--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_console_script():
    script = Path(sys.executable).parent / "transprune-flops"
    script = str(script) if script.exists() else shutil.which("transprune-flops")
    if script is None:
        pytest.skip("transprune-flops is not installed (pip install -e .)")
    proc = subprocess.run([script, "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert round(json.loads(proc.stdout)["ratio"], 3) == 0.408
