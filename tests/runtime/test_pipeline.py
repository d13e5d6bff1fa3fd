"""The torch-free Pipeline on the tiny paper build: same ids and pixels as the HF processor, same
tokens as the torch backend and as the independent PyTorch reference, stops, streaming, buffers."""

from __future__ import annotations

import numpy as np
import pytest

from transprune.errors import TransPruneError

LONG_PROMPT = " ".join(f"Look at part {i} of the picture and say which colour it has." for i in range(24))
PROMPTS = ["Hi", "What is shown in this picture?", LONG_PROMPT]


@pytest.fixture(scope="module")
def pipelines(paper_build, tiny_checkpoint):
    from transprune.runtime.pipeline import Pipeline

    build_dir, _ = paper_build
    ort = Pipeline.from_dir(build_dir)
    torch = Pipeline.from_dir(build_dir, backend="torch", checkpoint=tiny_checkpoint)
    yield ort, torch
    ort.close()
    torch.close()


@pytest.fixture(scope="module")
def images():
    from transprune.sample_image import sample_images

    return sample_images()


def test_prompt_lengths_span_1_to_over_200_text_tokens(pipelines):
    ort, _ = pipelines
    lengths = [len(ort.prompts.tokenizer.encode(p, add_special_tokens=False).ids) for p in PROMPTS]
    assert lengths[0] == 1 and lengths[-1] >= 200


def test_ids_and_pixels_equal_the_hf_processor(pipelines, tiny_model, images):
    from transprune.reference import encode_inputs
    from transprune.runtime.image_loading import load_image
    from transprune.runtime.preprocess import preprocess

    ort, _ = pipelines
    expected = encode_inputs(tiny_model.processor, images[:3], PROMPTS)
    ours = ort.prompts.encode_batch(PROMPTS)
    np.testing.assert_array_equal(ours.input_ids, expected["input_ids"].numpy())
    np.testing.assert_array_equal(ours.attention_mask, expected["attention_mask"].numpy())
    pixels = preprocess([load_image(i) for i in images[:3]], ort.images.settings)
    assert np.array_equal(pixels, expected["pixel_values"].numpy())


CASES = {
    "short prompt, greedy": ([0], ["Hi"], {}),
    "question, greedy": ([1], [PROMPTS[1]], {}),
    "over 200 text tokens, greedy": ([2], [LONG_PROMPT], {}),
    "seeded sampling": ([0], [PROMPTS[1]], {"temperature": 0.9, "top_p": 0.9, "seed": 7}),
    "batch of two": ([0, 2], [LONG_PROMPT, "Hi"], {}),
    "batch of two, sampled": ([1, 2], ["Hi", PROMPTS[1]], {"temperature": 1.2, "seed": 3}),
}


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_gives_the_torch_backends_tokens(pipelines, images, case):
    picks, prompts, options = CASES[case]
    ort, torch = pipelines
    batch = [images[i] for i in picks]
    ours = ort.generate_batch(batch, prompts, max_new_tokens=8, **options)
    theirs = torch.generate_batch(batch, prompts, max_new_tokens=8, **options)
    for mine, ref in zip(ours, theirs):
        assert mine.input_ids == ref.input_ids
        assert mine.tokens == ref.tokens and len(mine.tokens) == 8
        assert mine.kept == ref.kept
        assert mine.text == ref.text


def test_the_pipeline_equals_the_independent_reference(pipelines, tiny_model, images):
    """End to end against code that shares nothing with the runtime but the sampler: the HF
    processor's inputs through TransPruneReference (its own prefill, pruning and decode)."""
    from transprune.reference import TransPruneReference, encode_inputs
    from transprune.schedule import preset

    ort, _ = pipelines
    prompts = [PROMPTS[1], LONG_PROMPT]
    inputs = encode_inputs(tiny_model.processor, images[:2], prompts)
    reference = TransPruneReference(tiny_model.model, preset("paper")).generate(
        inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], max_new_tokens=10)
    ours = ort.generate_batch(images[:2], prompts, max_new_tokens=10)
    assert [r.tokens for r in ours] == reference.tokens
    for stage, record in enumerate(reference.records):
        assert [r.kept[stage] for r in ours] == record.kept.tolist()
    real = inputs["attention_mask"].bool()
    assert [r.input_ids for r in ours] == [inputs["input_ids"][b][real[b]].tolist() for b in range(2)]


