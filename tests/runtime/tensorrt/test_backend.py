"""The tensorrt backend.

There is no GPU and no TensorRT on these machines, so the tests named ``simulated_gpu`` run the
backend against a stand-in: a ``tensorrt`` module whose engines run their ONNX graph with
onnxruntime and enforce what TensorRT enforces (the active profile's min/max for every input,
device memory set before running, shape tensors read from host memory, every other tensor in a
device allocation big enough for it), and a CUDA "device" that is host memory. What they check
is the backend's own logic: profile choice, shapes, pointer binding, cache appends, buffer reuse,
the shared activation memory, the TensorRT-RTX runtime cache, and metadata checks. The test marked
``gpu`` builds real engines (TensorRT, and TensorRT-RTX) and runs them; it skips without a GPU.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from transprune.errors import TransPruneError
from transprune.export.tensorrt.plan import make_plan, write_plan
from transprune.export.tensorrt.profiles import shape_limits
from transprune.export.tensorrt.targets import get_target
from transprune.runtime.tensorrt import backend as tensorrt_backend
from transprune.runtime.build import Build
from transprune.runtime.ort_backend import OrtBackend
from transprune.runtime.pipeline import Pipeline
from transprune.runtime.tensorrt.engines import EngineMismatch, Platform, write_metadata
from transprune.sample_image import sample_images

PLATFORM = Platform("10.3.0.30", (8, 7), "simulated Orin")
RTX_PLATFORM = Platform("1.7.1.116", (8, 9), "simulated RTX 4090", "tensorrt_rtx")
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class SimulatedDevice:
    """Device memory that is host memory; counts allocations. New memory is all 0xFF bytes (NaN as
    floats), as fresh device memory may hold anything: what is read before it is written shows."""

    def __init__(self) -> None:
        self.allocations: dict[int, np.ndarray] = {}
        self.mallocs = 0

    def malloc(self, nbytes: int) -> int:
        array = np.full(max(int(nbytes), 1), 0xFF, dtype=np.uint8)
        self.allocations[array.ctypes.data] = array
        self.mallocs += 1
        return array.ctypes.data

    def free(self, ptr: int) -> None:
        del self.allocations[ptr]

    def holds(self, ptr: int, nbytes: int) -> bool:
        return any(base <= ptr and ptr + nbytes <= base + a.nbytes for base, a in self.allocations.items())

    def upload(self, ptr: int, array: np.ndarray) -> None:
        assert self.holds(ptr, array.nbytes)
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)

    def download(self, array: np.ndarray, ptr: int) -> None:
        assert self.holds(ptr, array.nbytes)
        ctypes.memmove(array.ctypes.data, ptr, array.nbytes)

    def zero(self, ptr: int, nbytes: int) -> None:
        assert self.holds(ptr, nbytes)
        ctypes.memset(ptr, 0, nbytes)

    def copy_2d(self, *, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int) -> None:
        """cudaMemcpy2DAsync on host memory, with both sides checked to lie in allocations."""
        assert width <= min(dst_pitch, src_pitch) and height >= 1
        assert self.holds(dst, (height - 1) * dst_pitch + width) and self.holds(src, (height - 1) * src_pitch + width)
        for row in range(height):
            ctypes.memmove(dst + row * dst_pitch, src + row * src_pitch, width)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass

    class stream:  # noqa: N801 - mirrors _Device.stream.ptr
        ptr = 1


def _read(ptr: int, shape: tuple, dtype) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer((ctypes.c_char * nbytes).from_address(ptr), dtype=dtype).reshape(shape).copy()


class SimulatedContext:
    def __init__(self, engine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.profile, self.profile_switches, self.device_memory, self.results = None, [], None, None
        self.profiles_run: list[int] = []

    def set_device_memory(self, ptr: int, size: int) -> None:
        assert size >= max(self.engine.memory_sizes)
        self.device_memory = ptr

    def set_optimization_profile_async(self, index: int, stream: int) -> None:
        assert 0 <= index < self.engine.num_optimization_profiles
        self.profile = index
        self.profile_switches.append(index)

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name], self.results = tuple(shape), None
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def _run(self) -> dict:
        if self.results is None:
            engine, device = self.engine, self.engine.device
            profile = engine.spec["profiles"][self.profile]
            feeds = {}
            for name in engine.inputs:
                shape, spec = self.shapes[name], profile["inputs"][name]
                ptr = self.addresses[name]
                array = _read(ptr, shape, engine.dtypes[name])
                if spec["value"]:
                    assert not device.holds(ptr, 1), f"shape tensor {name} must be in host memory"
                    got = tuple(array.reshape(-1).tolist())
                else:
                    assert device.holds(ptr, array.nbytes), f"{name} is not in device memory"
                    got = shape
                if len(got) != len(spec["min"]) or not all(lo <= g <= hi for lo, g, hi in
                                                           zip(spec["min"], got, spec["max"])):
                    raise AssertionError(f"{name} {got} is outside profile {self.profile} of {engine.spec['graph']}")
                feeds[name] = array
            self.results = dict(zip(engine.outputs, engine.session.run(None, feeds)))
        return self.results

    def get_tensor_shape(self, name: str):
        return self._run()[name].shape

    def execute_async_v3(self, stream: int) -> bool:
        assert self.device_memory is not None, "no activation memory was given to the context"
        self.profiles_run.append(self.profile)
        for name, array in self._run().items():
            ptr = self.addresses[name]
            assert self.engine.device.holds(ptr, array.nbytes), f"output {name} does not fit its buffer"
            ctypes.memmove(ptr, np.ascontiguousarray(array).ctypes.data, array.nbytes)
        self.results = None
        return True


class SimulatedEngine:
    def __init__(self, spec: dict, device: SimulatedDevice) -> None:
        import onnxruntime

        self.spec, self.device = spec, device
        self.session = onnxruntime.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.dtypes = {t.name: np.dtype(ORT_TYPES[t.type])
                       for t in (*self.session.get_inputs(), *self.session.get_outputs())}
        self.num_optimization_profiles = len(spec["profiles"])
        self.rtx = spec.get("module") == "tensorrt_rtx"
        self.memory_sizes = [4096 * (len(self.inputs) + i) for i in range(self.num_optimization_profiles)]
        self.contexts = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, index: int) -> str:
        return (self.inputs + self.outputs)[index]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name in self.inputs else "output"

    def get_tensor_dtype(self, name: str):
        return self.dtypes[name]

    def is_shape_inference_io(self, name: str) -> bool:
        # TopK's K, and IGA's query row count (slice and reshape sizes): TensorRT parses them as shape tensors
        return name in ("keep", "query_rows")

    def get_device_memory_size_for_profile_v2(self, index: int) -> int:
        return self.memory_sizes[index]

    def create_execution_context(self, strategy_or_config):
        config = strategy_or_config if isinstance(strategy_or_config, SimulatedRuntimeConfig) else None
        if self.rtx:  # TensorRT-RTX: contexts come from a runtime config carrying the JIT cache
            assert config is not None and config.cache is not None, "a TensorRT-RTX context needs its runtime cache"
        strategy = config.strategy if config is not None else strategy_or_config
        assert strategy == "user-managed", "contexts must not allocate their own activation memory"
        self.contexts.append(SimulatedContext(self))
        self.contexts[-1].config = config
        return self.contexts[-1]

    def create_runtime_config(self):
        assert self.rtx, "TensorRT has no runtime configs"
        return SimulatedRuntimeConfig()


class SimulatedRuntimeCache:
    """TensorRT-RTX's JIT cache: counts the kernels 'compiled' (one per context)."""

    def __init__(self) -> None:
        self.kernels = 0

    def serialize(self) -> bytes:
        return f"kernels:{self.kernels}".encode()

    def deserialize(self, data: bytes) -> bool:
        if not data.startswith(b"kernels:"):
            return False
        self.kernels = int(data.split(b":")[1])
        return True


