"""Double-buffered, pooled KV cache memory: what the onnxruntime and TensorRT backends share.

Why two buffers: a segment graph returns ``present = concat(past, new)``. Fed naively, every
decoded token allocates a fresh copy of every layer's whole cache. Instead each cache part (a
segment's past key or value input) owns two flat buffers sized for the whole generation (prompt +
new tokens); a call reads ``past`` from one and the backend binds ``present`` straight into the
other (by pointer), then the two swap. Nothing is allocated per token.

Why a pool: the buffers outlive a generation. They are keyed by (segment index, past input name,
side), grown (never shrunk) when a generation needs more, and reused by every later generation
that fits in them. A cache of an earlier generation may therefore share memory with the current
one, which is why the backends refuse to run a cache whose ``generation`` is not theirs.

The backends differ only in what a buffer is: an onnxruntime ``OrtValue`` (host or CUDA memory,
sized in elements) or a TensorRT device allocation (sized in bytes). They pass in how to allocate
one, read its size and release it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from .backend import KVCache
from .build import SegmentInfo

Buffer = TypeVar("Buffer")
PoolKey = tuple[int, str, int]  # (segment index, past input name, side 0 or 1)


class KVBufferPool(Mapping[PoolKey, Buffer], Generic[Buffer]):
    """The cache buffers of one backend, a read-only mapping ``PoolKey -> buffer``.

    ``allocate(size)`` makes a buffer of at least ``size`` (in the backend's unit), ``size_of``
    reads a buffer's size, ``release`` frees one that is outgrown or cleared (default: drop the
    reference and let the buffer's owner free it).
    """

    def __init__(self, *, allocate: Callable[[int], Buffer], size_of: Callable[[Buffer], int],
                 release: Callable[[Buffer], None] | None = None) -> None:
        self._allocate, self._size_of = allocate, size_of
        self._release = release if release is not None else (lambda buffer: None)
        self._buffers: dict[PoolKey, Buffer] = {}

    def buffer(self, key: PoolKey, size: int) -> Buffer:
        """The buffer for ``key``, of at least ``size``: the pooled one when it is big enough."""
        buffer = self._buffers.get(key)
        if buffer is None or self._size_of(buffer) < size:
            if buffer is not None:  # release the old one before allocating: never hold both
                del self._buffers[key]
                self._release(buffer)
                buffer = None
            buffer = self._allocate(size)
            self._buffers[key] = buffer
        return buffer

    def segment_buffers(self, segment: SegmentInfo, size: int) -> dict[str, list[Buffer]]:
        """{past input name: [side 0, side 1]} for one segment's cache, every buffer at least ``size``."""
        return {past: [self.buffer((segment.index, past, side), size) for side in (0, 1)]
                for past, _ in segment.kv}

    def clear(self) -> None:
        """Releases every buffer (the backend is closing)."""
        buffers, self._buffers = self._buffers, {}
        for buffer in buffers.values():
            self._release(buffer)

    def __getitem__(self, key: PoolKey) -> Buffer:
        return self._buffers[key]

    def __iter__(self) -> Iterator[PoolKey]:
        return iter(self._buffers)

    def __len__(self) -> int:
        return len(self._buffers)


class DoubleBufferedCache(KVCache):
    """A segment's cache in pool buffers: two flat buffers per cache part. The valid
    ``[B, H, length, E]`` cache lives at the start of the read side; a call writes
    ``[B, H, length + new, E]`` to the other side, which then becomes the read side (``flip``)."""

    def __init__(self, segment: SegmentInfo, batch: int, capacity: int, buffers: dict[str, list],
                 generation: int) -> None:
        super().__init__(segment, batch, capacity, generation)
        self.buffers, self.reading = buffers, 0  # past name -> [side 0, side 1]; the side read next

    def sides(self, past: str):
        """(read side, write side) of the cache part fed as ``past``."""
        pair = self.buffers[past]
        return pair[self.reading], pair[1 - self.reading]

    def flip(self) -> None:
        """After a call: what was written is read next."""
        self.reading = 1 - self.reading
