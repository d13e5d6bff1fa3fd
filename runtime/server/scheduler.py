"""The generation queue: a bounded queue of jobs and one worker thread that forms batches and runs
them on the pipeline, streaming every sample's text to its own job.

There is one model in memory and it runs one generation at a time (a ``Pipeline`` serialises
them), so the worker is the only thread that generates. It takes the oldest job, waits up to
``batch_wait_s`` (from that job's arrival) for more jobs that can share its batch, and runs up to
``max_batch`` of them as one ``Pipeline.token_steps`` batch. Jobs share a batch when:

- their images give the same number of image tokens (LLaVA-NeXT's count follows the image size);
- they decode alike: greedy jobs together; unseeded sampled jobs of equal temperature and top_p
  together; a job with a ``seed`` alone, since a batch draws its random numbers from one generator
  in sample order, and the same seed must give the same answer whatever else is queued;
- the longest prompt plus the largest ``max_tokens`` fits the model's positions.

Greedy answers do not depend on the batch (prompts are left-padded and masked; checked by the
tests against ``Pipeline.generate``). The batch generates up to its largest ``max_tokens``; each
sample stops at its own ``max_tokens``, EOS or stop string, and its job gets its answer at once.
When every sample of the batch is finished or cancelled (the client went away, or timed out), the
generation is closed, which stops it and frees the pipeline for the next batch.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from transprune.errors import TransPruneError

from .errors import INTERNAL, RATE_LIMIT, UNAVAILABLE, ApiError
from .metrics import Metrics
from .stops import StopText

log = logging.getLogger("transprune.serve")
_ids = itertools.count(1)


@dataclass
class Completion:
    """A finished answer."""

    text: str
    tokens: list[int]  # generated ids (EOS included when reached)
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens)
    image_tokens: list[int]  # the image's tokens, then how many each prune kept
    kept: list[list[int]]  # per prune stage: kept image tokens (indices into the image's own tokens)
    prompt_tokens: int
    time_to_first_token_s: float | None
    batch_size: int


@dataclass(eq=False)
class Job:
    """One request's generation. ``emit(event)`` is called from the worker thread with
    ``("text", piece)``, then ``("done", Completion)`` or ``("error", ApiError)``."""

    prompt: str  # the whole text after the chat template, holding one image slot
    image: bytes
    image_tokens: int
    prompt_tokens: int
    max_tokens: int
    emit: Callable[[tuple], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    arrived: float = field(default_factory=time.monotonic)  # when the request came in (TTFT counts from here)
    name: str = field(default_factory=lambda: f"job-{next(_ids)}")
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None
    queued_at: float = 0.0

    def cancel(self, reason: str) -> None:
        """Stops this job's generation at the next token (or drops it from the queue). Any thread."""
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()

    @property
    def batch_key(self) -> tuple:
        if self.temperature == 0.0:
            return (self.image_tokens, "greedy")
        if self.seed is not None:
            return (self.image_tokens, "seeded", self.name)  # a batch of its own
        return (self.image_tokens, "sampled", self.temperature, self.top_p)


class _Sample:
    """One job's side of a running batch."""

    def __init__(self, job: Job, row: int) -> None:
        self.job, self.row = job, row  # row: the sample's index in the batch
        self.tokens: list[int] = []
        self.received = ""  # the pipeline's text pieces so far
        self.text = StopText(job.stop)
        self.done = False
        self.first_at: float | None = None
        self.last_at: float | None = None


