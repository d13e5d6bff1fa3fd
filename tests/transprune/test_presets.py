import pytest

from transprune.errors import TransPruneError
from transprune.presets import PRESETS, model_preset, preset_from_hf_config

# llava-hf/llava-1.5-7b-hf's config.json as published: the text config lists only what differs
# from LlamaConfig's defaults.
LLAVA_15_7B_CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"],
    "image_token_index": 32000,
    "model_type": "llava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "vision_config": {
        "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
        "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
        "patch_size": 14, "projection_dim": 768, "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}


def test_sparse_llava_hf_config_matches_preset():
    read = preset_from_hf_config(LLAVA_15_7B_CONFIG, name="/models/llava")
    known = model_preset("llava-1.5-7b")
    assert read.text == known.text
    assert read.vision == known.vision
    assert read.n_image_tokens == 576 and read.architecture == "llava"


def test_presets_are_consistent():
    for preset in PRESETS.values():
        assert preset.text.hidden_size % preset.text.num_heads == 0
        assert preset.text.num_heads % preset.text.num_kv_heads == 0
    tiny = model_preset("tiny")
    assert tiny.synthetic and tiny.text.num_layers >= 14 and tiny.n_image_tokens == 576 == tiny.vision.n_patches
    bench = model_preset("bench")
    assert bench.text.num_layers == 32 and bench.text.hidden_size >= 1024 and bench.n_image_tokens == 576
    assert model_preset("llava-next-7b").n_image_tokens == 2880
    bench_next = model_preset("bench-next")
    assert bench_next.synthetic and bench_next.architecture == "llava-next" and bench_next.n_image_tokens == 2880
    assert bench_next.text.num_layers == 32 and bench_next.vision == bench.vision
    # room for the largest anyres image (2928 image tokens) plus a prompt and an answer
    assert bench_next.text.max_position_embeddings >= 4096
    synthetic_seeds = [p.seed for p in PRESETS.values() if p.synthetic]
    assert len(set(synthetic_seeds)) == len(synthetic_seeds)


def test_bad_configs_and_names():
    with pytest.raises(TransPruneError, match="unknown model preset 'gpt2'"):
        model_preset("gpt2")
    with pytest.raises(TransPruneError, match="no text_config/vision_config"):
        preset_from_hf_config({"model_type": "llama", "hidden_size": 8}, name="x")
    multi = {**LLAVA_15_7B_CONFIG, "vision_feature_layer": [-2, -5]}
    with pytest.raises(TransPruneError, match="selects several layers"):
        preset_from_hf_config(multi, name="x")
