"""The scheduler in-process on the tiny paper build (no HTTP): which jobs share a batch, that a
batched answer is the unbatched one (greedy, and seeded sampling), per-job limits and stop strings
inside one batch, cancellation, the bounded queue, draining, and one bad job in a batch."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("starlette", reason="the server needs the serve extra: pip install -e '.[serve]'")

from transprune.runtime.pipeline import Pipeline  # noqa: E402
from transprune.runtime.server.errors import ApiError  # noqa: E402
from transprune.runtime.server.metrics import Metrics  # noqa: E402
from transprune.runtime.server.scheduler import Job, Scheduler  # noqa: E402

from .serving import PROMPTS, noise_png  # noqa: E402

IMAGES = [noise_png(64, 48, 1), noise_png(40, 90, 2), noise_png(300, 200, 3)]


class Events:
    """A job's ``emit``: collects the events the worker thread sends."""

    def __init__(self) -> None:
        self.items: list[tuple] = []
        self.finished = threading.Event()
        self.first_text = threading.Event()

    def __call__(self, event: tuple) -> None:
        self.items.append(event)
        if event[0] == "text":
            self.first_text.set()
        else:
            self.finished.set()

    @property
    def text(self) -> str:
        return "".join(value for kind, value in self.items if kind == "text")

    @property
    def result(self):
        assert self.finished.wait(60), "the job was never answered"
        kind, value = self.items[-1]
        assert kind == "done", value
        return value


@pytest.fixture(scope="module")
def pipeline(paper_build):
    with Pipeline.from_dir(paper_build[0], threads=1) as pipeline:
        yield pipeline


def make_job(pipeline, image: bytes, prompt: str, **options) -> tuple[Job, Events]:
    text = pipeline.prompts.render(prompt)
    events = Events()
    job = Job(prompt=text, image=image, image_tokens=pipeline.build.n_image,
              prompt_tokens=len(pipeline.prompts.encode(text, raw=True)),
              max_tokens=options.pop("max_tokens", 6), emit=events, **options)
    return job, events


def scheduler(pipeline, **options) -> Scheduler:
    settings = {"max_batch": 8, "max_queue": 16, "batch_wait_s": 0.0, **options}
    return Scheduler(pipeline, metrics=Metrics(), **settings)


def run_all(sched: Scheduler, jobs) -> None:
    """Queues every job before the worker starts (so batches form from all of them), then drains."""
    for job, _ in jobs:
        sched.submit(job)
    sched.start()
    assert sched.stop(timeout=120), "the worker did not finish"


def test_compatible_jobs_share_a_batch_and_each_gets_its_unbatched_answer(pipeline):
    greedy = [make_job(pipeline, IMAGES[i % 3], PROMPTS[i], max_tokens=n) for i, n in enumerate((3, 6, 6, 9))]
    seeded = make_job(pipeline, IMAGES[0], PROMPTS[1], temperature=0.9, seed=3, max_tokens=6)
    sampled = [make_job(pipeline, IMAGES[i], PROMPTS[0], temperature=0.8, max_tokens=4) for i in (1, 2)]
    sched = scheduler(pipeline)
    run_all(sched, [*greedy, seeded, *sampled])
    for (job, events), index in zip(greedy, range(4)):
        reference = pipeline.generate(IMAGES[index % 3], PROMPTS[index], max_new_tokens=job.max_tokens)
        done = events.result
        assert done.tokens == reference.tokens and done.kept == reference.kept
        assert done.text == reference.text == events.text  # the streamed pieces join to the answer
        assert (done.batch_size, done.finish_reason, done.image_tokens) == (4, "length", reference.image_tokens)
        assert done.prompt_tokens == len(reference.input_ids)
    alone = pipeline.generate(IMAGES[0], PROMPTS[1], max_new_tokens=6, temperature=0.9, seed=3)
    assert seeded[1].result.tokens == alone.tokens and seeded[1].result.batch_size == 1
    assert [events.result.batch_size for _, events in sampled] == [2, 2]
    assert sched.metrics.batch_size.count == 3 and sched.metrics.ttft.count == 7
    assert sched.metrics.completion_tokens == 3 + 6 + 6 + 9 + 6 + 4 + 4


