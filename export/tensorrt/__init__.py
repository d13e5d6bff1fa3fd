"""The TensorRT build side: from an exported build to engines for one target GPU.

- ``lint`` (checks in ``lint_rules``, graph reading in ``lint_graph``) checks every ONNX graph
  against TensorRT 10.x's ONNX parser, from ``operator_matrix`` (the parsed ``data/`` table).
- ``targets``: the GPU presets and their precisions; ``memory``: the memory estimate and table.
- ``profiles``: optimization profiles from the manifest's named axes; ``plan``: the plan JSON and
  the trtexec script; ``engines``: the polygraphy build and the comparison with onnxruntime.
- ``workflow``: what ``transprune-build`` does (check, plan, build, compare) as library calls.

The runtime side (engine metadata, the TensorRT backend) is ``transprune.runtime.tensorrt``.
"""