class SimulatedRuntimeConfig:
    def __init__(self) -> None:
        self.strategy, self.cache = None, None

    def set_execution_context_allocation_strategy(self, strategy) -> None:
        self.strategy = strategy

    def create_runtime_cache(self) -> SimulatedRuntimeCache:
        return SimulatedRuntimeCache()

    def set_runtime_cache(self, cache: SimulatedRuntimeCache) -> None:
        self.cache = cache
        cache.kernels += 1


def simulated_tensorrt(device: SimulatedDevice, engines: list, platform: Platform = PLATFORM) -> types.ModuleType:
    trt = types.ModuleType(platform.module)
    trt.__version__ = platform.tensorrt_version

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            pass

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes):
            engines.append(SimulatedEngine(json.loads(data), device))
            return engines[-1]

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(USER_MANAGED="user-managed")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: dtype
    return trt


@pytest.fixture(scope="module")
def engine_dir(paper_build, tmp_path_factory):
    """Simulated engines (JSON naming the ONNX graph and the profiles) for the tiny paper build,
    planned for batch <= 2, 64 text tokens, 12 new tokens, with real metadata beside them."""
    return _simulated_engines(Build.open(paper_build[0]), tmp_path_factory.mktemp("engines"))


def _simulated_engines(build: Build, directory, *, target: str = "jetson-agx-orin", platform: Platform = PLATFORM):
    plan = make_plan(build, target=get_target(target), precision="fp16" if target != "rtx" else build.manifest["dtype"],
                     limits=shape_limits(build, max_batch=2, max_text_tokens=64, max_new_tokens=12),
                     engine_dir=directory)
    write_plan(plan, directory)
    for entry in plan["engines"]:
        path = directory / entry["engine"]
        path.write_text(json.dumps({"graph": entry["graph"], "onnx": str(build.graphs[entry["graph"]].file),
                                    "profiles": entry["profiles"], "module": platform.module}))
        write_metadata(entry, plan, path, platform, built_with="simulation")
    return directory


