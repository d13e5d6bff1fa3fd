"""transprune: TransPrune visual-token pruning for LLaVA, exported to ONNX/TensorRT.

This module stays import-light on purpose: ``import transprune.runtime`` must work on a device
that has neither torch nor transformers, so nothing here may import them.
"""

__version__ = "0.1.0"
