import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transprune.checkpoints import LoadedModel, hf_hub_cache_dir, load_llava, resolve_checkpoint  # noqa: E402
from transprune.errors import TransPruneError  # noqa: E402
from transprune.presets import PRESETS  # noqa: E402


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return cache


def _write_config(directory, **config):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _copy(tiny_checkpoint, dest):
    return shutil.copytree(tiny_checkpoint, dest)


def test_tiny_model_fixture(tiny_model, tiny_checkpoint):
    assert isinstance(tiny_model, LoadedModel)
    assert tiny_model.path == tiny_checkpoint and tiny_model.preset == PRESETS["tiny"]
    assert not tiny_model.model.training
    assert tiny_model.model.dtype == torch.float32
    assert tiny_model.model.config._attn_implementation == "eager"
    assert type(tiny_model.processor).__name__ == "LlavaProcessor"
    assert len(tiny_model.model.model.language_model.layers) == 14


def test_local_directory_gives_the_same_facts(tiny_checkpoint, transprune_cache):
    path, preset = resolve_checkpoint("tiny", cache_dir=transprune_cache)
    assert (path, preset) == (tiny_checkpoint, PRESETS["tiny"])
    path, preset = resolve_checkpoint(str(tiny_checkpoint))
    assert path == tiny_checkpoint and preset.name == str(tiny_checkpoint)
    assert (preset.text, preset.vision, preset.n_image_tokens) == (
        PRESETS["tiny"].text, PRESETS["tiny"].vision, 576)


def test_missing_directory(tmp_path):
    with pytest.raises(TransPruneError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nowhere"))


def test_file_instead_of_directory(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(TransPruneError, match="is a file"):
        resolve_checkpoint(str(tmp_path / "model.safetensors"))


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(TransPruneError, match="has no config.json") as err:
        resolve_checkpoint(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_not_a_llava_config(tmp_path):
    _write_config(tmp_path, model_type="llama")
    with pytest.raises(TransPruneError, match="'llama'.*LlavaForConditionalGeneration"):
        resolve_checkpoint(str(tmp_path))


def test_llava_next_directory_is_accepted_but_a_missing_hub_preset_is_named(tmp_path):
    """LLaVA-NeXT is supported: its config passes the type check (the directory then fails on its
    missing weights, not its type), and the 7B preset asks for the hub download."""
    _write_config(tmp_path, model_type="llava_next")
    with pytest.raises(TransPruneError, match="has no weights") as err:
        resolve_checkpoint(str(tmp_path))
    assert "model_type" not in str(err.value)
    with pytest.raises(TransPruneError, match="llava-hf/llava-v1.6-vicuna-7b-hf"):
        resolve_checkpoint("llava-next-7b", cache_dir=tmp_path)


def test_pickle_weights_refused(tmp_path):
    _write_config(tmp_path, model_type="llava")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(TransPruneError, match="pickle checkpoints are refused for safety") as err:
        resolve_checkpoint(str(tmp_path))
    assert "pytorch_model.bin" in str(err.value) and "safetensors" in str(err.value)


def test_no_weights(tmp_path):
    _write_config(tmp_path, model_type="llava")
    with pytest.raises(TransPruneError, match="no weights"):
        resolve_checkpoint(str(tmp_path))


def test_hub_preset_not_cached(empty_hf_cache):
    assert hf_hub_cache_dir() == empty_hf_cache
    with pytest.raises(TransPruneError) as err:
        resolve_checkpoint("llava-1.5-7b")
    msg = str(err.value)
    assert "llava-hf/llava-1.5-7b-hf" in msg and "not available locally" in msg
    assert "no download is attempted" in msg and "--local-dir" in msg and "--model" in msg


def test_hub_id_not_cached(empty_hf_cache):
    with pytest.raises(TransPruneError, match="someone/some-llava.*not available locally"):
        load_llava("someone/some-llava")


def test_hub_id_from_local_cache(tmp_path, monkeypatch, tiny_checkpoint):
    """A model the user downloaded earlier is found in the HF cache, without network."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo = cache / "models--someone--tiny-llava"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _copy(tiny_checkpoint, repo / "snapshots" / commit)
    path, preset = resolve_checkpoint("someone/tiny-llava")
    assert path == repo / "snapshots" / commit
    assert preset.name == "someone/tiny-llava" and preset.text == PRESETS["tiny"].text


def test_corrupt_safetensors(tmp_path, tiny_checkpoint):
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(TransPruneError, match="truncated") as err:
        load_llava(str(ckpt))
    assert str(weights) in str(err.value)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(TransPruneError) as err:
        load_llava(str(ckpt))
    assert str(weights) in str(err.value)


def test_missing_tensors(tmp_path, tiny_checkpoint):
    from safetensors.torch import save_file

    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    save_file({"lm_head.weight": torch.zeros(1024, 64)}, str(ckpt / "model.safetensors"))
    with pytest.raises(TransPruneError, match="tensors are missing"):
        load_llava(str(ckpt))


def test_unknown_dtype(transprune_cache, tiny_checkpoint):
    with pytest.raises(TransPruneError, match="unknown dtype"):
        load_llava("tiny", dtype="int3", cache_dir=transprune_cache)


def test_unknown_name():
    with pytest.raises(TransPruneError, match="preset name"):
        resolve_checkpoint("no-such-model")
