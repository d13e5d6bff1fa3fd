"""transprune.runtime: run an exported build directory without torch or transformers."""
