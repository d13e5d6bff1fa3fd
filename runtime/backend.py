"""The one small interface every backend implements, and the registry that opens them by name.

A backend runs a build's graphs by name on numpy feeds (``run``) and owns the KV caches of the
segments (``new_cache`` / ``run_segment``), because where a cache lives and how it grows is the
backend's business: onnxruntime keeps preallocated buffers bound by pointer, TensorRT device
buffers, the torch reference plain tensors. The chain loop above never touches cache memory.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator

import numpy as np

from transprune.errors import TransPruneError

from .build import Build, SegmentInfo


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container's limit, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def check_threads(threads) -> int:
    """``threads`` if it is a thread count this machine can use; more threads than cores only make
    each one wait (100,000 hung the process while creating them)."""
    cores = usable_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise TransPruneError(f"threads {threads!r} must be an integer from 1 to {cores} (the cores this process "
                              f"may use); leave it unset to use them all")
    return threads


class KVCache:
    """One segment's keys and values: ``length`` positions cached so far, room for ``capacity``."""

    def __init__(self, segment: SegmentInfo, batch: int, capacity: int, generation: int = 0) -> None:
        self.segment, self.batch, self.capacity, self.length = segment, batch, capacity, 0
        self.generation = generation


class ArrayCache(KVCache):
    """The plain cache (the torch reference backend): the prompt block and the generated block as
    arrays of exactly their length, each decode call's new keys/values appended on the host;
    simple, and a copy per call."""

    def __init__(self, segment: SegmentInfo, batch: int, capacity: int, float_type) -> None:
        super().__init__(segment, batch, capacity)
        empty = np.zeros((batch, segment.kv_heads, 0, segment.head_dim), dtype=float_type)
        self.blocks = {name: empty for past, gen, _ in segment.kv for name in (past, gen)}


class Backend:
    """Runs one build's graphs. Subclasses implement ``run``; caches default to ``ArrayCache``."""

    name = "?"

    def __init__(self, build: Build) -> None:
        self.build = build
        self.generation = 0  # caches remember the generation they belong to
        # One generation at a time: its caches live in buffers that the next generation reuses.
        self._generating = threading.Lock()
        self._holder: int | None = None  # the thread inside ``exclusive``

    @property
    def held_by_this_thread(self) -> bool:
        return self._holder == threading.get_ident()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Holds the backend for one generation; other threads wait their turn. The thread that
        already holds it (an unfinished stream) is refused instead: waiting would never end."""
        if self.held_by_this_thread:  # only this thread ever writes its own id, so the read is safe
            raise TransPruneError("this thread has an unfinished stream on this pipeline, which holds it until the "
                                  "stream ends; exhaust the stream or call its close() before starting another "
                                  "generation")
        with self._generating:
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None

    def start_generation(self) -> None:
        """Called before a prefill: caches of earlier generations may no longer be used (their
        memory may be reused by this one)."""
        self.generation += 1

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs graph ``graph`` on ``feeds`` (extra feeds are ignored) -> {output name: array}."""
        raise NotImplementedError

    def new_cache(self, segment: SegmentInfo, *, batch: int, capacity: int) -> KVCache:
        return ArrayCache(segment, batch, capacity, self.build.float_type)

    def run_segment(self, segment: SegmentInfo, feeds: dict[str, np.ndarray], cache: KVCache) -> dict:
        """Runs a segment on ``feeds`` (hidden, position_ids, attention_mask) over ``cache``, which
        grows by the new tokens; returns the other outputs (hidden_out, and ttv where it has one)."""
        out = self.run(segment.name, {**feeds, **cache.blocks})
        for past, gen, new in segment.kv:
            block = past if cache.length == 0 else gen  # prefill's output is the prompt block
            cache.blocks[block] = np.concatenate([cache.blocks[block], np.asarray(out.pop(new))], axis=2)
        cache.length += feeds["hidden"].shape[1]
        return out

    def close(self) -> None:
        """Releases sessions and memory; the backend is unusable afterwards."""


def _onnxruntime(build: Build, **options) -> Backend:
    from .ort_backend import OrtBackend

    return OrtBackend(build, **options)


def _tensorrt(build: Build, **options) -> Backend:
    from .tensorrt.backend import TrtBackend

    return TrtBackend(build, **options)


class ReferenceBackend(Backend):
    """``--backend torch``: the build's graphs computed by the PyTorch reference
    (``transprune.graph_reference``, in the core), loaded from the checkpoint the build was
    exported from (or ``checkpoint``), in fp32. The runtime holds no torch code of its own."""

    name = "torch"

    def __init__(self, build: Build, *, checkpoint=None, threads: int | None = None) -> None:
        try:
            from transprune.graph_reference import open_reference_graphs
        except ImportError:
            raise TransPruneError("the torch backend needs PyTorch and transformers (pip install "
                                  "'transprune[export]'); the onnxruntime backend needs neither") from None
        super().__init__(build)
        self.graphs = open_reference_graphs(build, checkpoint=checkpoint,
                                            threads=None if threads is None else check_threads(threads))

    def run(self, graph: str, feeds: dict) -> dict:
        return self.graphs.run(graph, feeds)


def _torch(build: Build, **options) -> Backend:
    return ReferenceBackend(build, **options)


BACKENDS: dict[str, Callable[..., Backend]] = {"onnxruntime": _onnxruntime, "tensorrt": _tensorrt, "torch": _torch}


def open_backend(name: str, build: Build, **options) -> Backend:
    """The backend called ``name`` for ``build``; options go to its constructor."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise TransPruneError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}") from None
    return factory(build, **options)