class Scheduler:
    def __init__(self, pipeline, *, max_batch: int, max_queue: int, batch_wait_s: float,
                 metrics: Metrics | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or batch_wait_s < 0:
            raise TransPruneError(f"max_batch {max_batch} and max_queue {max_queue} must be >= 1 and batch_wait_s "
                                  f"{batch_wait_s} >= 0")
        self.pipeline = pipeline
        self.max_batch, self.max_queue, self.batch_wait_s = max_batch, max_queue, batch_wait_s
        self.metrics = metrics or Metrics()
        self.eos = pipeline.build.eos_token_id
        self.max_total_tokens = pipeline.max_total_tokens
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running = 0
        self._stopping = False
        self._batch_seconds = 1.0  # running mean of recent batches, for Retry-After
        self._thread = threading.Thread(target=self._work, name="transprune-generate", daemon=True)

    # -- the request side (event loop threads) ---------------------------------------------------

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    @property
    def stopping(self) -> bool:
        return self._stopping

    def submit(self, job: Job) -> None:
        """Queues ``job``; a full queue is a 429 with Retry-After, a stopping server a 503."""
        with self._cond:
            self._drop_cancelled()  # jobs whose clients left or timed out no longer hold places
            if self._stopping:
                raise ApiError(503, "the server is shutting down; send the request to another instance",
                               type=UNAVAILABLE)
            if len(self._queue) >= self.max_queue:
                batches_ahead = len(self._queue) / self.max_batch + 1
                wait = max(1, math.ceil(self._batch_seconds * batches_ahead))
                raise ApiError(429, f"the server's queue is full ({self.max_queue} requests waiting, --max-queue); "
                                    f"retry after {wait} s", type=RATE_LIMIT, code="queue_full",
                               headers={"Retry-After": str(wait)})
            job.queued_at = time.monotonic()
            self._queue.append(job)
            self._cond.notify_all()

    def stop(self, *, timeout: float | None = None) -> bool:
        """Finishes every queued and running job, then ends the worker; False if it is still busy
        after ``timeout`` seconds. New jobs are refused from now on."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.monotonic()
            try:
                self._generate(batch)
            except BaseException:  # never let the one worker die: every later request would hang
                log.exception("generation failed")
                self._fail(batch, ApiError(500, "internal error while generating; the server logged the traceback",
                                           type=INTERNAL))
            finally:
                with self._cond:
                    self._running = 0
                    self._batch_seconds = 0.7 * self._batch_seconds + 0.3 * (time.monotonic() - started)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                self._drop_cancelled()
                if not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                head = self._queue[0]
                batch = self._compatible(head)
                remaining = head.queued_at + self.batch_wait_s - time.monotonic()
                if len(batch) < self.max_batch and remaining > 0 and not self._stopping:
                    self._cond.wait(remaining)  # more may come; the loop looks again
                    continue
                for job in batch:
                    self._queue.remove(job)
                self._running = len(batch)
                return batch

    def _compatible(self, head: Job) -> list[Job]:
        """``head`` and the queued jobs that can share its batch, oldest first, up to max_batch."""
        batch, longest, most = [], 0, 0
        for job in self._queue:
            if len(batch) == self.max_batch:
                break
            if job.batch_key != head.batch_key:
                continue
            if max(longest, job.prompt_tokens) + max(most, job.max_tokens) > self.max_total_tokens:
                continue  # together they would not fit the positions; it waits for the next batch
            batch.append(job)
            longest, most = max(longest, job.prompt_tokens), max(most, job.max_tokens)
        return batch

    def _drop_cancelled(self) -> None:
        for job in [job for job in self._queue if job.cancelled.is_set()]:
            self._queue.remove(job)
            self._cancelled(job, tokens=0)

    def _cancelled(self, job: Job, *, tokens: int) -> None:
        self.metrics.cancel(job.cancel_reason or "cancelled")
        log.info("%s cancelled (%s) after %d generated tokens", job.name, job.cancel_reason, tokens)

    def _generate(self, jobs: list[Job]) -> None:
        self.metrics.batch(len(jobs))
        first = jobs[0]
        steps = self.pipeline.token_steps(
            [job.image for job in jobs], [job.prompt for job in jobs], raw_prompt=True,
            max_new_tokens=max(job.max_tokens for job in jobs),
            temperature=first.temperature, top_p=first.top_p, seed=first.seed)
        samples = [_Sample(job, row) for row, job in enumerate(jobs)]
        try:
            for row, piece, token in steps:
                sample = samples[row]
                if token is not None and not sample.done:
                    self._push(sample, piece, token, len(jobs))
                for other in samples:
                    if not other.done and other.job.cancelled.is_set():
                        other.done = True
                        self._cancelled(other.job, tokens=len(other.tokens))
                if all(s.done for s in samples):
                    break
        except Exception as exc:  # noqa: BLE001 - every job of the batch must get an answer
            steps.close()
            unfinished = [s for s in samples if not s.done]
            for sample in unfinished:
                sample.done = True
            if not isinstance(exc, TransPruneError):
                log.exception("generation failed")
                self._fail([s.job for s in unfinished], ApiError(
                    500, "internal error while generating; the server logged the traceback", type=INTERNAL))
            elif len(jobs) > 1 and not any(s.tokens for s in samples):
                # one job's input the pipeline refused (checked earlier, so rare): the others still run
                log.warning("a batch of %d failed (%s); running its jobs one by one", len(jobs), exc)
                for job in jobs:  # a batch of one that fails answers 400 (the branch below): no deeper
                    if job.cancelled.is_set():
                        self._cancelled(job, tokens=0)
                    else:
                        self._generate([job])
            else:
                self._fail([s.job for s in unfinished], ApiError(400, str(exc)))
            return
        finally:
            steps.close()  # stops the generation and releases the pipeline
        for sample in samples:  # the pipeline stopped before a sample's own end (EOS, limit): never expected
            if not sample.done:
                self._finish(sample, "length", len(jobs))

    def _push(self, sample: _Sample, piece: str, token: int, batch_size: int) -> None:
        now = time.monotonic()
        job = sample.job
        if sample.first_at is None:
            sample.first_at = now
            self.metrics.first_token(now - job.arrived)
        else:
            self.metrics.next_token(now - sample.last_at)
        sample.last_at = now
        sample.tokens.append(token)
        sample.received += piece
        out = sample.text.push(piece)
        if out:
            job.emit(("text", out))
        if sample.text.stopped:
            self._finish(sample, "stop", batch_size)
        elif token == self.eos:
            self._finish(sample, "stop", batch_size)
        elif len(sample.tokens) >= job.max_tokens:
            self._finish(sample, "length", batch_size)

    def _finish(self, sample: _Sample, reason: str, batch_size: int) -> None:
        sample.done = True
        job = sample.job
        if not sample.text.stopped:
            # the stream holds back a split character until it completes; the whole decode has it
            whole = self.pipeline.prompts.decode(sample.tokens)
            rest = whole[len(sample.received):] if whole.startswith(sample.received) else ""
            out = sample.text.finish(rest)
            if out:
                job.emit(("text", out))
            if sample.text.stopped:
                reason = "stop"
        stages = self.pipeline.last_stages  # this thread's batch, set once prefill is done
        row = sample.row
        completion = Completion(
            text=sample.text.text, tokens=list(sample.tokens), finish_reason=reason,
            image_tokens=[job.image_tokens, *(int(stage.keep) for stage in stages)],
            kept=[stage.kept[row].tolist() for stage in stages], prompt_tokens=job.prompt_tokens,
            time_to_first_token_s=None if sample.first_at is None else sample.first_at - job.arrived,
            batch_size=batch_size)
        self.metrics.completion(prompt_tokens=job.prompt_tokens, completion_tokens=len(sample.tokens),
                                finish_reason=reason, image_tokens=completion.image_tokens)
        job.emit(("done", completion))

    def _fail(self, jobs: list[Job], error: ApiError) -> None:
        for job in jobs:
            try:
                job.emit(("error", error))
            except Exception:  # noqa: BLE001 - a job whose listener is gone
                log.debug("could not deliver an error to %s", job.name)
