"""The PyTorch reference on LLaVA-NeXT (tiny-next): anyres images, image-token counts per image."""

import pytest

torch = pytest.importorskip("torch")

from transprune.errors import TransPruneError  # noqa: E402
from transprune.reference import TransPruneReference, encode_inputs  # noqa: E402
from transprune.sample_image import sample_image  # noqa: E402
from transprune.schedule import preset  # noqa: E402

PROMPT = "What is shown in this picture?"
# landscape, portrait, a 1:3 strip and a square: 1 + 2, 1 + 2, 1 + 3 and 1 + 4 tiles
SIZES = ((480, 360), (300, 560), (1000, 330), (700, 700))


@pytest.fixture(scope="module")
def next_model(tiny_next_model):
    return tiny_next_model


def _inputs(loaded, size):
    return encode_inputs(loaded.processor, [sample_image(width=size[0], height=size[1])], [PROMPT])


@pytest.mark.parametrize("size", [SIZES[0], SIZES[2]])
def test_schedule_none_equals_transformers_generate(next_model, size):
    inputs = _inputs(next_model, size)
    hf = next_model.model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True, eos_token_id=None,
                                   pad_token_id=next_model.processor.tokenizer.pad_token_id)
    reference = TransPruneReference(next_model.model, preset("none"))
    ours = reference.generate(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                              image_sizes=inputs["image_sizes"], max_new_tokens=4)
    assert ours.tokens[0] == hf.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    for theirs, mine in zip(hf.logits, ours.step_logits):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


def test_paper_schedule_keeps_int_n_times_ratio_of_each_images_tokens(next_model):
    reference = TransPruneReference(next_model.model, preset("paper"))
    seen = set()
    for size in SIZES:
        inputs = _inputs(next_model, size)
        n_image = int((inputs["input_ids"] == next_model.model.config.image_token_id).sum())
        out = reference.prefill(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                inputs["image_sizes"])
        assert reference.n_image == n_image
        assert [r.keep for r in out.records] == [int(n_image * r) for r in (0.875, 0.625, 0.125)]
        assert [r.scored.shape[1] for r in out.records] == [n_image, *[r.keep for r in out.records[:-1]]]
        for record in out.records:
            kept = record.kept[0]
            assert torch.all(kept[1:] > kept[:-1]) and int(kept.max()) < n_image
        seen.add(n_image)
    assert len(seen) == len(SIZES)  # every aspect ratio gives its own token count


def test_a_batch_of_different_token_counts_is_refused(next_model):
    images = [sample_image(width=480, height=360), sample_image(width=1000, height=330)]
    inputs = encode_inputs(next_model.processor, images, [PROMPT, PROMPT])
    reference = TransPruneReference(next_model.model, preset("paper"))
    with pytest.raises(TransPruneError, match="a batch needs images with equal counts"):
        reference.prefill(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                          inputs["image_sizes"])


def test_reference_cli_runs_llava_next_with_the_images_own_count(next_model, transprune_cache, tmp_path, monkeypatch,
                                                                   capsys):
    """transprune-reference --model tiny-next passes the image size through: a 480x360 image gives
    its own token count, and each prune keeps int(n * ratio) of it."""
    import json

    from transprune.cli.reference import main

    monkeypatch.setenv("TRANSPRUNE_CACHE", str(transprune_cache))
    path = tmp_path / "photo.png"
    sample_image(width=480, height=360).save(path)
    assert main(["--model", "tiny-next", "--image", str(path), "--prompt", PROMPT, "--max-new-tokens", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    n = result["input_ids"].count(next_model.model.config.image_token_id)
    assert result["image_tokens"] == [n, int(n * 0.875), int(n * 0.625), int(n * 0.125)] and n == 2340
