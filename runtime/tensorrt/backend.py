"""The TensorRT backend: one engine and one execution context per graph, built by ``transprune-build``.

- Modules: TensorRT engines (Jetson, datacenter) and TensorRT-RTX engines (``--target rtx``) run
  through the same code; the module is the one the engine set's plan names, and every engine's
  metadata must agree. TensorRT-RTX compiles kernels for the GPU at first run (JIT); they are kept
  in one runtime cache shared by all the engines, read from ``runtime.cache`` beside the engines
  when it exists and written back (atomically) on ``close``, so later runs start faster.

- Profiles: every engine has a prefill profile and, where the graph also runs per token (embed,
  segments, head), a decode profile; a call picks its phase from its shapes (one new token is a
  decode step) and switches the context's profile only when the phase changes.
- Memory: contexts are created without their own activation memory; one device buffer sized for
  the hungriest engine and profile serves them all, which is safe because every call runs on one
  CUDA stream, one after another. KV caches are one device buffer per layer and part, sized for
  the whole generation: TensorRT reads the whole buffer as ``past`` and writes the new tokens'
  keys/values into a small scratch buffer, which one strided device copy appends to the cache
  (``runtime.kv_pool``, shared with the onnxruntime backend), so nothing is allocated per token
  and a decode step moves one position per cache. Input and output buffers grow to the largest
  call and are then reused.
- No torch: TensorRT's Python module and the CUDA runtime through polygraphy's ctypes wrapper.

Engines are checked before use (``engines.load_engine_set``): built by this TensorRT, for this
GPU, from this build's graphs. Feeds are checked against the profile's min/max, so a prompt longer
than the engines were built for fails with a message, not inside TensorRT.
"""

from __future__ import annotations

import numpy as np

from transprune.errors import TransPruneError

from ..backend import Backend, KVCache
from ..build import Build, GraphInfo, SegmentInfo
from ..kv_pool import AppendCache, KVBufferPool, buffer_mask
from transprune.files import write_atomic

from .engines import engine_module, find_engine_dir, import_tensorrt, load_engine_set, running_platform

RUNTIME_CACHE_FILE = "runtime.cache"
RUNTIME_CACHE_LIMIT = 1 << 30  # a bigger file is not a runtime cache of transprune's engines

def check_feed_shapes(graph: str, profile: dict, shapes: dict[str, tuple], values: dict[str, tuple],
                      limits: dict) -> None:
    """Raises a TransPruneError naming the input, the shape and the engine's range when a call does
    not fit ``profile`` (a metadata profile dict); ``values`` are shape-tensor inputs' values."""
    for name, spec in profile["inputs"].items():
        got = values[name] if spec["value"] else shapes.get(name)
        if got is None:
            raise TransPruneError(f"{graph}: input {name!r} was not fed")
        low, high = tuple(spec["min"]), tuple(spec["max"])
        if len(got) != len(low) or any(not lo <= g <= hi for g, lo, hi in zip(got, low, high)):
            what = "values" if spec["value"] else "shape"
            raise TransPruneError(
                f"{graph} ({profile['phase']}): input {name!r} has {what} {tuple(got)}, the engine was built for "
                f"{low}..{high} (at most {limits['max_batch']} prompts of {limits['max_text_tokens']} text tokens "
                f"and {limits['max_new_tokens']} new tokens); rebuild with larger --max-batch/--max-text-tokens/"
                f"--max-new-tokens, or shorten the request")


