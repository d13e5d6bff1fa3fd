"""Seeded random fp16 tensors written as safetensors shards, streaming: nothing bigger than a few
chunk buffers is ever in memory (:mod:`.synthetic_streamed` plans the tensors of a checkpoint).

The safetensors files are written by hand (the format is a length-prefixed JSON header followed
by the raw tensor bytes), because ``safetensors.save_file`` needs every tensor of a shard in memory
at once; each tensor is generated chunk by chunk and its bytes appended.

Random numbers come from ``torch.Generator``: numpy's own float32 -> float16 cast runs at ~70 ns
per element here (no hardware path), which would take ~8 minutes for 7B, while torch fills an fp16
buffer directly at ~4 ns per element. Each tensor gets its own generator, seeded from (seed, tensor
index). The same arguments give byte-identical files (with the same torch version).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

# Elements per generated chunk: 32 MB of fp16. Three such buffers are in flight at most (one
# being filled, two queued for the disk), so weights never take more than ~100 MB of memory.
CHUNK = 16 << 20
N_BUFFERS = 3

GB = 1e9  # decimal, as transformers' "2GB" shard sizes and `df -H`


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    """One tensor of the checkpoint: where it goes and how its values are drawn."""

    name: str
    shape: tuple[int, ...]
    init: str  # "normal", "ones" or "zeros"
    std: float  # for "normal"
    index: int  # position in the checkpoint: seeds this tensor's generator

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 2 * self.numel  # fp16


# --------------------------------------------------------------------------------------------
# Shards


def plan_shards(tensors: list[TensorPlan], shard_bytes: int) -> list[list[TensorPlan]]:
    """Fill shards greedily in order; a tensor bigger than a shard gets one of its own."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    """save_pretrained's file names: one file unsharded, else model-0000i-of-0000n."""
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


# --------------------------------------------------------------------------------------------
# Writing


def safetensors_header(tensors: list[TensorPlan]) -> bytes:
    """The safetensors prefix: u64 little-endian header length, then the JSON header.

    Offsets are relative to the end of the header and must tile the data exactly, in the order
    the bytes are written. The JSON is padded with spaces to a multiple of 8 so the data that
    follows is aligned (the safetensors library does the same).
    """
    header: dict = {"__metadata__": {"format": "pt"}}  # "pt": transformers checks for it
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": "F16", "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


class ChunkWriter:
    """Appends fp16 buffers to a file on a second thread.

    Generating a chunk and writing one both release the GIL, so with the write in the
    background the disk and the random number generator work at the same time. Buffers are
    recycled round-robin; a buffer is handed out again only once its last write has finished.
    """

    def __init__(self) -> None:
        import torch

        self._buffers = [torch.empty(CHUNK, dtype=torch.float16) for _ in range(N_BUFFERS)]
        self._pending: list[Future | None] = [None] * N_BUFFERS
        self._next = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")

    def buffer(self):
        """A free buffer (waits for its previous write; re-raises that write's error)."""
        i = self._next
        if self._pending[i] is not None:
            self._pending[i].result()
            self._pending[i] = None
        return self._buffers[i]

    def write(self, f, n: int) -> None:
        """Queue the first ``n`` elements of the buffer last returned by ``buffer()``."""
        i = self._next
        data = self._buffers[i][:n].numpy()  # a view: no copy
        self._pending[i] = self._pool.submit(f.write, data)
        self._next = (i + 1) % N_BUFFERS

    def drain(self) -> None:
        """Wait for every queued write (before closing or seeking the file)."""
        for i, fut in enumerate(self._pending):
            if fut is not None:
                self._pending[i] = None
                fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def tensor_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for tensor ``index``: hashed, so --seed 1 is not --seed 0 shifted."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def _write_tensor(f, t: TensorPlan, seed: int, writer: ChunkWriter) -> None:
    """Append the bytes of ``t`` to ``f``, chunk by chunk (tests replace this to inject errors)."""
    import torch

    gen = torch.Generator().manual_seed(tensor_seed(seed, t.index))
    left = t.numel
    while left:
        n = min(left, CHUNK)
        buf = writer.buffer()[:n]
        if t.init == "normal":
            buf.normal_(0.0, t.std, generator=gen)
        else:
            buf.fill_(1.0 if t.init == "ones" else 0.0)
        writer.write(f, n)
        left -= n


class Progress:
    """Tensors and GB written, on one stderr line (a TTY) or a line per shard (a log)."""

    def __init__(self, n_tensors: int, total_bytes: int) -> None:
        self.n_tensors, self.total = n_tensors, total_bytes
        self.tensors = self.bytes = 0
        self.start = self._last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def _line(self) -> str:
        rate = self.bytes / GB / max(time.monotonic() - self.start, 1e-9)
        return (f"{self.tensors}/{self.n_tensors} tensors, {self.bytes / GB:.2f}/"
                f"{self.total / GB:.2f} GB, {rate:.2f} GB/s")

    def tensor_done(self, t: TensorPlan) -> None:
        self.tensors += 1
        self.bytes += t.nbytes
        now = time.monotonic()
        if self.tty and now - self._last > 0.2:
            self._last = now
            print(f"\r  {self._line()}", end="", file=sys.stderr, flush=True)

    def shard_done(self, name: str) -> None:
        prefix = "\r" if self.tty else ""
        print(f"{prefix}  wrote {name}: {self._line()}", file=sys.stderr, flush=True)


def write_weights(out: Path, tensors: list[TensorPlan], *, seed: int, shard_bytes: int,
                  progress: Progress) -> None:
    """Write the safetensors shards (and the index when there are several) into ``out``."""
    shards = plan_shards(tensors, shard_bytes)
    names = shard_names(len(shards))
    writer = ChunkWriter()
    try:
        for name, shard in zip(names, shards):
            header = safetensors_header(shard)
            with open(out / name, "wb") as f:
                f.write(header)
                for t in shard:
                    _write_tensor(f, t, seed, writer)
                    progress.tensor_done(t)
                writer.drain()
                expected = len(header) + sum(t.nbytes for t in shard)
                if f.tell() != expected:  # a short write would make an unreadable shard
                    raise OSError(f"{name}: wrote {f.tell()} bytes, expected {expected}")
            progress.shard_done(name)
    finally:
        writer.close()
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: name for name, shard in zip(names, shards) for t in shard},
        }
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

