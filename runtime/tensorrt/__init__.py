"""The TensorRT run side: engines built by ``transprune-build``, run on the device.

- ``engines``: the engine metadata contract (``<graph>.engine.json`` beside every engine, the
  plan file name), checked at load against the running TensorRT and GPU; ``python -m
  transprune.runtime.tensorrt.engines record DIR`` writes it after a trtexec build.
- ``backend``: ``TrtBackend``, the ``tensorrt`` runtime backend (one context per engine, shared
  activation memory, KV caches in pooled device buffers).

Nothing here imports torch or onnx, and TensorRT only when an engine is loaded.
"""