def _install_simulation(monkeypatch, platform: Platform):
    device, engines = SimulatedDevice(), []
    monkeypatch.setitem(sys.modules, platform.module, simulated_tensorrt(device, engines, platform))
    monkeypatch.setattr(tensorrt_backend, "_Device", lambda: device)
    monkeypatch.setattr(tensorrt_backend, "running_platform",
                        lambda module: platform if module == platform.module else pytest.fail(f"asked for {module}"))
    return device, engines


@pytest.fixture
def simulated(monkeypatch):
    """(device, engines) after installing the simulated TensorRT and CUDA device."""
    return _install_simulation(monkeypatch, PLATFORM)


@pytest.fixture
def simulated_rtx(monkeypatch):
    """(device, engines) after installing a simulated TensorRT-RTX on a simulated RTX 4090 (SM 8.9)."""
    return _install_simulation(monkeypatch, RTX_PLATFORM)


def test_simulated_gpu_generation_equals_onnxruntime(paper_build, engine_dir, simulated):
    device, engines = simulated
    build = Build.open(paper_build[0])
    images, prompts = sample_images()[:2], ["What is shown here?", "Describe the colours in one sentence."]
    with Pipeline(build, OrtBackend(build)) as reference:
        expected = reference.generate_batch(images, prompts, max_new_tokens=6)
    with Pipeline(build, tensorrt_backend.TrtBackend(build, engines=engine_dir)) as pipeline:
        got = pipeline.generate_batch(images, prompts, max_new_tokens=6)
        single = pipeline.generate(images[0], prompts[0], max_new_tokens=6)
    assert [g.tokens for g in got] == [e.tokens for e in expected]
    assert [g.kept for g in got] == [e.kept for e in expected]
    assert single.tokens == expected[0].tokens and single.kept == expected[0].kept
    assert len(engines) == 11 and not device.allocations  # close() freed every device buffer


def test_simulated_gpu_profiles_shared_activations_and_no_allocation_per_token(paper_build, engine_dir, simulated):
    device, engines = simulated
    build = Build.open(paper_build[0])
    backend = tensorrt_backend.TrtBackend(build, engines=engine_dir)
    pipeline = Pipeline(build, backend)
    pipeline.generate(sample_images()[0], "What is shown here?", max_new_tokens=5)
    by_graph = {e.spec["graph"]: e.contexts[0] for e in engines}
    # prefill runs profile 0, each decode step profile 1; the profile is switched only on a phase change
    assert by_graph["segment_1"].profiles_run == [0, 1, 1, 1, 1]
    assert by_graph["segment_1"].profile_switches == [0, 1]
    assert by_graph["embed"].profiles_run == [0, 1, 1, 1, 1] and by_graph["head"].profiles_run == [0, 1, 1, 1, 1]
    assert by_graph["scorer_0"].profiles_run == [0] and by_graph["vision"].profiles_run == [0]
    # one activation buffer for every context, sized for the hungriest engine and profile
    assert len({c.device_memory for c in by_graph.values()}) == 1
    shared = by_graph["vision"].device_memory
    assert device.allocations[shared].nbytes == max(max(e.memory_sizes) for e in engines)
    # a second generation of the same size reuses every buffer: nothing is allocated at all
    before = device.mallocs
    pipeline.generate(sample_images()[0], "What is shown here?", max_new_tokens=5)
    assert device.mallocs == before
    assert by_graph["segment_1"].profile_switches == [0, 1, 0, 1]
    pipeline.close()


