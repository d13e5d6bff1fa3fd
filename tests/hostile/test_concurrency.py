"""Issue 19, case 3: threads sharing one ``Pipeline`` got wrong answers (a check-then-run race on
the shared cache buffers). A ``Pipeline`` now serialises its generations: any number of threads may
call it, each gets exactly the answer a single-threaded run gives; the one thing refused is
starting a generation on a thread whose own unfinished stream still holds the pipeline."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from transprune.runtime.pipeline import Pipeline

from .conftest import assert_one_line_message

PROMPTS = ["What is in the picture?", "Describe the colours.", "Is there a cat?", "Count the shapes."]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (40 + 30 * i, 50 + 20 * i, 3), dtype=np.uint8)) for i in range(3)]


def _requests():
    images = _images()
    return [(images[i % len(images)], PROMPTS[i % len(PROMPTS)], {"temperature": 0.8, "seed": i} if i % 3 == 2
             else {}) for i in range(8)]


@pytest.fixture(scope="module")
def reference(paper_build):
    build, _ = paper_build
    with Pipeline.from_dir(build, threads=1) as pipeline:
        answers = [pipeline.generate(image, prompt, max_new_tokens=6, **options).tokens
                   for image, prompt, options in _requests()]
    assert len({tuple(a) for a in answers}) > 1, "the requests must give different answers to show a mix-up"
    return answers


def test_threads_sharing_one_pipeline_get_the_single_threaded_answers(paper_build, reference):
    build, _ = paper_build
    requests = _requests()
    wrong, errors = [], []
    with Pipeline.from_dir(build, threads=1) as pipeline:
        def work(worker: int) -> None:
            for round_ in range(6):
                index = (worker + round_) % len(requests)
                image, prompt, options = requests[index]
                try:
                    if round_ % 2:
                        text = "".join(pipeline.stream(image, prompt, max_new_tokens=6, **options))
                        if text != pipeline.prompts.decode(reference[index]):
                            wrong.append((worker, index, text))
                    else:
                        tokens = pipeline.generate(image, prompt, max_new_tokens=6, **options).tokens
                        if tokens != reference[index]:
                            wrong.append((worker, index, tokens))
                except Exception as exc:  # noqa: BLE001 - every error counts as a failure here
                    errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert errors == [] and wrong == []


def test_an_unfinished_stream_on_the_same_thread_refuses_a_second_generation(paper_build, reference):
    build, _ = paper_build
    image, prompt, options = _requests()[0]
    with Pipeline.from_dir(build, threads=1) as pipeline:
        stream = pipeline.stream(image, prompt, max_new_tokens=6)
        next(stream)
        with pytest.raises(Exception) as caught:
            pipeline.generate(image, prompt, max_new_tokens=6)
        assert_one_line_message(caught.value, "unfinished stream", "close")
        stream.close()  # closing the stream frees the pipeline
        assert pipeline.generate(image, prompt, max_new_tokens=6).tokens == reference[0]


def test_an_abandoned_stream_frees_the_pipeline_for_other_threads(paper_build, reference):
    build, _ = paper_build
    image, prompt, _ = _requests()[0]
    with Pipeline.from_dir(build, threads=1) as pipeline:
        stream = pipeline.stream(image, prompt, max_new_tokens=6)
        next(stream)
        del stream  # dropped half-way: the generator is closed and releases the pipeline
        answers = []
        thread = threading.Thread(target=lambda: answers.append(pipeline.generate(image, prompt,
                                                                                  max_new_tokens=6).tokens))
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive() and answers == [reference[0]]


def test_last_stages_belong_to_the_calling_thread(paper_build):
    build, _ = paper_build
    requests = _requests()
    seen = {}
    with Pipeline.from_dir(build, threads=1) as pipeline:
        def work(index: int) -> None:
            image, prompt, _ = requests[index]
            generation = pipeline.generate(image, prompt, max_new_tokens=2)
            seen[index] = ([s.kept[0].tolist() for s in pipeline.last_stages], generation.kept)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(seen) == 3 and all(stages == kept for stages, kept in seen.values())


def test_a_closed_pipeline_refuses_to_generate(paper_build):
    build, _ = paper_build
    image, prompt, _ = _requests()[0]
    pipeline = Pipeline.from_dir(build, threads=1)
    pipeline.close()
    pipeline.close()  # twice is harmless
    with pytest.raises(Exception) as caught:
        pipeline.generate(image, prompt, max_new_tokens=2)
    assert_one_line_message(caught.value, "closed")