def test_a_stop_string_ends_its_own_sample_and_the_streamed_text_matches(pipeline):
    reference = pipeline.generate(IMAGES[1], PROMPTS[3], max_new_tokens=12)
    words = reference.text.split()
    stop = words[len(words) // 2]
    expected = reference.text[:reference.text.index(stop)]
    stopped = make_job(pipeline, IMAGES[1], PROMPTS[3], max_tokens=12, stop=(stop,))
    other = make_job(pipeline, IMAGES[2], PROMPTS[0], max_tokens=12)
    run_all(scheduler(pipeline), [stopped, other])
    done = stopped[1].result
    assert done.text == expected == stopped[1].text and done.finish_reason == "stop"
    assert done.tokens == reference.tokens[:len(done.tokens)] and len(done.tokens) < 12
    assert other[1].result.tokens == pipeline.generate(IMAGES[2], PROMPTS[0], max_new_tokens=12).tokens


def test_a_cancelled_job_stops_its_generation_and_a_queued_one_is_dropped(pipeline):
    sched = scheduler(pipeline, max_batch=1).start()
    running, events = make_job(pipeline, IMAGES[0], PROMPTS[0], max_tokens=1400)
    queued, queued_events = make_job(pipeline, IMAGES[1], PROMPTS[1], max_tokens=5)
    sched.submit(running)
    sched.submit(queued)
    assert events.first_text.wait(30)
    queued.cancel("timeout")
    started = time.monotonic()
    running.cancel("disconnect")
    assert sched.stop(timeout=30)
    assert time.monotonic() - started < 3  # 1400 tokens take about 5 s here; it stopped at the next one
    assert not events.finished.is_set() and queued_events.items == []
    assert sched.metrics.cancelled == {"disconnect": 1, "timeout": 1}
    assert 0 < sum(kind == "text" for kind, _ in events.items) < 1400


def test_a_full_queue_refuses_with_429_and_retry_after_and_a_stopped_one_with_503(pipeline):
    sched = scheduler(pipeline, max_queue=2)
    for _ in range(2):
        sched.submit(make_job(pipeline, IMAGES[0], PROMPTS[0])[0])
    with pytest.raises(ApiError) as caught:
        sched.submit(make_job(pipeline, IMAGES[0], PROMPTS[0])[0])
    assert caught.value.status == 429 and int(caught.value.headers["Retry-After"]) >= 1
    assert "queue is full" in caught.value.message and "--max-queue" in caught.value.message
    sched.start()
    assert sched.stop(timeout=60)  # drains the two queued jobs first
    assert sched.queue_depth == 0
    with pytest.raises(ApiError) as caught:
        sched.submit(make_job(pipeline, IMAGES[0], PROMPTS[0])[0])
    assert caught.value.status == 503


def test_jobs_that_would_not_fit_the_positions_together_are_not_batched(pipeline):
    sched = scheduler(pipeline)  # not started: batches are taken by hand
    short, _ = make_job(pipeline, IMAGES[0], PROMPTS[0], max_tokens=pipeline.max_total_tokens - 600)
    long_prompt, _ = make_job(pipeline, IMAGES[0], "word " * 700, max_tokens=8)
    small, _ = make_job(pipeline, IMAGES[0], PROMPTS[2], max_tokens=8)
    assert long_prompt.prompt_tokens + short.max_tokens > pipeline.max_total_tokens
    for job in (short, long_prompt, small):
        sched.submit(job)
    assert sched._next_batch() == [short, small]
    assert sched._next_batch() == [long_prompt]


def test_a_job_the_pipeline_refuses_fails_alone_and_its_batch_is_answered(pipeline):
    bad, bad_events = make_job(pipeline, b"GIF89a but not really an image", PROMPTS[0])
    good = [make_job(pipeline, IMAGES[i], PROMPTS[i]) for i in (0, 1)]
    run_all(scheduler(pipeline), [good[0], (bad, bad_events), good[1]])
    assert bad_events.finished.is_set()
    kind, error = bad_events.items[-1]
    assert kind == "error" and error.status == 400 and "not an image" in error.message
    for (job, events), i in zip(good, (0, 1)):
        assert events.result.tokens == pipeline.generate(IMAGES[i], PROMPTS[i], max_new_tokens=6).tokens