def test_simulated_gpu_request_beyond_the_engines_is_refused_with_the_fix(paper_build, engine_dir, simulated):
    build = Build.open(paper_build[0])
    with Pipeline(build, tensorrt_backend.TrtBackend(build, engines=engine_dir)) as pipeline:
        with pytest.raises(TransPruneError, match=r"embed \(prefill\): input 'input_ids' has shape \(1, 7\d\d\), "
                                                  r"the engine was built for .*rebuild with larger"):
            pipeline.generate(sample_images()[0], "word " * 150, max_new_tokens=2)
        with pytest.raises(TransPruneError, match=r"vision \(prefill\): input 'pixel_values' has shape "
                                                  r"\(3, 3, 336, 336\).*at most 2 prompts"):
            pipeline.generate_batch(sample_images(), ["a", "b", "c"], max_new_tokens=2)


def test_simulated_gpu_engines_of_another_tensorrt_or_gpu_are_refused(paper_build, engine_dir, simulated,
                                                                      monkeypatch):
    build = Build.open(paper_build[0])
    monkeypatch.setattr(tensorrt_backend, "running_platform", lambda module: Platform("10.7.0", (8, 7)))
    with pytest.raises(EngineMismatch, match="built with TensorRT 10.3.0.30, this is TensorRT 10.7.0; .*rebuild"):
        tensorrt_backend.TrtBackend(build, engines=engine_dir)
    monkeypatch.setattr(tensorrt_backend, "running_platform", lambda module: Platform("10.3.0.30", (9, 0), "H100"))
    with pytest.raises(EngineMismatch, match=r"compute capability 8.7 .*this GPU is 9.0 \(H100\); rebuild on the "
                                             r"target"):
        tensorrt_backend.TrtBackend(build, engines=engine_dir)