class _Device:
    """The few CUDA runtime calls the backend makes, through polygraphy's ctypes wrapper."""

    def __init__(self) -> None:
        from polygraphy import cuda

        self.cuda = cuda
        self.wrapper = cuda.wrapper()
        self.stream = cuda.Stream()

    def malloc(self, nbytes: int) -> int:
        return self.wrapper.malloc(max(int(nbytes), 1))

    def free(self, ptr: int) -> None:
        self.wrapper.free(ptr)

    def upload(self, ptr: int, array: np.ndarray) -> None:
        self.wrapper.memcpy(ptr, array.ctypes.data, array.nbytes, self.cuda.MemcpyKind.HostToDevice, self.stream.ptr)

    def download(self, array: np.ndarray, ptr: int) -> None:
        self.wrapper.memcpy(array.ctypes.data, ptr, array.nbytes, self.cuda.MemcpyKind.DeviceToHost, self.stream.ptr)

    def copy_2d(self, *, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int) -> None:
        from ..device_copy import copy_2d

        copy_2d(dst=dst, dst_pitch=dst_pitch, src=src, src_pitch=src_pitch, width=width, height=height,
                stream=self.stream.ptr)

    def zero(self, ptr: int, nbytes: int) -> None:
        from ..device_copy import zero

        zero(ptr, nbytes, stream=self.stream.ptr)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.stream.free()


