"""transprune.export: write a build directory (ONNX graphs + manifest) from a LLaVA checkpoint."""
