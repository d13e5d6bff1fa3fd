import dataclasses
import json
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoProcessor, AutoTokenizer  # noqa: E402

from transprune import synthetic  # noqa: E402
from transprune.errors import TransPruneError  # noqa: E402
from transprune.presets import PRESETS  # noqa: E402
from transprune.sample_image import sample_image, sample_images  # noqa: E402
from transprune.synthetic import (  # noqa: E402
    build_synthetic_checkpoint,
    checkpoint_fingerprint,
    default_cache_dir,
    ensure_synthetic_checkpoint,
)

TINY = PRESETS["tiny"]
IMAGE_ID = synthetic.SPECIAL_TOKENS.index("<image>")


def _user(text, image=True):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint, local_files_only=True)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint, local_files_only=True)


def test_build_is_deterministic(tmp_path, tiny_checkpoint):
    a = build_synthetic_checkpoint(TINY, tmp_path / "a")
    b = build_synthetic_checkpoint(TINY, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json"} <= set(names)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        # and the same as the session build (another cache dir, maybe another process)
        assert (a / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp dirs left


def test_config(tiny_checkpoint, tokenizer):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "llava"
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    text, vision = config["text_config"], config["vision_config"]
    assert text["num_hidden_layers"] == 14 and text["num_key_value_heads"] == 2
    assert text["vocab_size"] == TINY.text.vocab_size and not config["tie_word_embeddings"]
    assert (vision["image_size"], vision["patch_size"]) == (336, 14)
    assert config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default"
    assert config["image_token_index"] == tokenizer.convert_tokens_to_ids("<image>")
    assert config["pad_token_id"] == tokenizer.pad_token_id
    assert text["bos_token_id"] == tokenizer.bos_token_id
    assert text["eos_token_id"] == tokenizer.eos_token_id


def test_tokenizer(tiny_checkpoint, tokenizer):
    assert [tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token] == [
        "<unk>", "<s>", "</s>", "<pad>"]
    assert len(tokenizer) <= TINY.text.vocab_size
    raw = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    texts = [
        "Describe the picture briefly.",
        "Héllo wörld 😀, 12345 tabs\tand\nnewlines  ",
        "USER: <image>\nWhat is in the image? ASSISTANT:",
        "<image><image> <image>x",
    ]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
        assert raw.encode(text).ids == ids  # the torch-free runtime sees the same ids
        assert tokenizer.unk_token_id not in ids
        if "<image>" not in text:
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
            assert raw.decode(ids) == text
    assert tokenizer("<image>", add_special_tokens=False)["input_ids"] == [IMAGE_ID]
    assert tokenizer("<image><image>x")["input_ids"][1:3] == [IMAGE_ID, IMAGE_ID]


def test_chat_template(processor, tokenizer):
    msgs = [_user("What is shown?")]
    expected = "USER: <image>\nWhat is shown? ASSISTANT:"
    assert processor.apply_chat_template(msgs, add_generation_prompt=True) == expected
    assert processor.apply_chat_template(msgs) == "USER: <image>\nWhat is shown? "
    conversation = [
        {"role": "system", "content": "A chat."},
        _user("What is shown?"),
        {"role": "assistant", "content": [{"type": "text", "text": "A house."}]},
        {"role": "user", "content": "And the sky?"},
    ]
    expected = "A chat. USER: <image>\nWhat is shown? ASSISTANT: A house.</s>USER: And the sky? ASSISTANT:"
    assert processor.apply_chat_template(conversation, add_generation_prompt=True) == expected
    assert tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) == expected


def test_processor_expands_image_token(processor):
    prompt = processor.apply_chat_template([_user("Describe the picture.")], add_generation_prompt=True)
    for img in sample_images():
        inputs = processor(images=img, text=prompt, return_tensors="pt")
        assert inputs["pixel_values"].shape == (1, 3, 336, 336)
        ids = inputs["input_ids"][0]
        assert int((ids == IMAGE_ID).sum()) == TINY.vision.n_patches == 576
        positions = (ids == IMAGE_ID).nonzero()[:, 0]
        assert int(positions[-1] - positions[0]) == 575  # one contiguous block


def test_generate(tiny_model):
    model, processor = tiny_model.model, tiny_model.processor
    prompt = processor.apply_chat_template([_user("What color is the house?")], add_generation_prompt=True)
    inputs = processor(images=sample_image(), text=prompt, return_tensors="pt")
    n_prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (1, n_prompt + 4)
    assert len(out.logits) == 4 and out.logits[0].shape == (1, TINY.text.vocab_size)
    assert all(torch.isfinite(step).all() for step in out.logits)
    logits = torch.stack(out.logits)[:, 0]  # (4, vocab): raw logits; min_new_tokens bans EOS
    logits[:, processor.tokenizer.eos_token_id] = -torch.inf
    assert torch.equal(out.sequences[0, n_prompt:], logits.argmax(-1))  # greedy
    assert processor.decode(out.sequences[0, n_prompt:])  # decodes to some text


def test_image_tokens_are_distinct(tiny_model):
    """The seeded init keeps image-token hidden states apart (token ranking needs that)."""
    processor = tiny_model.processor
    prompt = processor.apply_chat_template([_user("Describe the picture.")], add_generation_prompt=True)
    inputs = processor(images=sample_image(), text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = tiny_model.model(**inputs, output_hidden_states=True)
    image = inputs["input_ids"][0] == IMAGE_ID
    for layer in (7, 9, 12):
        h = out.hidden_states[layer][0, image]
        dist = torch.cdist(h, h) + torch.eye(len(h)) * 1e9
        assert dist.min() > 1e-3 * h.norm(dim=-1).mean()


def test_ensure_builds_once(tmp_path, monkeypatch):
    path = ensure_synthetic_checkpoint("tiny", cache_dir=tmp_path)
    assert path == tmp_path / "models" / f"tiny-{checkpoint_fingerprint(TINY)}"
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(synthetic, "build_synthetic_checkpoint", fail)
    assert ensure_synthetic_checkpoint("tiny", cache_dir=tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_fingerprint_follows_preset():
    assert checkpoint_fingerprint(TINY) == checkpoint_fingerprint(dataclasses.replace(TINY))
    assert checkpoint_fingerprint(TINY) != checkpoint_fingerprint(dataclasses.replace(TINY, seed=1))
    assert checkpoint_fingerprint(TINY) != checkpoint_fingerprint(PRESETS["bench"])


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSPRUNE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("TRANSPRUNE_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "transprune")


def test_lost_race_keeps_the_winner(tmp_path, monkeypatch, tiny_checkpoint):
    real_build = synthetic.build_synthetic_checkpoint

    def racing_build(preset, dest):  # another process finishes first
        shutil.copytree(tiny_checkpoint, dest)
        (dest / "winner").write_text("")
        return real_build(preset, dest)

    monkeypatch.setattr(synthetic, "build_synthetic_checkpoint", racing_build)
    path = ensure_synthetic_checkpoint("tiny", cache_dir=tmp_path)
    assert (path / "winner").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # ours was discarded


def test_crash_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("crash mid-build")

    monkeypatch.setattr(synthetic, "_processor", boom)  # after the weights are written
    with pytest.raises(RuntimeError, match="crash mid-build"):
        build_synthetic_checkpoint(TINY, tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_refuses_real_presets(tmp_path):
    with pytest.raises(TransPruneError, match="not synthetic"):
        build_synthetic_checkpoint(PRESETS["llava-1.5-7b"], tmp_path / "x")
    with pytest.raises(TransPruneError, match="not synthetic"):
        ensure_synthetic_checkpoint("llava-1.5-7b", cache_dir=tmp_path)
    with pytest.raises(TransPruneError, match="unknown model preset"):
        ensure_synthetic_checkpoint("nope", cache_dir=tmp_path)


def test_tiny_next_is_a_llava_next_checkpoint_with_anyres_token_counts(transprune_cache):
    """tiny-next loads through the one loading path as LlavaNextForConditionalGeneration; its
    processor gives each aspect ratio its own image-token count, and the model generates with them."""
    from transprune.checkpoints import load_llava

    loaded = load_llava("tiny-next", cache_dir=transprune_cache)
    assert type(loaded.model).__name__ == "LlavaNextForConditionalGeneration"
    assert loaded.model.config.image_grid_pinpoints == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    prompt = loaded.processor.apply_chat_template([_user("What is this?")], add_generation_prompt=True)
    counts = {}
    for width, height in ((480, 360), (300, 900), (336, 336), (1000, 120)):
        inputs = loaded.processor(images=sample_image(width=width, height=height), text=prompt, return_tensors="pt")
        counts[(width, height)] = int((inputs["input_ids"] == IMAGE_ID).sum())
        with torch.no_grad():
            out = loaded.model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    assert len(set(counts.values())) > 1 and all(576 < n < 3840 for n in counts.values()), counts
