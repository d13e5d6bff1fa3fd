"""Checkpoint tensors read without memory mapping: same values as safetensors, clear errors."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from transprune.errors import TransPruneError
from transprune.export.weights import CheckpointWeights, canonical_name


def test_every_tensor_equals_what_safetensors_reads(tiny_checkpoint):
    weights = CheckpointWeights(tiny_checkpoint)
    with safe_open(str(tiny_checkpoint / "model.safetensors"), framework="pt") as f:
        keys = [k for k in f.keys() if canonical_name(k)]
        assert len(keys) == len(weights.names()) > 100
        for key in keys:
            ours = weights[canonical_name(key)]
            assert ours.dtype == f.get_tensor(key).dtype and torch.equal(ours, f.get_tensor(key)), key
            assert weights.describe(canonical_name(key))[0] == tuple(ours.shape)


def test_bf16_and_empty_tensors(tmp_path):
    save_file({"language_model.model.norm.weight": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
               "language_model.lm_head.weight": torch.zeros(0, 4)}, str(tmp_path / "model.safetensors"))
    weights = CheckpointWeights(tmp_path)
    assert weights["text.norm.weight"].dtype == torch.bfloat16
    assert weights["text.norm.weight"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert weights["lm_head.weight"].shape == (0, 4)
    assert weights.describe("text.norm.weight") == ((2, 3), "BF16")


def _write(tmp_path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize("header, data, message", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "do not match its shape"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16, "do not match its shape"),
    ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "unsupported header entry"),
    ({"a": {"shape": [1]}}, b"", "unsupported header entry"),
])
def test_corrupt_headers_are_refused(tmp_path, header, data, message):
    _write(tmp_path, header, data)
    with pytest.raises(TransPruneError, match=message):
        CheckpointWeights(tmp_path)


def test_garbage_is_not_a_safetensors_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(TransPruneError, match="not a readable safetensors file"):
        CheckpointWeights(tmp_path)


def test_a_missing_tensor_is_named(tiny_checkpoint):
    with pytest.raises(TransPruneError, match="no tensor for 'text.layers.99.mlp.up_proj.weight'"):
        CheckpointWeights(tiny_checkpoint)["text.layers.99.mlp.up_proj.weight"]


@pytest.mark.parametrize("name", ["image_newline", "model.image_newline"])
def test_llava_next_newline_in_either_layout(name):
    """llava-hf's original LLaVA-NeXT files name it at the top level, transformers 5 under model."""
    assert canonical_name(name) == "image_newline"
    assert canonical_name(f"{name}_extra") is None and canonical_name("model.vision_tower.image_newline") != \
        "image_newline"


def test_the_tiny_next_checkpoint_has_every_tensor_the_graphs_read(transprune_cache):
    from transprune.synthetic import ensure_synthetic_checkpoint

    weights = CheckpointWeights(ensure_synthetic_checkpoint("tiny-next", cache_dir=transprune_cache))
    assert weights.describe("image_newline") == ((64,), "F32")
    assert "projector.linear_2.weight" in weights and "text.layers.13.mlp.up_proj.weight" in weights
