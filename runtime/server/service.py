"""What the HTTP layer serves: one pipeline, its scheduler and metrics, and the step from a checked
request to a queued :class:`~.scheduler.Job` (prompt rendered and counted, image decoded and
checked), where every problem with the input becomes a 400/413 before it reaches the queue.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transprune.errors import TransPruneError

from ..chat_template import ChatTemplate
from ..image_loading import MAX_IMAGE_BYTES, ImageError, load_image
from ..pipeline import Pipeline
from ..prompt import PromptError
from .chat import Conversations
from .errors import invalid
from .metrics import Metrics
from .scheduler import Job, Scheduler
from .schema import ChatRequest

TEXT_BYTES = 1 << 20  # room for the conversation's text and JSON around the image in a request body


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits and batching (the CLI's flags)."""

    max_batch: int = 8
    max_queue: int = 64
    batch_wait_ms: float = 10.0
    request_timeout_s: float = 300.0
    max_image_bytes: int = 20 << 20
    default_max_tokens: int = 256
    decode_workers: int = 2  # images decoded at once (each may take hundreds of MB while decoding)
    model_name: str | None = None

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: the image in base64 (4 characters per 3 bytes) plus text."""
        return (self.max_image_bytes + 2) // 3 * 4 + TEXT_BYTES

    def check(self) -> None:
        for name in ("max_batch", "max_queue", "default_max_tokens", "decode_workers"):
            if getattr(self, name) < 1:
                raise TransPruneError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise TransPruneError(f"--batch-wait-ms {self.batch_wait_ms} must be from 0 to 10000")
        if not self.request_timeout_s > 0:
            raise TransPruneError(f"--request-timeout-s {self.request_timeout_s} must be > 0")
        if not 1 <= self.max_image_bytes <= MAX_IMAGE_BYTES:
            raise TransPruneError(f"--max-image-bytes {self.max_image_bytes} must be from 1 to {MAX_IMAGE_BYTES} "
                                  f"(the runtime's own limit for image data)")


class Service:
    def __init__(self, pipeline: Pipeline, settings: ServeSettings, *, model_name: str | None = None) -> None:
        settings.check()
        self.pipeline, self.settings = pipeline, settings
        build = pipeline.build
        self.model_name = model_name or settings.model_name or Path(build.directory).name
        self.conversations = Conversations(pipeline.prompts, ChatTemplate.from_manifest(build.manifest))
        self.metrics = Metrics(queue_depth=lambda: self.scheduler.queue_depth, running=lambda: self.scheduler.running)
        self.scheduler = Scheduler(pipeline, max_batch=settings.max_batch, max_queue=settings.max_queue,
                                   batch_wait_s=settings.batch_wait_ms / 1e3, metrics=self.metrics)
        self._decoding = threading.BoundedSemaphore(settings.decode_workers)
        self._check_size = None if build.anyres else pipeline.images.settings.check_image_size
        self.started = time.time()

    @classmethod
    def open(cls, build_dir: str | Path, settings: ServeSettings, *, backend: str = "onnxruntime",
             verify: bool = True, **backend_options) -> "Service":
        return cls(Pipeline.from_dir(build_dir, backend=backend, verify=verify, **backend_options), settings)

    def start(self) -> None:
        self.scheduler.start()

    def close(self, *, timeout: float | None = None) -> bool:
        """Finishes the queued and running jobs (new ones are refused), then releases the model."""
        drained = self.scheduler.stop(timeout=timeout)
        if drained:
            self.pipeline.close()
        return drained

    def prepare(self, request: ChatRequest, emit: Callable[[tuple], None], *, arrived: float) -> Job:
        """The request as a job, or an ApiError. Blocking (image decoding, tokenising): run it in a
        worker thread, not on the event loop."""
        try:
            return self._prepare(request, emit, arrived)
        except TransPruneError as exc:  # any other refusal of the runtime's is about this request's input
            raise invalid(str(exc), "messages") from None

    def _prepare(self, request: ChatRequest, emit: Callable[[tuple], None], arrived: float) -> Job:
        prompt = self.conversations.render(request.messages)
        image_tokens = self._image_tokens(request.image)
        try:
            prompt_tokens = len(self.pipeline.prompts.encode(prompt, raw=True, image_tokens=image_tokens))
        except PromptError as exc:
            raise invalid(str(exc), "messages") from None
        left = self.pipeline.max_total_tokens - prompt_tokens
        if left < 1:
            raise invalid(f"the prompt is {prompt_tokens} tokens (image included), which fills the model's "
                          f"{self.pipeline.max_total_tokens} positions; shorten the conversation", "messages")
        if request.max_tokens is None:
            max_tokens = min(self.settings.default_max_tokens, left)
        elif request.max_tokens > left:
            raise invalid(f"max_tokens {request.max_tokens} is more than the {left} positions the model has left "
                          f"after the prompt's {prompt_tokens} tokens (of {self.pipeline.max_total_tokens}); send "
                          f"at most {left}", "max_tokens")
        else:
            max_tokens = request.max_tokens
        return Job(prompt=prompt, image=request.image, image_tokens=image_tokens, prompt_tokens=prompt_tokens,
                   max_tokens=max_tokens, emit=emit, temperature=request.temperature, top_p=request.top_p,
                   seed=request.seed, stop=request.stop, arrived=arrived)

    def _image_tokens(self, data: bytes) -> int:
        """Decodes the image once to check it (the worker decodes it again: the queue holds bytes,
        which are bounded by --max-image-bytes, not pixels) -> the image tokens it gives."""
        with self._decoding:
            try:
                image = load_image(data, check_size=self._check_size)
                size = (image.height, image.width)
                del image
                count = self.pipeline.images.count(size)
                self.pipeline.build.check_image_tokens(count)
            except TransPruneError as exc:  # ImageError, or a size this build cannot take
                kind = "the image cannot be used" if isinstance(exc, ImageError) else "the image does not fit"
                raise invalid(f"{kind}: {exc}", "messages") from None
        return count
