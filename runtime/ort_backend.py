"""The onnxruntime backend: one session per graph; segment KV caches in preallocated buffers.

Each cache part owns one buffer sized for the whole generation (``kv_pool`` says why, and is
shared with the TensorRT backend): prefill writes the prompt's keys/values straight into its start
(the output bound by pointer), each decode step reads both blocks in place and the backend writes
the step's new keys/values into the next generated slot. Nothing is allocated per token but the
new position's few values. Buffers are pooled and reused by later generations that fit in them. On
the CPU provider a buffer is a numpy array; on CUDA, a device OrtValue, written with one strided
device copy (``device_copy``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from transprune.errors import TransPruneError

from .backend import Backend, KVCache, check_threads
from .build import Build, SegmentInfo
from .kv_pool import AppendCache, KVBufferPool, buffer_mask

# the execution providers a user may pick, by short name, and the device their buffers live on
PROVIDERS = {"cpu": ("CPUExecutionProvider", "cpu"), "cuda": ("CUDAExecutionProvider", "cuda"),
             "tensorrt": ("TensorrtExecutionProvider", "cuda")}
# onnxruntime's MatMulNBits accuracy levels: 0 (unset: float), 1 fp32, 2 fp16, 3 bf16, 4 int8 activations
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, build: Build, *, threads: int | None = None, provider: str = "cpu",
                 int4_accuracy_level: int | None = None, cpu_arena: bool = False) -> None:
        """``cpu_arena``: give every session its own onnxruntime CPU arena (off by default, see
        below; for comparisons). ``int4_accuracy_level``: how onnxruntime's CPU kernel multiplies int4 weights (it fuses
        our DequantizeLinear + MatMul into its MatMulNBits): None keeps onnxruntime's default (4:
        activations rounded to int8 per block, the fastest); 0 computes in float, exactly the
        dequantized weights' math (what validation checks, and what TensorRT does)."""
        import onnxruntime as ort

        super().__init__(build)
        if provider not in PROVIDERS:
            raise TransPruneError(f"unknown onnxruntime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
        provider_name, self.device = PROVIDERS[provider]
        available = ort.get_available_providers()
        if provider_name not in available:
            raise TransPruneError(f"onnxruntime here has no {provider_name} (it has {', '.join(available)}); "
                                  f"install onnxruntime-gpu with a matching CUDA, or use --provider cpu")
        providers = [provider_name] if provider == "cpu" else [provider_name, "CPUExecutionProvider"]
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = check_threads(threads)
        options.log_severity_level = 3
        # A chain runs a dozen sessions one after another. Spinning threads of the session that just
        # finished would keep burning the cores the next session needs (measured on the bench model,
        # 2 cores: decode 186 -> 70 ms/token for the pruned chain of 4 segments).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # No per-session CPU arena: each session's arena keeps the peak it ever reached, so a chain
        # of eleven sessions holds the sum of their peaks where one at a time needs the largest.
        # Peak RSS of one 32-token generation, bench, 2 threads, fresh process: paper build 2,996
        # MiB with arenas against 2,458 unpruned; without, 2,124 against 2,233 (one arena shared
        # through the env allocator: 2,246 against 2,427).
        options.enable_cpu_mem_arena = cpu_arena
        if int4_accuracy_level is not None:
            if int4_accuracy_level not in INT4_ACCURACY_LEVELS:
                raise TransPruneError(f"int4 accuracy level {int4_accuracy_level!r} is not one of "
                                      f"{', '.join(map(str, INT4_ACCURACY_LEVELS))} (0: float math, 4: int8 activations)")
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(int4_accuracy_level))
        self.sessions, self.inputs, self.outputs = {}, {}, {}
        def open_session(graph):
            try:
                return ort.InferenceSession(str(graph.file), options, providers=providers)
            except Exception as exc:  # onnxruntime's Fail/InvalidGraph/InvalidProtobuf have no common base
                reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
                raise TransPruneError(f"graph {graph.name!r} ({graph.file.name}): onnxruntime cannot load it "
                                      f"({reason}); the file is damaged or not from this build: re-export or "
                                      f"copy the build again") from None

        # Sessions open side by side: onnxruntime reads and optimises a graph without the GIL, and
        # a chain's graphs are independent (bench paper build, 11 graphs, 2 cores: see ``_open_all``)
        graphs = list(build.graphs.values())
        for graph, session in zip(graphs, _open_all(open_session, graphs, workers=threads)):
            self.sessions[graph.name] = session
            found = sorted(i.name for i in session.get_inputs()), sorted(o.name for o in session.get_outputs())
            wanted = sorted(t.name for t in graph.inputs), sorted(t.name for t in graph.outputs)
            if found != wanted:
                raise TransPruneError(f"graph {graph.name!r}: the ONNX file's inputs/outputs {found} differ from the "
                                      f"manifest's {wanted}; re-export the build")
            # names read once here, not on every call in the decode loop
            self.inputs[graph.name] = frozenset(found[0])
            self.outputs[graph.name] = [o.name for o in session.get_outputs()]
        # the segment outputs that are not new keys/values, fetched after them in every call
        kv_outputs = {new for segment in build.segments for _, _, new in segment.kv}
        self.uncached = {name: [o for o in outputs if o not in kv_outputs] for name, outputs in self.outputs.items()}
        # (segment, past name) -> flat buffer of model-dtype values on the provider's device, sized
        # in elements (the closures hold no reference to the backend: no cycle keeps it alive)
        # Zeroed when allocated: unwritten slots are masked out of attention, but must not hold NaN
        # bits, which 0 * value would carry into the output (kv_pool)
        float_type = build.float_type
        new_buffer = self._new_buffer = lambda elements: np.zeros(max(elements, 1), dtype=float_type)
        from_numpy, device = ort.OrtValue.ortvalue_from_numpy, self.device
        new_value = self._new_device_value = lambda shape: from_numpy(np.zeros(shape, dtype=float_type), device, 0)
        if self.device == "cpu":
            self._pool = KVBufferPool(allocate=new_buffer, size_of=lambda buffer: buffer.size)
        else:
            self._pool = KVBufferPool(allocate=lambda elements: new_value([max(elements, 1)]),
                                      size_of=lambda buffer: buffer.shape()[0])

    def run(self, graph: str, feeds: dict) -> dict:
        wanted = self.inputs[graph]
        values = self.sessions[graph].run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in wanted})
        return dict(zip(self.outputs[graph], values))

    def new_cache(self, segment: SegmentInfo, *, batch: int, capacity: int) -> KVCache:
        elements = batch * segment.kv_heads * capacity * segment.head_dim
        return _BoundCache(segment, batch, capacity, self._pool.segment_buffers(segment, elements), self.generation,
                           np.dtype(self.build.float_type).itemsize)

    def run_segment(self, segment: SegmentInfo, feeds: dict, cache: "_BoundCache") -> dict:
        if cache.generation != self.generation:
            raise TransPruneError("this generation was superseded by a newer one on the same pipeline, which reuses "
                                  "its cache memory; finish one stream before starting the next")
        new = feeds["hidden"].shape[1]
        cache.check_room(new)
        prefill = cache.length == 0
        mask = feeds["attention_mask"] if prefill else buffer_mask(cache, feeds["attention_mask"], new)
        binding = self._prefill_binding(segment, cache, new) if prefill else self._decode_binding(segment, cache, new)
        for name, value in (("hidden", feeds["hidden"]), ("position_ids", feeds["position_ids"]),
                            ("attention_mask", mask)):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        self.sessions[segment.name].run_with_iobinding(binding)
        values = binding.get_outputs()  # in binding order: the new keys/values, then the others
        if not prefill:
            for past, _, new_name in segment.kv:
                cache.append(past, cache.scratch[new_name], new)
        cache.written(new)
        return {name: value.numpy() for name, value in zip(self.uncached[segment.name], values[len(segment.kv):])}

    def _prefill_binding(self, segment: SegmentInfo, cache: "_BoundCache", new: int):
        """Empty blocks in; the prompt's keys/values out, straight into the start of each buffer."""
        binding = self.sessions[segment.name].io_binding()
        empty = [cache.batch, segment.kv_heads, 0, segment.head_dim]
        new_shape = [cache.batch, segment.kv_heads, new, segment.head_dim]
        for past, gen, new_name in segment.kv:
            start = cache.pointer(past)
            binding.bind_input(past, self.device, 0, self.build.float_type, empty, start)
            binding.bind_input(gen, self.device, 0, self.build.float_type, empty, start)
            binding.bind_output(new_name, self.device, 0, self.build.float_type, new_shape, start)
        for name in self.uncached[segment.name]:
            binding.bind_output(name, "cpu")
        return binding

    def _decode_binding(self, segment: SegmentInfo, cache: "_BoundCache", new: int):
        """Both blocks in place, the new keys/values into small scratch tensors: the same pointers
        and shapes every step, so the binding is made once per generation and only the three
        per-token inputs are bound again."""
        if cache.decode_binding is not None and cache.decode_binding[0] == new:
            return cache.decode_binding[1]
        binding = self.sessions[segment.name].io_binding()
        dtype, device = self.build.float_type, self.device
        prompt_shape, generated_shape = cache.block_shapes(new)
        new_shape = [cache.batch, segment.kv_heads, new, segment.head_dim]
        cache.scratch = {}
        for past, gen, new_name in segment.kv:
            start = cache.pointer(past)
            binding.bind_input(past, device, 0, dtype, list(prompt_shape), start)
            binding.bind_input(gen, device, 0, dtype, list(generated_shape), start + cache.generated_offset_bytes())
            scratch = cache.scratch[new_name] = self._new_buffer(int(np.prod(new_shape))).reshape(new_shape) \
                if device == "cpu" else self._new_device_value(new_shape)
            binding.bind_output(new_name, device, 0, dtype, new_shape,
                                scratch.ctypes.data if device == "cpu" else scratch.data_ptr())
        for name in self.uncached[segment.name]:
            binding.bind_output(name, "cpu")
        cache.decode_binding = (new, binding)
        return binding

    def close(self) -> None:
        self.sessions.clear()
        self._pool.clear()