def test_kept_are_sorted_original_image_indices_of_each_stage(pipelines, images):
    ort, _ = pipelines
    result = ort.generate(images[0], PROMPTS[1], max_new_tokens=1)
    assert [len(k) for k in result.kept] == ort.image_tokens[1:] == [504, 360, 72]
    for before, after in zip([list(range(576)), *result.kept], result.kept):
        assert after == sorted(after) and set(after) <= set(before)


def test_eos_stops_its_sample_and_not_the_others(pipelines, images):
    ort, _ = pipelines
    greedy = ort.generate_batch(images[:2], ["Hi", PROMPTS[1]], max_new_tokens=6)
    stop = greedy[0].tokens[2]
    assert stop not in greedy[1].tokens, "pick a token only the first sample produces"
    saved, ort.build.eos_token_id = ort.build.eos_token_id, stop
    try:
        stopped = ort.generate_batch(images[:2], ["Hi", PROMPTS[1]], max_new_tokens=6)
    finally:
        ort.build.eos_token_id = saved
    first = greedy[0].tokens.index(stop)
    assert stopped[0].tokens == greedy[0].tokens[:first + 1] and stopped[0].finish_reason == "eos"
    assert stopped[1].tokens == greedy[1].tokens and stopped[1].finish_reason == "length"


def test_streamed_pieces_join_to_the_generated_text(pipelines, images):
    ort, _ = pipelines
    pieces = list(ort.stream(images[1], PROMPTS[1], max_new_tokens=12))
    assert len(pieces) > 1
    assert "".join(pieces) == ort.generate(images[1], PROMPTS[1], max_new_tokens=12).text


def test_text_stream_holds_back_split_characters(pipelines):
    from transprune.runtime.prompt import TextStream

    ort, _ = pipelines
    ids = ort.prompts.tokenizer.encode("Tokyo 東京 👋 ok", add_special_tokens=False).ids
    stream = TextStream(ort.prompts)
    pieces = [stream.push(t) for t in ids] + [stream.flush()]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == ort.prompts.decode(ids) == "Tokyo 東京 👋 ok"


def test_timings_name_every_graph_and_the_decode_rate(pipelines, images):
    ort, _ = pipelines
    timings = ort.generate(images[0], "Hi", max_new_tokens=4).timings
    for graph in ["vision", "embed", "prefill_inputs", "head", *(f"segment_{i}" for i in range(4)),
                  *(f"scorer_{i}" for i in range(3))]:
        assert timings[graph] > 0, graph
    assert timings["decode_steps"] == 3 and timings["decode_per_token"] > 0
    assert timings["prefill_total"] >= timings["segment_0"]


def test_cache_buffers_are_allocated_once_and_reused(pipelines, images):
    """No whole-cache allocation per token: one flat buffer per cache, made at prefill, and the
    same ones serve later generations that fit."""
    ort, _ = pipelines
    backend = ort.backend
    ort.generate(images[0], PROMPTS[1], max_new_tokens=6)
    first = {key: id(buffer) for key, buffer in backend._pool.items()}
    pointers = {key: buffer.ctypes.data for key, buffer in backend._pool.items()}
    ort.generate(images[1], "Hi", max_new_tokens=4)  # shorter: fits in the same buffers
    assert {key: id(buffer) for key, buffer in backend._pool.items()} == first
    assert {key: buffer.ctypes.data for key, buffer in backend._pool.items()} == pointers
    assert len(first) == 2 * 14  # one buffer for each key and value of each of the 14 layers


