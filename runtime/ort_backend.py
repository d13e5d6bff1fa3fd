"""The onnxruntime backend: one session per graph; segment KV caches in preallocated buffers.

Why the caches are bound by pointer: a segment graph returns ``present = concat(past, new)``.
Fed naively, every decoded token allocates a fresh copy of every layer's whole cache. Here each
cache part owns two flat buffers sized for the whole generation (prompt + new tokens); a call
reads ``past`` from one and onnxruntime writes ``present`` straight into the other (IO binding
with raw pointers, shaped per call), then the two swap. Nothing is allocated per token, and the
same code serves the CPU and CUDA execution providers (the buffers live on the provider's device).
Buffers are pooled and reused by later generations that fit in them (``kv_pool``, shared with the
TensorRT backend).
"""

from __future__ import annotations

import numpy as np

from transprune.errors import TransPruneError

from .backend import Backend, KVCache, check_threads
from .build import Build, SegmentInfo
from .kv_pool import DoubleBufferedCache, KVBufferPool

# the execution providers a user may pick, by short name, and the device their buffers live on
PROVIDERS = {"cpu": ("CPUExecutionProvider", "cpu"), "cuda": ("CUDAExecutionProvider", "cuda"),
             "tensorrt": ("TensorrtExecutionProvider", "cuda")}
# onnxruntime's MatMulNBits accuracy levels: 0 (unset: float), 1 fp32, 2 fp16, 3 bf16, 4 int8 activations
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, build: Build, *, threads: int | None = None, provider: str = "cpu",
                 int4_accuracy_level: int | None = None) -> None:
        """``int4_accuracy_level``: how onnxruntime's CPU kernel multiplies int4 weights (it fuses
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
        if int4_accuracy_level is not None:
            if int4_accuracy_level not in INT4_ACCURACY_LEVELS:
                raise TransPruneError(f"int4 accuracy level {int4_accuracy_level!r} is not one of "
                                      f"{', '.join(map(str, INT4_ACCURACY_LEVELS))} (0: float math, 4: int8 activations)")
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(int4_accuracy_level))
        self.sessions, self.inputs, self.outputs = {}, {}, {}
        for graph in build.graphs.values():
            try:
                session = ort.InferenceSession(str(graph.file), options, providers=providers)
            except Exception as exc:  # onnxruntime's Fail/InvalidGraph/InvalidProtobuf have no common base
                reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
                raise TransPruneError(f"graph {graph.name!r} ({graph.file.name}): onnxruntime cannot load it "
                                      f"({reason}); the file is damaged or not from this build: re-export or "
                                      f"copy the build again") from None
            self.sessions[graph.name] = session
            found = sorted(i.name for i in session.get_inputs()), sorted(o.name for o in session.get_outputs())
            wanted = sorted(t.name for t in graph.inputs), sorted(t.name for t in graph.outputs)
            if found != wanted:
                raise TransPruneError(f"graph {graph.name!r}: the ONNX file's inputs/outputs {found} differ from the "
                                      f"manifest's {wanted}; re-export the build")
            # names read once here, not on every call in the decode loop
            self.inputs[graph.name] = frozenset(found[0])
            self.outputs[graph.name] = [o.name for o in session.get_outputs()]
        # a segment's outputs other than its cache, bound per call after the presents
        cache_outputs = {present for segment in build.segments for _, present in segment.kv}
        self.uncached = {name: [o for o in outputs if o not in cache_outputs] for name, outputs in self.outputs.items()}
        # (segment, past name, side) -> flat OrtValue of model-dtype values on the provider's device,
        # sized in elements (the closure holds no reference to the backend: no cycle keeps it alive)
        new_value, float_type, device = ort.OrtValue.ortvalue_from_shape_and_type, build.float_type, self.device
        self._pool = KVBufferPool(allocate=lambda elements: new_value([max(elements, 1)], float_type, device, 0),
                                  size_of=lambda buffer: buffer.shape()[0])

    def run(self, graph: str, feeds: dict) -> dict:
        wanted = self.inputs[graph]
        values = self.sessions[graph].run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in wanted})
        return dict(zip(self.outputs[graph], values))

    def new_cache(self, segment: SegmentInfo, *, batch: int, capacity: int) -> KVCache:
        elements = batch * segment.kv_heads * capacity * segment.head_dim
        buffers = self._pool.segment_buffers(segment, elements)
        return _BoundCache(segment, batch, capacity, buffers, self.generation)

    def run_segment(self, segment: SegmentInfo, feeds: dict, cache: "_BoundCache") -> dict:
        if cache.generation != self.generation:
            raise TransPruneError("this generation was superseded by a newer one on the same pipeline, which reuses "
                                  "its cache memory; finish one stream before starting the next")
        new = feeds["hidden"].shape[1]
        total = cache.length + new
        if total > cache.capacity:
            raise TransPruneError(f"{segment.name}: {total} cached positions exceed the {cache.capacity} "
                                  f"allocated for this generation")
        session = self.sessions[segment.name]
        binding = session.io_binding()
        for name in ("hidden", "position_ids", "attention_mask"):
            binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        dtype, heads, head_dim = self.build.float_type, segment.kv_heads, segment.head_dim
        for past, present in segment.kv:
            read, write = cache.sides(past)
            binding.bind_input(past, self.device, 0, dtype, [cache.batch, heads, cache.length, head_dim],
                               read.data_ptr())
            binding.bind_output(present, self.device, 0, dtype, [cache.batch, heads, total, head_dim],
                                write.data_ptr())
        others = self.uncached[segment.name]
        for name in others:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        values = binding.get_outputs()  # in binding order: the presents, then the others
        out = {name: value.numpy() for name, value in zip(others, values[len(segment.kv):])}
        cache.flip()
        cache.length = total
        return out

    def close(self) -> None:
        self.sessions.clear()
        self._pool.clear()


class _BoundCache(DoubleBufferedCache):
    """Two flat OrtValues per cache part, bound by pointer (see ``kv_pool.DoubleBufferedCache``)."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The cached keys/values as numpy arrays [B, H, length, E] (copies; CPU provider only)."""
        shape = (self.batch, self.segment.kv_heads, self.length, self.segment.head_dim)
        count = int(np.prod(shape))
        return {past: pair[self.reading].numpy()[:count].reshape(shape).copy() for past, pair in self.buffers.items()}