def test_without_tensorrt_the_backend_says_what_to_install(paper_build, engine_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail as when absent
    with pytest.raises(TransPruneError, match="TensorRT's Python module is not importable here .*JetPack "
                                              ".*python3-libnvinfer.*pypi.nvidia.com"):
        Pipeline.from_dir(paper_build[0], backend="tensorrt", engines=engine_dir)


def _gpu_count() -> int:
    """NVIDIA GPUs the driver reports (0 without a driver): cuInit + cuDeviceGetCount."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@pytest.mark.gpu
@pytest.mark.parametrize("module, target, extra", [
    ("tensorrt", "datacenter-hopper", ["--compare"]),  # fp16, polygraphy's comparison per engine
    ("tensorrt_rtx", "rtx", []),  # the export's fp32, built ahead of time, JIT on the GPU
])
def test_gpu_real_engines_generate_like_onnxruntime(paper_build, tmp_path, module, target, extra):
    """On a GPU with TensorRT or TensorRT-RTX: build the tiny paper build's engines, (TensorRT:
    compare each with onnxruntime,) and generate the same greedy tokens and kept patches as the
    onnxruntime backend; TensorRT-RTX leaves its runtime cache beside the engines."""
    if importlib.util.find_spec(module) is None or not _gpu_count():
        pytest.skip(f"needs {module} and an NVIDIA GPU; this machine has "
                    f"{'no ' + module if importlib.util.find_spec(module) is None else 'no GPU'}")
    from transprune.cli.build import main as build_main

    out = tmp_path / "engines"
    assert build_main([str(paper_build[0]), "--target", target, "--max-text-tokens", "64",
                       "--max-new-tokens", "16", "--out", str(out), *extra]) == 0
    build = Build.open(paper_build[0])
    image, prompt = sample_images()[0], "What is shown here?"
    with Pipeline(build, OrtBackend(build)) as reference:
        expected = reference.generate(image, prompt, max_new_tokens=8)
    with Pipeline(build, tensorrt_backend.TrtBackend(build, engines=out)) as pipeline:
        got = pipeline.generate(image, prompt, max_new_tokens=8)
    assert got.kept == expected.kept and got.tokens == expected.tokens
    assert (out / tensorrt_backend.RUNTIME_CACHE_FILE).is_file() == (module == "tensorrt_rtx")


def test_simulated_gpu_llava_next_images_of_any_size_fit_one_engine_set(next_build, tmp_path, simulated):
    """LLaVA-NeXT: one engine set serves images of every size (the profiles span 1..5 tiles and
    576..2928 image tokens, each scorer's K the matching int(n * ratio)); generation equals
    onnxruntime for a wide, a tall and a square image, the mixed batch running per count."""
    from transprune.sample_image import sample_image

    device, engines = simulated
    build = Build.open(next_build[0])
    directory = _simulated_engines(build, tmp_path / "engines")
    images = [sample_image(width=640, height=480), sample_image(width=330, height=1000),
              sample_image(width=700, height=700)]
    prompts = ["What is shown here?"] * 3
    with Pipeline(build, OrtBackend(build)) as reference:
        expected = [reference.generate(image, prompt, max_new_tokens=4) for image, prompt in zip(images, prompts)]
    with Pipeline(build, tensorrt_backend.TrtBackend(build, engines=directory)) as pipeline:
        got = pipeline.generate_batch(images, prompts, max_new_tokens=4)
    assert [g.image_tokens for g in got] == [e.image_tokens for e in expected]
    assert len({g.image_tokens[0] for g in got}) == 3 and max(g.image_tokens[0] for g in got) == 2928
    assert [g.tokens for g in got] == [e.tokens for e in expected]
    assert [g.kept for g in got] == [e.kept for e in expected]
    by_graph = {e.spec["graph"]: e.contexts[0] for e in engines}
    assert by_graph["vision"].profiles_run == [0, 0, 0] and by_graph["scorer_2"].profiles_run == [0, 0, 0]


def test_simulated_gpu_tensorrt_rtx_engines_run_with_one_runtime_cache_kept_beside_them(paper_build, tmp_path,
                                                                                        simulated_rtx):
    """An rtx engine set is run through tensorrt_rtx (the plan says so): contexts come from runtime
    configs sharing one JIT cache, which is written beside the engines on close and read back by
    the next backend; tokens and kept patches equal onnxruntime's."""
    device, engines = simulated_rtx
    build = Build.open(paper_build[0])
    directory = _simulated_engines(build, tmp_path / "trt-rtx", target="rtx", platform=RTX_PLATFORM)
    image, prompt = sample_images()[0], "What is shown here?"
    with Pipeline(build, OrtBackend(build)) as reference:
        expected = reference.generate(image, prompt, max_new_tokens=5)
    backend = tensorrt_backend.TrtBackend(build, engines=directory)
    assert backend.module == "tensorrt_rtx" and not backend.runtime_cache.loaded
    with Pipeline(build, backend) as pipeline:
        got = pipeline.generate(image, prompt, max_new_tokens=5)
    assert got.tokens == expected.tokens and got.kept == expected.kept
    caches = {id(context.config.cache) for engine in engines for context in engine.contexts}
    assert len(caches) == 1 and not device.allocations
    cache_file = directory / tensorrt_backend.RUNTIME_CACHE_FILE
    assert cache_file.read_bytes() == b"kernels:11"  # one per engine's context
    again = tensorrt_backend.TrtBackend(build, engines=directory)
    assert again.runtime_cache.loaded and again.runtime_cache.cache.kernels == 22
    again.close()
    cache_file.write_bytes(b"damaged")  # ignored (as TensorRT-RTX ignores a stale cache) and rewritten
    third = tensorrt_backend.TrtBackend(build, engines=directory)
    assert not third.runtime_cache.loaded
    third.close()
    assert cache_file.read_bytes() == b"kernels:11"


def test_simulated_gpu_tensorrt_rtx_engines_refuse_a_gpu_outside_their_list(paper_build, tmp_path, monkeypatch):
    build = Build.open(paper_build[0])
    directory = _simulated_engines(build, tmp_path / "trt-rtx", target="rtx", platform=RTX_PLATFORM)
    _install_simulation(monkeypatch, Platform("1.7.1.116", (7, 5), "RTX 2080", "tensorrt_rtx"))
    with pytest.raises(EngineMismatch, match=r"compute capability 8.0, 8.6, 8.9, 12.0 .*this GPU is 7.5 \(RTX 2080\); "
                                             r"rebuild for this GPU"):
        tensorrt_backend.TrtBackend(build, engines=directory)
    _install_simulation(monkeypatch, Platform("1.8.0", (8, 9), "RTX 4090", "tensorrt_rtx"))
    with pytest.raises(EngineMismatch, match="built with TensorRT-RTX 1.7.1.116, this is TensorRT-RTX 1.8.0"):
        tensorrt_backend.TrtBackend(build, engines=directory)


def test_without_tensorrt_rtx_the_backend_says_what_to_install(paper_build, tmp_path, monkeypatch):
    build = Build.open(paper_build[0])
    directory = _simulated_engines(build, tmp_path / "trt-rtx", target="rtx", platform=RTX_PLATFORM)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(TransPruneError, match="TensorRT-RTX and an RTX GPU: TensorRT-RTX's Python module is not "
                                              "importable here .*pip install tensorrt-rtx-cu12"):
        tensorrt_backend.TrtBackend(build, engines=directory)