def test_bound_caches_hold_what_plain_feeding_gives(paper_build, images):
    """The pointer-bound caches (one buffer each: the prompt block written in place by prefill, the
    generated block filled slot by slot, its empty slots masked) give the logits and hold the
    keys/values of the plain host loop, which feeds both blocks at their exact length."""
    from transprune.runtime.backend import Backend
    from transprune.runtime.build import Build
    from transprune.runtime.chain import Chain
    from transprune.runtime.ort_backend import OrtBackend
    from transprune.runtime.pipeline import Pipeline
    from transprune.runtime.preprocess import preprocess

    class PlainOrt(OrtBackend):
        new_cache = Backend.new_cache
        run_segment = Backend.run_segment

    build = Build.open(paper_build[0])
    pipeline = Pipeline(build, OrtBackend(build))
    encoded = pipeline.prompts.encode_batch(["Hi", PROMPTS[1]])
    pixels = preprocess(images[:2], pipeline.images.settings)
    runs = []
    for backend in (pipeline.backend, PlainOrt(build)):
        chain = Chain(build, backend)
        logits, _, state = chain.prefill(encoded.input_ids, encoded.attention_mask, pixels, max_new_tokens=5)
        steps = [logits]
        for _ in range(3):
            steps.append(chain.decode_step(state, steps[-1].argmax(-1)))
        runs.append((steps, state))
    (bound_steps, bound), (plain_steps, plain) = runs
    np.testing.assert_array_equal(bound_steps[0], plain_steps[0])  # prefill: the same call
    for a, b in zip(bound_steps[1:], plain_steps[1:]):
        # masked slots weigh exactly 0, but a longer reduction may sum in another order
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for bound_cache, plain_cache in zip(bound.caches, plain.caches):
        arrays = bound_cache.arrays()
        assert bound_cache.length == plain_cache.length == 4 + bound_cache.prompt - 1
        for past, gen, _ in bound_cache.segment.kv:
            joined = np.concatenate([plain_cache.blocks[past], plain_cache.blocks[gen]], axis=2)
            np.testing.assert_allclose(arrays[past], joined, rtol=1e-5, atol=1e-5)


def test_a_generation_during_an_unfinished_stream_is_refused_and_the_stream_goes_on(pipelines, images):
    ort, _ = pipelines
    whole = ort.generate(images[0], PROMPTS[1], max_new_tokens=8).text
    stream = ort.stream(images[0], PROMPTS[1], max_new_tokens=8)
    first = next(stream)
    with pytest.raises(TransPruneError, match="unfinished stream"):
        ort.generate(images[1], "Hi", max_new_tokens=2)
    assert first + "".join(stream) == whole  # the refusal did not touch the stream's caches


def test_prompt_errors_name_the_problem_and_the_fix(pipelines, images):
    from transprune.runtime.prompt import PromptError

    ort, _ = pipelines
    with pytest.raises(PromptError, match="contains the image slot '<image>'.*leave it out"):
        ort.generate(images[0], "Look: <image>", max_new_tokens=1)
    with pytest.raises(PromptError, match="needs exactly one image slot '<image>'.*has 0"):
        ort.generate(images[0], "USER: no image here ASSISTANT:", raw_prompt=True, max_new_tokens=1)
    with pytest.raises(PromptError, match="empty"):
        ort.generate(images[0], "  ", max_new_tokens=1)
    with pytest.raises(PromptError, match=r"exceed the model's 2048 positions; lower max_new_tokens to at most \d+"):
        ort.generate(images[0], "Hi", max_new_tokens=2000)
    saved, ort.prompts.max_text_tokens = ort.prompts.max_text_tokens, 20
    try:
        with pytest.raises(PromptError, match="text tokens after the chat template.*at most 20.*--max-text-tokens"):
            ort.generate(images[0], LONG_PROMPT, max_new_tokens=1)
    finally:
        ort.prompts.max_text_tokens = saved


def test_a_raw_prompt_with_the_template_text_gives_the_same_answer(pipelines, images):
    ort, _ = pipelines
    chat = ort.prompts.chat
    raw = ort.generate(images[0], chat["before"] + PROMPTS[1] + chat["after"], raw_prompt=True, max_new_tokens=5)
    templated = ort.generate(images[0], PROMPTS[1], max_new_tokens=5)
    assert raw.input_ids == templated.input_ids and raw.tokens == templated.tokens


def test_the_torch_backend_refuses_a_checkpoint_of_another_model(paper_build, tiny_checkpoint):
    import copy

    from transprune.runtime.build import Build
    from transprune.runtime.backend import ReferenceBackend

    build = Build.open(paper_build[0])
    manifest = copy.deepcopy(build.manifest)
    manifest["model"]["facts"]["hidden_size"] = 4096
    with pytest.raises(TransPruneError, match="not the model this build was exported from.*hidden_size.*--checkpoint"):
        ReferenceBackend(Build.from_manifest(paper_build[0], manifest), checkpoint=tiny_checkpoint)