class _Buffer:
    """A device allocation that grows (never shrinks) to the largest size asked of it."""

    def __init__(self, device: _Device) -> None:
        self.device, self.ptr, self.nbytes = device, 0, 0

    @classmethod
    def zeroed(cls, device: _Device, nbytes: int) -> "_Buffer":
        """A buffer of ``nbytes`` zeros (a KV cache: its unwritten slots must hold no NaN, see
        ``kv_pool``)."""
        buffer = cls(device)
        device.zero(buffer.at_least(nbytes), nbytes)
        return buffer

    def at_least(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            if self.ptr:
                self.device.free(self.ptr)
            self.ptr, self.nbytes = self.device.malloc(nbytes), nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            self.device.free(self.ptr)
        self.ptr, self.nbytes = 0, 0


class RuntimeCache:
    """TensorRT-RTX's JIT-compiled kernels: one cache for every engine of a set, kept in a file
    beside the engines (created on first run; a stale or damaged file is ignored, as TensorRT-RTX
    itself ignores a cache from another GPU or version, and rewritten)."""

    def __init__(self, path) -> None:
        self.path, self.cache, self.loaded = path, None, False

    def config_for(self, engine, strategy):
        """A runtime config for ``engine``: contexts without their own activation memory, sharing
        the one cache."""
        config = engine.create_runtime_config()
        config.set_execution_context_allocation_strategy(strategy)
        if self.cache is None:
            self.cache = config.create_runtime_cache()
            if self.path.is_file() and self.path.stat().st_size <= RUNTIME_CACHE_LIMIT:
                self.loaded = bool(self.cache.deserialize(self.path.read_bytes()))
        config.set_runtime_cache(self.cache)
        return config

    def save(self) -> None:
        if self.cache is not None:
            write_atomic(self.path, bytes(self.cache.serialize()))


class _Graph:
    """One engine, its context, its profiles by phase, and its reusable I/O buffers."""

    def __init__(self, trt, runtime, device: _Device, info: GraphInfo, path, meta: dict,
                 runtime_cache: RuntimeCache | None = None) -> None:
        self.info, self.meta = info, meta
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise TransPruneError(f"{path}: {trt.__name__} {trt.__version__} could not load this engine; rebuild it "
                                  f"with transprune-build")
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        if runtime_cache is not None:
            self.context = self.engine.create_execution_context(runtime_cache.config_for(self.engine, strategy))
        else:
            self.context = self.engine.create_execution_context(strategy)
        # phase -> profile index; a TensorRT-RTX engine has one profile for both ("prefill+decode")
        self.profiles = {phase: index for index, p in enumerate(meta["profiles"]) for phase in p["phase"].split("+")}
        self.active_profile = None
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.buffers = {n: _Buffer(device) for n in names}
        # inputs TensorRT reads from host memory: shape tensors (the scorers' keep, TopK's K)
        self.host_inputs = {n for n in self.inputs if self.engine.is_shape_inference_io(n)}

    def activation_bytes(self) -> int:
        engine = self.engine
        if hasattr(engine, "get_device_memory_size_for_profile_v2"):  # TensorRT >= 10.1
            return max(engine.get_device_memory_size_for_profile_v2(i) for i in range(engine.num_optimization_profiles))
        return engine.device_memory_size


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, build: Build, *, engines=None, verify: bool | None = None,
                 threads: int | None = None) -> None:
        """``engines``: the engine directory (default: the one ``trt-*`` directory inside the build).
        ``verify``: check the engine files' sha256 (default: as the build's files were).
        ``threads`` is accepted for a uniform CLI and ignored (TensorRT runs on the GPU)."""
        super().__init__(build)
        directory = find_engine_dir(build, engines)
        self.module = engine_module(directory)
        try:
            trt = import_tensorrt(self.module)
        except TransPruneError as exc:
            needs = "TensorRT-RTX and an RTX GPU" if self.module == "tensorrt_rtx" else "TensorRT and an NVIDIA GPU"
            raise TransPruneError(f"the tensorrt backend runs engines built by transprune-build on a machine with "
                                  f"{needs}: {exc}; here, use --backend onnxruntime") from None
        verify = build.verified if verify is None else verify
        self.engine_set = load_engine_set(build, directory, platform=running_platform(self.module), verify=verify)
        self.limits = self.engine_set.plan["limits"]
        self.device = _Device()
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.runtime_cache = (RuntimeCache(self.engine_set.directory / RUNTIME_CACHE_FILE)
                              if self.module == "tensorrt_rtx" else None)
        self.graphs = {name: _Graph(trt, runtime, self.device, build.graphs[name], path, meta, self.runtime_cache)
                       for name, (path, meta) in self.engine_set.engines.items()}
        # one activation buffer for every context: calls never overlap on the single stream
        self.activations = _Buffer(self.device)
        size = max(g.activation_bytes() for g in self.graphs.values())
        self.activations.at_least(size)
        for graph in self.graphs.values():
            if hasattr(graph.context, "set_device_memory"):  # TensorRT >= 10.1
                graph.context.set_device_memory(self.activations.ptr, size)
            else:
                graph.context.device_memory = self.activations.ptr
        # (segment, past name) -> device buffer sized in bytes; the closure holds the device,
        # not the backend
        device = self.device
        self._pool = KVBufferPool(allocate=lambda nbytes: _Buffer.zeroed(device, nbytes),
                                  size_of=lambda buffer: buffer.nbytes, release=_Buffer.free)

    # -- calls ---------------------------------------------------------------------------------
    def _prepare(self, name: str, feeds: dict, bound: dict[str, tuple[int, tuple]]) -> tuple["_Graph", list]:
        """Selects the profile, sets shapes and addresses of inputs (uploading host feeds) and of
        ``bound`` tensors (device pointers with shapes: cache buffers); returns the graph and the
        host arrays that must stay alive until the stream is synchronized."""
        graph = self.graphs[name]
        phase = graph.info.call_phase(feeds)
        if phase not in graph.profiles:
            raise TransPruneError(f"{name}: the engine has no {phase} profile; rebuild with transprune-build")
        profile = graph.meta["profiles"][graph.profiles[phase]]
        host = {n: np.ascontiguousarray(feeds[n], dtype=graph.dtypes[n]) for n in graph.inputs if n not in bound}
        shapes = {**{n: a.shape for n, a in host.items()}, **{n: s for n, (_, s) in bound.items()}}
        values = {n: tuple(a.reshape(-1).tolist()) for n, a in host.items() if profile["inputs"][n]["value"]}
        check_feed_shapes(name, profile, shapes, values, self.limits)
        context = graph.context
        if graph.active_profile != graph.profiles[phase]:
            context.set_optimization_profile_async(graph.profiles[phase], self.device.stream.ptr)
            graph.active_profile = graph.profiles[phase]
        for n in graph.inputs:
            if n in bound:
                ptr, shape = bound[n]
                context.set_input_shape(n, shape)
                context.set_tensor_address(n, ptr)
            elif n in graph.host_inputs:  # shape-tensor input: TensorRT reads it from host memory
                context.set_input_shape(n, host[n].shape)
                context.set_tensor_address(n, host[n].ctypes.data)
            else:
                context.set_input_shape(n, host[n].shape)
                ptr = graph.buffers[n].at_least(host[n].nbytes)
                self.device.upload(ptr, host[n])
                context.set_tensor_address(n, ptr)
        return graph, list(host.values())

    def _execute(self, graph: "_Graph", bound: dict[str, tuple[int, tuple]], keep_alive: list,
                 then=None) -> dict:
        """Binds outputs not in ``bound`` to reusable buffers, runs, queues ``then()`` (more work on
        the stream), downloads the outputs. ``keep_alive`` holds the host arrays the stream reads
        from until it is synchronized."""
        context, results = graph.context, {}
        for n in graph.outputs:
            if n in bound:
                context.set_tensor_address(n, bound[n][0])
                continue
            shape = tuple(context.get_tensor_shape(n))
            results[n] = np.empty(shape, dtype=graph.dtypes[n])
            context.set_tensor_address(n, graph.buffers[n].at_least(results[n].nbytes))
        if not context.execute_async_v3(self.device.stream.ptr):
            raise TransPruneError(f"TensorRT failed to run {graph.info.name} (see its log above)")
        if then is not None:
            then()
        for n, array in results.items():
            self.device.download(array, graph.buffers[n].ptr)
        self.device.synchronize()
        return results

    def run(self, graph: str, feeds: dict) -> dict:
        prepared, keep_alive = self._prepare(graph, feeds, {})
        return self._execute(prepared, {}, keep_alive)

    # -- caches --------------------------------------------------------------------------------
    def new_cache(self, segment: SegmentInfo, *, batch: int, capacity: int) -> KVCache:
        itemsize = np.dtype(self.build.float_type).itemsize
        nbytes = batch * segment.kv_heads * capacity * segment.head_dim * itemsize
        return AppendCache(segment, batch, capacity, self._pool.segment_buffers(segment, nbytes), self.generation,
                           itemsize)

    def run_segment(self, segment: SegmentInfo, feeds: dict, cache: AppendCache) -> dict:
        if cache.generation != self.generation:
            raise TransPruneError("this cache belongs to a generation that a newer one superseded (its device "
                                  "buffers were reused); finish one generation before starting the next")
        new = feeds["hidden"].shape[1]
        cache.check_room(new)
        prefill = cache.length == 0
        if not prefill:
            feeds = {**feeds, "attention_mask": buffer_mask(cache, feeds["attention_mask"], new)}
        graph = self.graphs[segment.name]
        prompt_shape, generated_shape = cache.block_shapes(new)
        new_shape = (cache.batch, segment.kv_heads, new, segment.head_dim)
        generated_at = cache.generated_offset() * cache.itemsize
        bound, scratch = {}, {}
        for past, gen, new_name in segment.kv:
            start = cache.buffers[past].ptr
            bound[past] = (start, prompt_shape)
            bound[gen] = (start + generated_at, generated_shape)
            if prefill:  # the prompt block is prefill's output: written in place
                bound[new_name] = (start, new_shape)
            else:  # a small scratch, appended to the generated block below
                scratch[past] = graph.buffers[new_name].at_least(int(np.prod(new_shape)) * cache.itemsize)
                bound[new_name] = (scratch[past], new_shape)
        inputs = {name: bound[name] for past, gen, _ in segment.kv for name in (past, gen)}
        prepared, keep_alive = self._prepare(segment.name, feeds, inputs)
        rows = cache.append_rows(new)
        offset = rows.pop("offset")

        def append():  # queued on the stream after the engine: one strided copy per cache
            for past in scratch:
                self.device.copy_2d(dst=cache.buffers[past].ptr + offset, src=scratch[past], **rows)

        out = self._execute(prepared, bound, keep_alive, then=append)
        cache.written(new)
        return out

    def close(self) -> None:
        if getattr(self, "runtime_cache", None) is not None and getattr(self, "graphs", None):
            self.runtime_cache.save()  # the kernels compiled so far, for the next run
        for graph in getattr(self, "graphs", {}).values():
            for buffer in graph.buffers.values():
                buffer.free()
        if hasattr(self, "_pool"):
            self._pool.clear()
        if hasattr(self, "activations"):
            self.activations.free()
        self.graphs = {}
        if hasattr(self, "device"):
            self.device.close()
