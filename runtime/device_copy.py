"""One strided device-to-device copy (``cudaMemcpy2DAsync``): how the GPU backends write a call's
new keys/values into their cache buffers without torch or cupy; and zeroing a new cache buffer
(``cudaMemsetAsync``).

A cache buffer is ``[B, Hkv, capacity, E]`` and a call's new keys/values ``[B, Hkv, S, E]``: each
of the ``B * Hkv`` rows is ``S * E`` contiguous values that go to the same offset of a row that is
``capacity * E`` long. That is exactly one 2D copy (height ``B * Hkv``, two pitches), one call per
cache part, on the stream the engines run on.

The CUDA runtime is found the way TensorRT's own samples find it: the ``libcudart`` that the
process (TensorRT, onnxruntime-gpu) already loaded, or the first one the loader finds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from transprune.errors import TransPruneError

DEVICE_TO_DEVICE = 3  # cudaMemcpyKind
_NAMES = ("libcudart.so", "libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0")


@functools.lru_cache(maxsize=1)
def _cudart():
    names = [*_NAMES, *filter(None, [ctypes.util.find_library("cudart")])]
    for name in names:
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        function = library.cudaMemcpy2DAsync
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                             ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
        sync = library.cudaStreamSynchronize
        sync.restype, sync.argtypes = ctypes.c_int, [ctypes.c_void_p]
        memset = library.cudaMemsetAsync
        memset.restype = ctypes.c_int
        memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
        return function, sync, memset
    raise TransPruneError(f"no CUDA runtime library loads here (tried {', '.join(names)}); the GPU backends need "
                          f"CUDA's libcudart on the library path")


def copy_2d(*, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int,
            stream: int | None = None) -> None:
    """Copies ``height`` rows of ``width`` bytes from device ``src`` (rows ``src_pitch`` apart) to
    device ``dst`` (rows ``dst_pitch`` apart). Queued on ``stream`` (an integer handle) when given;
    without one it runs on the default stream and is waited for."""
    if width > min(dst_pitch, src_pitch):
        raise ValueError(f"a row of {width} bytes does not fit pitches {dst_pitch} / {src_pitch}")
    copy, sync, _ = _cudart()
    _finish(copy(dst, dst_pitch, src, src_pitch, width, height, DEVICE_TO_DEVICE, stream), stream, sync,
            "cudaMemcpy2DAsync", "writing the KV cache")


def zero(ptr: int, nbytes: int, *, stream: int | None = None) -> None:
    """Sets ``nbytes`` of device memory at ``ptr`` to zero. A new cache buffer must hold finite
    values: its unwritten slots are masked out of attention, but a NaN there (fresh device memory
    may hold any bits) would still turn ``0 * value`` into NaN."""
    _, sync, memset = _cudart()
    _finish(memset(ptr, 0, nbytes, stream), stream, sync, "cudaMemsetAsync", "clearing the KV cache")


def _finish(status: int, stream: int | None, sync, call: str, doing: str) -> None:
    """Waits for a call made on the default stream; raises on a CUDA error of either."""
    if status == 0 and stream is None:
        status = sync(None)
    if status != 0:
        raise TransPruneError(f"{call} failed with CUDA error {status} while {doing}")
