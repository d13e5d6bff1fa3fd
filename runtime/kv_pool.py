"""Pooled KV cache memory, one buffer per cache part: what the onnxruntime and TensorRT backends share.

A segment graph reads a layer's cache as two blocks, the prompt's keys/values (``past_*``,
[B, Hkv, P, E]) and the generated tokens' (``gen_*``, [B, Hkv, G, E]), and returns only the new
tokens' (``new_*``, [B, Hkv, S, E]); attention runs over the blocks and the new tokens without
concatenating them (export/modules.py). So each cache part (a layer's key or value) owns one
buffer, sized at prefill for the whole generation, holding both blocks one after the other:

* prefill reads empty blocks and writes its output, the prompt's keys/values, straight into the
  start of the buffer (bound by pointer: no copy), which is then the prompt block;
* the rest of the buffer is the generated block, with a slot for every token to be generated;
  each decode step reads both blocks in place (the attention mask marks the generated slots not
  written yet) and the backend writes the step's new keys/values into the next slot (one strided
  copy of one position per cache).

The former graphs returned ``present = concat(past, new)``, which copied every cache on every
token into a second buffer of the same size: twice the KV memory and traffic.

Why a pool: the buffers outlive a generation. They are keyed by (segment index, past input name),
grown (never shrunk) when a generation needs more, and reused by every later generation that fits
in them. A cache of an earlier generation may therefore share memory with the current one, which
is why the backends refuse to run a cache whose ``generation`` is not theirs. A buffer is zeroed
when allocated: slots not written yet are masked, but must hold no NaN (``0 * NaN`` is NaN).

The backends differ only in what a buffer is: a numpy array or an onnxruntime ``OrtValue``
(sized in elements) or a TensorRT device allocation (sized in bytes). They pass in how to allocate
one, read its size and release it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

import numpy as np

from transprune.errors import TransPruneError

from .backend import KVCache
from .build import SegmentInfo

Buffer = TypeVar("Buffer")
PoolKey = tuple[int, str]  # (segment index, past input name)


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

    def segment_buffers(self, segment: SegmentInfo, size: int) -> dict[str, Buffer]:
        """{past input name: buffer} for one segment's cache, every buffer at least ``size``."""
        return {past: self.buffer((segment.index, past), size) for past, _, _ in segment.kv}

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


class AppendCache(KVCache):
    """A segment's cache in pool buffers, one per cache part: the prompt block [B, Hkv, P, E] at
    the start (written by prefill), then the generated block [B, Hkv, G, E] (G = capacity - P),
    whose first ``length - P`` slots are written. ``itemsize``: bytes per cached value."""

    def __init__(self, segment: SegmentInfo, batch: int, capacity: int, buffers: dict, generation: int,
                 itemsize: int) -> None:
        super().__init__(segment, batch, capacity, generation)
        self.buffers, self.itemsize = buffers, itemsize  # past name -> buffer
        self.prompt = 0  # P, set by the prefill call

    @property
    def generated_room(self) -> int:
        return self.capacity - self.prompt

    def block_shapes(self, new: int) -> tuple[tuple, tuple]:
        """Shapes of the (prompt, generated) blocks a call with ``new`` tokens reads: both empty at prefill."""
        batch, heads, dim = self.batch, self.segment.kv_heads, self.segment.head_dim
        if self.length == 0:
            return (batch, heads, 0, dim), (batch, heads, 0, dim)
        return (batch, heads, self.prompt, dim), (batch, heads, self.generated_room, dim)

    def generated_offset(self) -> int:
        """Elements from a buffer's start to its generated block."""
        return self.batch * self.segment.kv_heads * self.prompt * self.segment.head_dim

    def append_rows(self, count: int) -> dict:
        """Where a call's ``count`` new positions ([B, Hkv, count, E], contiguous) go in a buffer, as
        one strided copy in bytes: each of the B * Hkv rows of ``count * E`` values lands at the
        next free slot of its row of the generated block (``runtime.device_copy.copy_2d``'s
        arguments, with ``offset`` from the buffer's start)."""
        dim, item = self.segment.head_dim, self.itemsize
        return {"offset": (self.generated_offset() + (self.length - self.prompt) * dim) * item,
                "dst_pitch": self.generated_room * dim * item, "src_pitch": count * dim * item,
                "width": count * dim * item, "height": self.batch * self.segment.kv_heads}

    def check_room(self, new: int) -> None:
        if self.length + new > self.capacity:
            raise TransPruneError(f"{self.segment.name}: {self.length + new} cached positions exceed the "
                                  f"{self.capacity} allocated for this generation")

    def written(self, new: int) -> None:
        """After a call: prefill's output is the prompt block; later calls filled generated slots."""
        if self.length == 0:
            self.prompt = new
        self.length += new


def buffer_mask(cache: AppendCache, key_mask: np.ndarray, new: int) -> np.ndarray:
    """The attention mask of a decode call over ``cache``'s two blocks: [B, P + G + new].

    ``key_mask`` is the chain's [B, length + new] mask (1: a real token, 0: left padding); the
    generated block's slots not written yet get 0."""
    batch, length, prompt = key_mask.shape[0], cache.length, cache.prompt
    if key_mask.shape[1] != length + new:
        raise TransPruneError(f"{cache.segment.name}: the attention mask covers {key_mask.shape[1]} positions, the "
                              f"cache holds {length} and the call brings {new}")
    end = prompt + cache.generated_room
    mask = np.zeros((batch, end + new), dtype=np.int64)
    mask[:, :length] = key_mask[:, :length]
    mask[:, end:] = key_mask[:, length:]
    return mask
