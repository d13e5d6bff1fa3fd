"""The engines the benchmarks time, each with ``run(image, prompt, new_tokens) -> dict``.

``RuntimeEngine``: the torch-free runtime on one build. ``HFEngine``: transformers'
``LlavaForConditionalGeneration``, fp32, eager attention, the baseline. Both ignore EOS: the
benchmark models are random, and forcing the length makes every run generate exactly N tokens.
Keys of a run's dict that start with ``_`` hold objects for the caller (the generation, the
tokens), not figures for the JSON (see :func:`public`).
"""

from __future__ import annotations

import time
from pathlib import Path

from .export_and_runtime import open_pipeline

DEFAULT_PROMPT = "Describe the picture in detail: what is in it, the colours, and where everything is."


class RuntimeEngine:
    """The torch-free runtime on one build, EOS ignored."""

    def __init__(self, path: Path, threads: int, *, verify: bool = True,
                 int4_accuracy_level: int | None = None) -> None:
        started = time.perf_counter()
        self.pipeline = open_pipeline(path, threads=threads, verify=verify, int4_accuracy_level=int4_accuracy_level)
        self.load_s = time.perf_counter() - started
        self.pipeline.build.eos_token_id = None  # force the length: the bench model is random

    def run(self, image, prompt: str, new_tokens: int) -> dict:
        started = time.perf_counter()
        result = self.pipeline.generate(image, prompt, max_new_tokens=new_tokens)
        wall_ms = (time.perf_counter() - started) * 1e3
        timings = dict(result.timings)
        return {"wall_ms": round(wall_ms, 3), "new_tokens": len(result.tokens),
                "decode_steps": timings.get("decode_steps"), "finish_reason": result.finish_reason,
                "prefill_ms": timings["prefill_total"], "decoder_prefill_ms": decoder_prefill_ms(timings),
                "decode_ms_per_token": timings.get("decode_per_token"), "timings": timings,
                "_generation": result}

    def run_batch(self, image, prompt: str, new_tokens: int, batch: int) -> dict:
        """One generation of ``batch`` copies of (image, prompt): a server's batched decode step,
        where every sample's KV cache is read each step and the weights once for all."""
        started = time.perf_counter()
        results = self.pipeline.generate_batch([image] * batch, [prompt] * batch, max_new_tokens=new_tokens)
        wall_ms = (time.perf_counter() - started) * 1e3
        timings = results[0].timings
        return {"wall_ms": round(wall_ms, 3), "batch": batch, "prefill_ms": timings["prefill_total"],
                "decode_ms_per_step": timings.get("decode_per_token"), "decode_steps": timings.get("decode_steps")}

    def close(self) -> None:
        self.pipeline.close()


class HFEngine:
    """transformers' LlavaForConditionalGeneration, fp32, eager attention, EOS ignored."""

    def __init__(self, model: str, threads: int, image, prompt: str) -> None:
        import torch

        from transprune.checkpoints import load_llava
        from transprune.reference import encode_inputs

        torch.set_num_threads(threads)
        self.torch = torch
        started = time.perf_counter()
        self.loaded = load_llava(model)
        self.load_s = time.perf_counter() - started
        self.inputs = encode_inputs(self.loaded.processor, [image], [prompt])
        self.prompt_length = int(self.inputs["input_ids"].shape[1])

    def run(self, image, prompt: str, new_tokens: int) -> dict:
        with self.torch.no_grad():
            started = time.perf_counter()
            out = self.loaded.model.generate(**self.inputs, max_new_tokens=new_tokens, do_sample=False,
                                             pad_token_id=0, eos_token_id=None)
            wall_ms = (time.perf_counter() - started) * 1e3
        tokens = out[0, self.prompt_length:].tolist()
        return {"wall_ms": round(wall_ms, 3), "new_tokens": len(tokens), "_tokens": tokens}

    def close(self) -> None:
        del self.loaded


def decoder_prefill_ms(timings: dict) -> float:
    """Prefill time of the decoder segments and scorers only (what the FLOPs model counts)."""
    return round(sum(v for k, v in timings.items() if k.startswith(("segment_", "scorer_"))), 3)


def scorer_prefill_ms(timings: dict) -> float:
    """Prefill time of the scorers alone (extra work the pruning adds)."""
    return round(sum(v for k, v in timings.items() if k.startswith("scorer_")), 3)


def public(run: dict) -> dict:
    """A run's figures without its ``_``-prefixed objects."""
    return {k: v for k, v in run.items() if not k.startswith("_")}
