"""``Pipeline``: a build directory in, text out. The runtime's Python API, torch-free.

    pipeline = Pipeline.from_dir("exports/tiny-paper")
    result = pipeline.generate("photo.jpg", "What is in the picture?", max_new_tokens=32)
    result.text, result.kept, result.timings

    for piece in pipeline.stream("photo.jpg", "Describe it."):
        print(piece, end="", flush=True)

It opens and verifies the build, preprocesses images and prompts exactly as the model's processor
does, runs the chain on the chosen backend and decodes the tokens.

A ``Pipeline`` may be shared by threads: generations run one at a time (they reuse one set of
cache buffers), so concurrent calls wait their turn and each gets the answer it would get alone.
A stream holds the pipeline until it is exhausted or closed; starting another generation on the
thread that holds an unfinished stream is refused with an error instead of waiting forever.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from transprune.errors import TransPruneError
from transprune.sampling import Sampler

from .backend import Backend, open_backend
from .build import Build
from .chain import Chain
from .image_loading import load_image
from .inputs import ImageInputs
from .prompt import PromptEncoder, PromptError, TextStream


@dataclass
class Generation:
    """One (image, prompt) pair's result."""

    input_ids: list[int]  # the prompt ids after the chat template, image slot expanded
    tokens: list[int]  # generated ids (EOS included when reached)
    text: str
    kept: list[list[int]]  # per prune stage: kept image tokens as indices into the ORIGINAL image tokens
    image_tokens: list[int]  # the image's tokens, then how many each prune kept
    finish_reason: str  # "eos" or "length"
    timings: dict = field(default_factory=dict)  # milliseconds, shared by the batch it ran in

    def to_dict(self) -> dict:
        return asdict(self)


