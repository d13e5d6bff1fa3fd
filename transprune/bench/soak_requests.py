"""The soak benchmark's requests and the check of its answers (:mod:`.soak` runs them).

Every request is an (image, prompt, decoding) of :data:`IMAGES` x :data:`PROMPTS` x {greedy,
sampled}; every answer is compared with the request's reference answer, and a :class:`Tally`
counts the wrong answers and exceptions of one phase.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import traceback
from pathlib import Path

import numpy as np

from .export_and_runtime import open_pipeline

PROMPTS = (
    "Describe the picture in detail: what is in it, the colours, and where everything is.",
    "What is in this image?",
    "Is there a house? Answer in one word, then explain why.",
)
MAX_DETAILS = 20  # wrong answers and exceptions recorded in full per phase (all are counted)


# -- the requests --------------------------------------------------------------------------------

def noise_image(width: int, height: int, seed: int):
    """Seeded uniform RGB noise."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def shapes_image(width: int, height: int, seed: int):
    """Seeded geometry: a checkerboard under concentric rings and a diagonal band, colours from the seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(4, 3)).astype(np.float64)
    y, x = np.mgrid[0:height, 0:width]
    img = np.where((((x // 24) + (y // 24)) % 2 == 0)[..., None], colours[0], colours[1])
    r = np.hypot(x - width * 0.6, y - height * 0.4)
    img = np.where((((r // 18) % 2 == 0) & (r < min(width, height) * 0.35))[..., None], colours[2], img)
    img = np.where((np.abs(x - y * width / height) < width * 0.05)[..., None], colours[3], img)
    return Image.fromarray(img.astype(np.uint8))


def _sample(width: int, height: int, seed: int):
    from transprune.sample_image import sample_image

    return sample_image(width=width, height=height, seed=seed)


# (name, make, width, height, seed): the pictures every request is made of
IMAGES = (
    ("scene 480x360", _sample, 480, 360, 0),  # transprune.sample_image's default picture
    ("scene 300x500", _sample, 300, 500, 1),
    ("noise 640x480", noise_image, 640, 480, 7),
    ("shapes 256x256", shapes_image, 256, 256, 11),
)


@dataclasses.dataclass(frozen=True)
class Request:
    index: int
    name: str  # "<image> | prompt <p> | greedy" or "... | sampled seed <s>"
    image: object  # PIL image, shared read-only by every thread
    prompt: str
    temperature: float
    seed: int | None

    def options(self, new_tokens: int) -> dict:
        return {"max_new_tokens": new_tokens, "temperature": self.temperature, "seed": self.seed}

    def describe(self) -> dict:
        return {"index": self.index, "name": self.name, "image": self.name.split(" | ")[0],
                "image_size": list(self.image.size), "prompt": self.prompt, "temperature": self.temperature,
                "seed": self.seed}


def make_requests(temperature: float) -> list[Request]:
    """Every image x prompt x {greedy, sampled at ``temperature`` with a seed of its own}."""
    requests = []
    for name, make, width, height, seed in IMAGES:
        image = make(width, height, seed)
        for p, prompt in enumerate(PROMPTS):
            for sampled in (False, True):
                index = len(requests)
                request_seed = 1000 + index if sampled else None
                label = f"{name} | prompt {p} | " + (f"sampled seed {request_seed}" if sampled else "greedy")
                requests.append(Request(index, label, image, prompt, temperature if sampled else 0.0, request_seed))
    return requests


# -- answers and their check ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Answer:
    tokens: list[int] | None  # None for a streamed answer (only its text is known)
    text: str


def open_runtime(build: Path, threads: int):
    """A Pipeline on ``build`` with EOS ignored, so every answer is exactly ``new_tokens`` long."""
    pipeline = open_pipeline(build, threads=threads)
    pipeline.build.eos_token_id = None
    return pipeline


def answer(pipeline, request: Request, new_tokens: int, *, stream: bool = False) -> Answer:
    if stream:
        return Answer(None, "".join(pipeline.stream(request.image, request.prompt, **request.options(new_tokens))))
    result = pipeline.generate(request.image, request.prompt, **request.options(new_tokens))
    return Answer(list(result.tokens), result.text)


def mismatch(got: Answer, want: Answer) -> str | None:
    """Why ``got`` is not the reference answer ``want`` (None: it is). A streamed answer is judged by its text."""
    if got.tokens is not None and got.tokens != want.tokens:
        return f"tokens {got.tokens} != reference {want.tokens}"
    if got.text != want.text:
        return f"text {got.text!r} != reference {want.text!r}"
    return None


class Tally:
    """Wrong answers and exceptions of one phase: every one counted, the first few recorded in full.
    Thread-safe (the thread phases share one)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked = self.wrong = self.exceptions = 0
        self.wrong_details: list[dict] = []
        self.by_error: collections.Counter = collections.Counter()
        self.error_details: list[dict] = []
        self.wrong_by_request: collections.Counter = collections.Counter()

    def check(self, got: Answer, want: Answer, request: Request, where: dict) -> bool:
        why = mismatch(got, want)
        with self.lock:
            self.checked += 1
            if why is None:
                return True
            self.wrong += 1
            self.wrong_by_request[request.index] += 1
            if len(self.wrong_details) < MAX_DETAILS:
                self.wrong_details.append({**where, "request": request.index, "streamed": got.tokens is None,
                                           "why": why})
        return False

    def error(self, exc: BaseException, request: Request, where: dict) -> None:
        key = f"{type(exc).__name__}: {str(exc)[:300]}"
        with self.lock:
            self.exceptions += 1
            self.by_error[key] += 1
            if len(self.error_details) < MAX_DETAILS:
                self.error_details.append({**where, "request": request.index, "error": key,
                                           "traceback": traceback.format_exc(limit=8)[-3000:]})

    def to_dict(self) -> dict:
        return {"checked": self.checked, "wrong": self.wrong, "exceptions": self.exceptions,
                "wrong_by_request": dict(sorted(self.wrong_by_request.items())),
                "errors": dict(self.by_error.most_common()), "wrong_details": self.wrong_details,
                "error_details": self.error_details}