class _BoundCache(AppendCache):
    """One buffer per cache part (``kv_pool.AppendCache``): a flat numpy array on the CPU provider,
    a flat device OrtValue on CUDA."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.decode_binding = None  # (new tokens per call, the IOBinding every decode step reuses)
        self.scratch: dict = {}  # new output name -> where the decode binding writes it (numpy, or an OrtValue)

    def pointer(self, past: str) -> int:
        buffer = self.buffers[past]
        return buffer.ctypes.data if isinstance(buffer, np.ndarray) else buffer.data_ptr()

    def generated_offset_bytes(self) -> int:
        return self.generated_offset() * self.itemsize

    def _blocks(self, past: str) -> tuple[np.ndarray, np.ndarray]:
        """Numpy views of a CPU buffer's (prompt, generated) blocks."""
        batch, heads, dim = self.batch, self.segment.kv_heads, self.segment.head_dim
        buffer, offset = self.buffers[past], self.generated_offset()
        return (buffer[:offset].reshape(batch, heads, self.prompt, dim),
                buffer[offset:offset + batch * heads * self.generated_room * dim].reshape(
                    batch, heads, self.generated_room, dim))

    def append(self, past: str, new, count: int) -> None:
        """Writes ``new`` ([B, Hkv, count, E]: a numpy array, or an OrtValue on CUDA) into the next
        slots of the generated block."""
        if isinstance(self.buffers[past], np.ndarray):
            slot = self.length - self.prompt
            self._blocks(past)[1][:, :, slot:slot + count] = new
            return
        from .device_copy import copy_2d

        rows = self.append_rows(count)
        copy_2d(dst=self.pointer(past) + rows.pop("offset"), src=new.data_ptr(), **rows)

    def arrays(self) -> dict[str, np.ndarray]:
        """The cached keys/values as numpy arrays [B, H, length, E], both blocks joined (copies;
        CPU provider only)."""
        out = {}
        for past in self.buffers:
            prompt, generated = self._blocks(past)
            out[past] = np.concatenate([prompt, generated[:, :, :self.length - self.prompt]], axis=2)
        return out


def _open_all(open_one, graphs: list, *, workers: int | None) -> list:
    """``open_one`` of every graph, in order, on up to ``workers`` threads (None: one per CPU). The
    first failure is raised once every started call has ended, so no session is left loading."""
    workers = max(1, min(len(graphs), workers or os.cpu_count() or 1))
    if workers == 1:
        return [open_one(graph) for graph in graphs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="transprune-load") as pool:
        futures = [pool.submit(open_one, graph) for graph in graphs]
    return [future.result() for future in futures]  # the pool has joined: every call has ended
