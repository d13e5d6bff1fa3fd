"""runtime/device_copy.py without a GPU: what it checks before calling CUDA, and the error when no
CUDA runtime loads (the copies themselves run only on a GPU: the TensorRT backend's simulated-GPU
tests stand in a host-memory copy with the same arguments)."""

import pytest

from transprune.errors import TransPruneError
from transprune.runtime import device_copy


def test_a_row_wider_than_its_pitch_is_refused_before_cuda_is_touched():
    with pytest.raises(ValueError, match="does not fit pitches"):
        device_copy.copy_2d(dst=1, dst_pitch=64, src=2, src_pitch=32, width=48, height=2)


def test_no_cuda_runtime_is_a_clear_error(monkeypatch):
    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    device_copy._cudart.cache_clear()
    monkeypatch.setattr(device_copy.ctypes, "CDLL", no_library)
    try:
        with pytest.raises(TransPruneError, match="no CUDA runtime library loads here .*libcudart"):
            device_copy.zero(1, 16)
    finally:
        device_copy._cudart.cache_clear()
