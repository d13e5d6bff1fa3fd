"""scripts/make_synthetic_checkpoint.py: the hand-written safetensors shards are valid and load.

Runs the script's ``main`` in-process on the llava-1.5-7b configuration shrunk by its hidden test
hooks (one text and one vision layer, text width 256): ~60 MB written, about a second. The full
7B plan (names, shapes, parameter count) is checked without writing it, in
tests/transprune/test_synthetic_streamed.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from transprune import streamed_safetensors  # noqa: E402
from transprune.export.weights import CheckpointWeights, canonical_name  # noqa: E402
from transprune.synthetic import text_initializer_range  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_synthetic_checkpoint.py"
WIDTH = 256
# ~60 MB of weights; 0.02 GB shards make several files, so the index is exercised.
SMALL = ["--model", "llava-1.5-7b", "--layers", "1", "--hidden-size", str(WIDTH), "--shard-gb", "0.02"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_synthetic_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(script, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "llava7b-small"
    assert script.main(["--out", str(out), *SMALL]) == 0
    return out


def test_files_and_index(checkpoint):
    names = {p.name for p in checkpoint.iterdir()}
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    n = len(shards)
    assert n > 1 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert {"config.json", "generation_config.json", "tokenizer.json", "processor_config.json",
            "model.safetensors.index.json"} <= names
    assert not [n for n in names if n.startswith(".")]
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    sizes = {}
    for shard in shards:
        with safe_open(str(checkpoint / shard), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                assert index["weight_map"][key] == shard
                sl = f.get_slice(key)
                assert sl.get_dtype() == "F16"
                sizes[key] = 2 * torch.Size(sl.get_shape()).numel()
    assert set(sizes) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(sizes.values())
    config = transformers.LlavaConfig.from_pretrained(checkpoint)
    assert config.text_config.hidden_size == WIDTH and config.text_config.vocab_size == 32064
    assert config.text_config.num_hidden_layers == 1 and config.vision_config.num_hidden_layers == 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert len(tokenizer) <= 32064


def test_loads_in_transformers_and_matches_safe_open(checkpoint):
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float16, output_loading_info=True
    )
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    # Every model tensor equals what safetensors itself reads from the files (canonical names
    # bridge the in-memory names and the saved ones, e.g. model.language_model.* vs
    # language_model.model.*).
    on_disk = {}
    for shard in checkpoint.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                on_disk[canonical_name(key)] = f.get_tensor(key)
    state = {canonical_name(k): v for k, v in model.state_dict().items()}
    assert set(state) == set(on_disk)
    for name, tensor in state.items():
        assert tensor.dtype == torch.float16
        assert torch.equal(tensor, on_disk[name]), name
    # Values look like the synthetic init: norms 1, biases 0, weights at the text init std.
    assert torch.all(state["text.norm.weight"] == 1)
    assert torch.all(state["projector.linear_1.bias"] == 0)
    std = state["text.layers.0.self_attn.q_proj.weight"].float().std().item()
    assert std == pytest.approx(text_initializer_range(WIDTH), rel=0.01)
    assert not torch.equal(state["text.layers.0.self_attn.q_proj.weight"],
                           state["text.layers.0.self_attn.k_proj.weight"])


def test_checkpoint_weights_reads_it(checkpoint):
    weights = CheckpointWeights(checkpoint)
    q = weights["text.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (WIDTH, WIDTH) and q.dtype == torch.float16
    assert weights["lm_head.weight"].shape == (32064, WIDTH)
    assert weights["vision.encoder.layers.0.mlp.fc1.weight"].shape == (4096, 1024)


def test_existing_out_is_refused_without_force(script, checkpoint, capsys):
    before = sorted(p.name for p in checkpoint.parent.iterdir())
    assert script.main(["--out", str(checkpoint), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == before
    # Not a checkpoint: even --force leaves it alone.
    stranger = checkpoint.parent / "not-a-checkpoint"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    assert script.main(["--out", str(stranger), "--force", *SMALL]) == 2
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_force_replaces_a_checkpoint(script, tmp_path):
    out = tmp_path / "ckpt"
    assert script.main(["--out", str(out), *SMALL]) == 0
    before = CheckpointWeights(out)["text.norm.weight"], CheckpointWeights(out)["lm_head.weight"]
    assert script.main(["--out", str(out), "--force", "--seed", "1", *SMALL]) == 0
    after = CheckpointWeights(out)["text.norm.weight"], CheckpointWeights(out)["lm_head.weight"]
    assert torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_leaves_nothing_behind(script, tmp_path, monkeypatch, error):
    original = streamed_safetensors._write_tensor
    calls = []

    def failing(*args, **kwargs):
        if calls:  # the first tensor is written, so a shard file is half-written when this hits
            raise error("disk on fire")
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(streamed_safetensors, "_write_tensor", failing)
    out = tmp_path / "ckpt"
    if error is KeyboardInterrupt:
        assert script.main(["--out", str(out), *SMALL]) == 130
    else:
        with pytest.raises(error, match="disk on fire"):
            script.main(["--out", str(out), *SMALL])
    assert calls and list(tmp_path.iterdir()) == []


def test_not_enough_disk_is_reported(script, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**7, 10**7))
    assert script.main(["--out", str(tmp_path / "ckpt"), *SMALL]) == 1
    err = capsys.readouterr().err
    assert "not enough free disk space" in err and "0.01 GB free" in err and "need 0.07 GB" in err
    assert list(tmp_path.iterdir()) == []
