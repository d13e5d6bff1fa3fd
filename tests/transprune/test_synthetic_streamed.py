"""transprune.synthetic_streamed: the full-size plan of a real configuration, on the meta device
(the checkpoint itself is written and loaded in tests/scripts/test_make_synthetic_checkpoint.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from transprune.streamed_safetensors import plan_shards  # noqa: E402
from transprune.synthetic_streamed import llava_config, model_preset_for, plan_tensors  # noqa: E402


def test_full_size_plan_is_llava_1_5_7b():
    """The default (real) configuration, planned on the meta device: nothing is written."""
    preset = model_preset_for("llava-1.5-7b")
    tensors = plan_tensors(preset, llava_config(preset))
    by_name = {t.name: t for t in tensors}
    assert len(tensors) == 686
    assert sum(t.numel for t in tensors) == 7_063_427_072
    assert by_name["language_model.lm_head.weight"].shape == (32064, 4096)
    assert by_name["language_model.model.layers.31.mlp.down_proj.weight"].shape == (4096, 11008)
    assert by_name["vision_tower.encoder.layers.23.self_attn.q_proj.weight"].shape == (1024, 1024)
    assert by_name["multi_modal_projector.linear_1.weight"].shape == (4096, 1024)
    assert by_name["language_model.model.norm.weight"].init == "ones"
    assert by_name["vision_tower.pre_layrnorm.bias"].init == "zeros"
    shards = plan_shards(tensors, int(2e9))
    assert len(shards) == 8 and all(sum(t.nbytes for t in s) <= 2e9 for s in shards)
