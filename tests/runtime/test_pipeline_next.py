"""The torch-free runtime on a LLaVA-NeXT build (tiny-next): each image's own token count through
prompt, tiles, chain and pruning, equal to the PyTorch reference for several aspect ratios."""

from __future__ import annotations

import numpy as np
import pytest

from transprune.errors import TransPruneError
from transprune.sample_image import sample_image

PROMPT = "What is shown in this picture?"
# (width, height): landscape 4:3 (2 x 2 tiles), a 1:3 strip (1 x 3), portrait 9:16, an odd size
SIZES = ((640, 480), (330, 1000), (270, 480), (517, 283))


@pytest.fixture(scope="module")
def pipeline(next_build):
    from transprune.runtime.pipeline import Pipeline

    with Pipeline.from_dir(next_build[0]) as pipeline:
        yield pipeline


@pytest.mark.parametrize("size", SIZES)
def test_generation_equals_the_reference(pipeline, tiny_next_model, size):
    """Image file in, text out: ids, kept tokens at every stage and 12 greedy tokens all equal what
    transformers' processor + the PyTorch reference give; each prune keeps int(n * ratio)."""
    from transprune.reference import TransPruneReference, encode_inputs
    from transprune.schedule import preset

    image = sample_image(width=size[0], height=size[1])
    ours = pipeline.generate(image, PROMPT, max_new_tokens=12)
    inputs = encode_inputs(tiny_next_model.processor, [image], [PROMPT])
    reference = TransPruneReference(tiny_next_model.model, preset("paper")).generate(
        inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], image_sizes=inputs["image_sizes"],
        max_new_tokens=12)
    n = int((inputs["input_ids"] == pipeline.build.image_token_id).sum())
    assert ours.input_ids == inputs["input_ids"][0].tolist()
    assert ours.image_tokens == [n, int(n * 0.875), int(n * 0.625), int(n * 0.125)]
    assert [len(k) for k in ours.kept] == ours.image_tokens[1:]
    for mine, theirs in zip(ours.kept, reference.records):
        assert mine == theirs.kept[0].tolist()
    assert ours.tokens == reference.tokens[0]


def test_images_of_different_counts_run_as_separate_batches_in_order(pipeline):
    """A batch mixing sizes runs one batch per image-token count; results come back in the given
    order and equal each image run alone."""
    wide, tall = sample_image(width=640, height=480), sample_image(width=330, height=1000)
    together = pipeline.generate_batch([wide, tall, wide], [PROMPT, "Describe it.", "Hi"], max_new_tokens=6)
    alone = [pipeline.generate(image, prompt, max_new_tokens=6)
             for image, prompt in ((wide, PROMPT), (tall, "Describe it."), (wide, "Hi"))]
    assert [r.image_tokens[0] for r in together] == [2340, alone[1].image_tokens[0], 2340]
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert [r.kept for r in together] == [r.kept for r in alone]


def test_streamed_text_pieces_reach_the_right_sample(pipeline):
    wide, tall = sample_image(width=640, height=480), sample_image(width=330, height=1000)
    pieces: dict[int, str] = {0: "", 1: ""}
    results = pipeline.generate_batch([tall, wide], [PROMPT, PROMPT], max_new_tokens=5,
                                      on_text=lambda sample, piece: pieces.__setitem__(sample, pieces[sample] + piece))
    assert [pieces[0], pieces[1]] == [r.text for r in results]


def test_bad_inputs_are_refused_with_the_fix(pipeline):
    from transprune.runtime.chain import Chain
    from transprune.runtime.inputs import MixedImageTokensError
    from transprune.runtime.prompt import PromptError

    images = pipeline.images
    with pytest.raises(PromptError, match="2 images and 1 prompts: give one prompt per image"):
        pipeline.generate_batch([sample_image(width=640, height=480), sample_image(width=330, height=1000)],
                                [PROMPT])
    with pytest.raises(MixedImageTokensError, match=r"give \[2340, \d+\] image tokens.*separate batches"):
        images.prepare([sample_image(width=640, height=480), sample_image(width=330, height=1000)])
    with pytest.raises(PromptError, match="pass image_tokens"):
        pipeline.prompts.encode(PROMPT)
    prepared = images.prepare([sample_image(width=640, height=480)])
    wrong = pipeline.prompts.encode_batch([PROMPT], image_tokens=[prepared.image_tokens[0] - 1])
    with pytest.raises(TransPruneError, match="hold \\[2339\\] image tokens but the images give 2340"):
        Chain(pipeline.build, pipeline.backend).prefill(wrong.input_ids, wrong.attention_mask,
                                                        prepared.pixel_values, pack_index=prepared.pack_index)
    with pytest.raises(TransPruneError, match="needs the pack_index"):
        Chain(pipeline.build, pipeline.backend).prefill(wrong.input_ids, wrong.attention_mask, prepared.pixel_values)
    build = pipeline.build
    with pytest.raises(TransPruneError, match="keep_counts_for"):
        build.keep_counts
    assert build.keep_counts_for(576) == [504, 360, 72]
    with pytest.raises(TransPruneError, match="3000 image tokens is outside this build's 576..2928"):
        build.keep_counts_for(3000)


def test_pack_index_addresses_each_images_own_tiles(pipeline):
    """Two equal-count images share one tile stack: the second image's rows start after the first's
    tiles, and newlines (-1) sit at the same places."""
    image = sample_image(width=640, height=480)
    prepared = pipeline.images.prepare([image, image.transpose(0)])  # mirrored: same size, other pixels
    tiles = prepared.tiles[0]
    assert prepared.pixel_values.shape == (2 * tiles, 3, 336, 336)
    first, second = prepared.pack_index
    assert np.array_equal(first < 0, second < 0)
    assert np.array_equal(second[second >= 0], first[first >= 0] + tiles * 576)


def test_explain_draws_anyres_builds(pipeline):
    """transprune-explain covers each image's own token count: the base tile and the canvas it saw,
    each stage's kept tokens those of the generation (test_explain_next.py checks the drawing)."""
    from transprune.runtime.explain import explain

    image = sample_image(width=330, height=1000)
    explanation = explain(pipeline, image, PROMPT, max_new_tokens=1)
    generation = pipeline.generate(image, PROMPT, max_new_tokens=1)
    assert explanation.n_image == generation.image_tokens[0]
    assert [s.kept for s in explanation.stages] == generation.kept
    assert [v.picture.shape for v in explanation.views] == [(336, 336, 3), (1008, 336, 3)]


def test_run_cli_reports_each_images_counts(next_build, tmp_path, capsys):
    from transprune.cli.run import main

    path = tmp_path / "tall.png"
    sample_image(width=330, height=1000).save(path)
    assert main([str(next_build[0]), "--image", str(path), "--prompt", PROMPT, "--max-new-tokens", "3",
                 "--json"]) == 0
    import json

    document = json.loads(capsys.readouterr().out)
    n = document["image_tokens"][0]
    assert 576 < n < 2928 and document["image_tokens"][1:] == [int(n * 0.875), int(n * 0.625), int(n * 0.125)]