class Pipeline:
    def __init__(self, build: Build, backend: Backend) -> None:
        self.build, self.backend = build, backend
        self.prompts = PromptEncoder(build)
        self.images = ImageInputs(build)
        self.max_total_tokens = int(build.limits["max_total_tokens"])
        self._closed = False
        self._per_thread = threading.local()  # last_stages: each thread sees its own last generation's

    @classmethod
    def from_dir(cls, build_dir: str | Path, *, backend: str = "onnxruntime", verify: bool = True,
                 **backend_options) -> "Pipeline":
        """Opens ``build_dir`` (checksums verified unless ``verify=False``) on ``backend``
        (onnxruntime, tensorrt or torch); ``backend_options`` go to the backend (threads, provider,
        checkpoint)."""
        build = Build.open(Path(build_dir), verify=verify)
        return cls(build, open_backend(backend, build, **backend_options))

    @property
    def last_stages(self) -> list:
        """The StageResults (scores per prune stage) of this thread's last generation, for explain."""
        return getattr(self._per_thread, "stages", [])

    @property
    def image_tokens(self) -> list[int] | None:
        """Image tokens per stage: all of them, then what each prune keeps; None for anyres builds,
        where they follow each image's size (``Generation.image_tokens``)."""
        return None if self.build.anyres else [self.build.n_image, *self.build.keep_counts]

    def generate(self, image, prompt: str, **options) -> Generation:
        """Answers ``prompt`` about ``image`` (a path, bytes or a PIL image); options as ``generate_batch``."""
        return self.generate_batch([image], [prompt], **options)[0]

    def generate_batch(self, images: list, prompts: list[str], *, max_new_tokens: int = 64,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                       raw_prompt: bool = False,
                       on_text: Callable[[int, str], None] | None = None) -> list[Generation]:
        """Answers each (image, prompt) pair, in one batch. Greedy unless ``temperature`` > 0
        (then seeded top-p sampling). ``on_text(sample, piece)`` receives text as it is generated.

        LLaVA-NeXT images of different image-token counts cannot share a batch; they run as one batch
        per count, in the order of their first image, and the results come back in the given order."""
        if len(images) != len(prompts) or not images:
            raise PromptError(f"{len(images)} images and {len(prompts)} prompts: give one prompt per image")
        if self.build.anyres and len(images) > 1:
            # decoded once: grouping reads each image's size, preparing its pixels
            images = [load_image(image) for image in images]
        results: list = [None] * len(images)
        for group in self._equal_count_groups(images):
            run = self._run([images[i] for i in group], [prompts[i] for i in group], max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, seed=seed, raw_prompt=raw_prompt,
                            text_pieces=on_text is not None)
            while True:
                try:
                    sample, piece = next(run)
                except StopIteration as done:
                    for index, result in zip(group, done.value):
                        results[index] = result
                    break
                if on_text is not None and piece:
                    on_text(group[sample], piece)
        return results

    def _equal_count_groups(self, images: list) -> list[list[int]]:
        """Indices of ``images`` grouped by image-token count (one group unless anyres sizes differ);
        anyres batches arrive here as loaded (upright) images."""
        if not self.build.anyres or len(images) < 2:
            return [list(range(len(images)))]
        groups: dict[int, list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(self.images.count((image.height, image.width)), []).append(index)
        return list(groups.values())

    def stream(self, image, prompt: str, **options) -> Iterator[str]:
        """Yields the answer's text piece by piece as tokens are generated."""
        run = self._run([image], [prompt], **options)
        for _, piece in run:
            if piece:
                yield piece

    def token_steps(self, images: list, prompts: list[str], **options):
        """Generator for hosts that stop samples themselves (a server): yields ``(sample, text piece,
        token id)`` per generated token (EOS included when reached), then ``(sample, rest of the text,
        None)`` once per sample; returns the Generations. Options as ``generate_batch``.
        ``last_stages`` holds this generation's stage results once the first token is out, so a
        caller that closes the generator early still knows what was kept. Closing it stops the
        generation and releases the pipeline."""
        return self._run(images, prompts, token_ids=True, **options)

    def _run(self, images: list, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, raw_prompt: bool = False, text_pieces: bool = True,
             token_ids: bool = False):
        """Generator: yields (sample, text piece) while decoding, returns the Generations
        (``token_ids``: (sample, text piece, token id), see ``token_steps``).

        Without ``text_pieces`` the pieces are empty: detokenising every step costs time in the
        decode loop that nobody asked for. The backend is held from the first step to the last (or
        until the generator is closed or dropped): see the module docstring."""
        with self.backend.exclusive():
            if self._closed:
                raise TransPruneError("this pipeline is closed; open a new one with Pipeline.from_dir")
            return (yield from self._run_exclusive(images, prompts, max_new_tokens=max_new_tokens,
                                                   temperature=temperature, top_p=top_p, seed=seed,
                                                   raw_prompt=raw_prompt, text_pieces=text_pieces or token_ids,
                                                   token_ids=token_ids))

    def _run_exclusive(self, images: list, prompts: list[str], *, max_new_tokens: int, temperature: float,
                       top_p: float, seed: int | None, raw_prompt: bool, text_pieces: bool, token_ids: bool = False):
        if len(images) != len(prompts) or not images:
            raise PromptError(f"{len(images)} images and {len(prompts)} prompts: give one prompt per image")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise PromptError(f"max_new_tokens {max_new_tokens!r} must be a positive integer")
        sampler = Sampler(temperature=temperature, top_p=top_p, seed=seed)
        started = time.perf_counter()
        prepared = self.images.prepare(images)
        preprocessed = time.perf_counter()
        encoded = self.prompts.encode_batch(prompts, raw=raw_prompt, image_tokens=prepared.image_tokens)
        longest = int(encoded.attention_mask.sum(-1).max())
        if longest + max_new_tokens > self.max_total_tokens:
            raise PromptError(f"{longest} prompt tokens plus {max_new_tokens} new tokens exceed the model's "
                              f"{self.max_total_tokens} positions; lower max_new_tokens to at most "
                              f"{self.max_total_tokens - longest}")
        tokenized = time.perf_counter()
        chain = Chain(self.build, self.backend)
        eos = self.build.eos_token_id
        tokens: list[list[int]] = [[] for _ in images]
        streams = [TextStream(self.prompts) for _ in images]
        for picked, active, _ in chain.steps(encoded.input_ids, encoded.attention_mask, prepared.pixel_values,
                                             max_new_tokens=max_new_tokens, sampler=sampler, eos_token_id=eos,
                                             pack_index=prepared.pack_index):
            self._per_thread.stages = chain.stages  # set after prefill: token_steps' callers may stop early
            for sample, token in enumerate(picked.tolist()):
                if active[sample]:
                    tokens[sample].append(token)
                    piece = streams[sample].push(token) if text_pieces else ""
                    yield (sample, piece, token) if token_ids else (sample, piece)
        if text_pieces:
            for sample, stream in enumerate(streams):
                yield (sample, stream.flush(), None) if token_ids else (sample, stream.flush())
        self._per_thread.stages = chain.stages
        timings = {"preprocess": round((preprocessed - started) * 1e3, 3),
                   "tokenize": round((tokenized - preprocessed) * 1e3, 3), **chain.timings.to_dict()}
        results = []
        for sample, ids in enumerate(tokens):
            real = encoded.attention_mask[sample] > 0
            results.append(Generation(
                input_ids=encoded.input_ids[sample][real].tolist(), tokens=ids, text=self.prompts.decode(ids),
                kept=[stage.kept[sample].tolist() for stage in chain.stages],
                image_tokens=[prepared.image_tokens[sample], *(stage.keep for stage in chain.stages)],
                finish_reason="eos" if ids and ids[-1] == eos else "length", timings=timings))
        return results

    def close(self) -> None:
        """Releases the backend, after the generation another thread may be running."""
        if self.backend.held_by_this_thread:  # closed from inside this thread's own stream
            self._close_backend()
            return
        with self.backend.exclusive():
            self._close_backend()

    def _close_backend(self) -> None:
        if not self._closed:
            self._closed = True
            self.backend.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
