"""``export_model``: checkpoint + schedule -> a validated build directory.

Writes into a temporary sibling directory and renames it into place only after every graph has
been exported (and, by default, validated), so a failure never leaves a half-written build.

What it may write (issue 19): ``--out`` may not be, hold or lie inside what the export reads (the
checkpoint, the cache it lives in); ``force`` replaces only a directory that is a transprune build
and holds nothing transprune did not write (``out_dir.check_out``), and the old build stays in
place until the new one is complete (``transprune.files.replace_directory``). Any failure or
interrupt removes the staging directory and the parent directories the export created.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from transprune import __version__
from transprune.errors import TransPruneError
from transprune.files import DiskFull, refuse_overlap
from transprune.runtime.manifest import MANIFEST, SCHEMA_VERSION, sha256
from transprune.schedule import Schedule

from .out_dir import check_out, staged_output

DTYPES = {"fp32": "float32", "fp16": "float16"}
WEIGHT_FORMATS = ("float", "int4")  # float: weights in the --dtype; int4: export/int4.py
OPSETS = range(18, 21)  # 18: the dynamo exporter's minimum; 20: the newest TensorRT 10 parses
DEFAULT_MAX_TEXT_TOKENS = 1024
_BYTES_PER = {"fp32": 4, "fp16": 2}
# copied for people to read; the runtime uses tokenizer.json and the manifest (export/processor.py)
_PROCESSOR_FILES = ("tokenizer_config.json", "special_tokens_map.json",
                    "preprocessor_config.json", "processor_config.json", "chat_template.json",
                    "chat_template.jinja")

# progress(step, steps, label): called before each graph and before validation
Progress = Callable[[int, int, str], None]


def export_model(*, model: str = "tiny", out: Path, schedule: Schedule, dtype: str = "fp32", opset: int = 18,
                 weight_format: str = "float", block_size: int | None = None, int4_parts: tuple[str, ...] | None = None,
                 max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS, force: bool = False, validate: bool = True,
                 cache_dir: Path | None = None, progress: Progress | None = None) -> dict:
    """Exports ``model`` pruned by ``schedule`` into ``out``; returns the manifest written there.

    ``weight_format`` "float" stores weights in ``dtype``; "int4" quantizes the weights of
    ``int4_parts`` (default ``int4.DEFAULT_PARTS``) to int4 in blocks of ``block_size`` (default
    128) input channels, activations and the other weights staying in ``dtype`` (``export/int4.py``).
    """
    import torch

    from transprune.checkpoints import resolve_checkpoint
    from transprune.flops import flops_report
    from transprune.runtime.build import Build
    from transprune.sample_image import sample_image

    from transprune.family import model_facts

    from .kinds import graph_specs, kind_of
    from .kinds.base import Examples
    from .onnx_writer import parameter_sources, write_graph
    from .tracing import Tracer
    from .processor import TOKENIZER_FILE, check_processor, export_processor, load_processor
    from .tensorrt import check as trt_check
    from transprune.runtime.tensorrt.engines import importable_modules
    from .weights import CheckpointWeights, MetaWeights

    out = Path(os.path.abspath(out))  # "." or "b/.." name no directory that can be renamed; this does
    if dtype not in DTYPES:
        raise TransPruneError(f"--dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    int4 = _int4_scheme(weight_format, block_size, int4_parts)
    if opset not in OPSETS:
        raise TransPruneError(f"--opset {opset} is outside 18..20 (18 is the exporter's minimum, "
                              f"20 TensorRT 10's maximum)")
    checkpoint, preset = resolve_checkpoint(model, cache_dir=cache_dir)
    refuse_overlap(out, inputs=_inputs(checkpoint, preset, cache_dir), what="--out")
    check_out(out, force=force)
    config = preset.family.transformers_class("config").from_pretrained(checkpoint, local_files_only=True)
    facts = model_facts(config)
    processor = load_processor(checkpoint)
    image_tokens = _image_token_range(facts, processor)
    # the fewest image tokens an image can give must still keep at least one token per prune
    schedule.check_model(num_layers=facts.num_layers, n_image=image_tokens["min"])
    limits = _limits(max_text_tokens, image_tokens=image_tokens,
                     max_positions=config.text_config.max_position_embeddings)
    specs = graph_specs(facts, schedule)
    checkpoint_weights = CheckpointWeights(checkpoint)
    weights = MetaWeights(checkpoint_weights, getattr(torch, DTYPES[dtype]))
    if int4 is not None:
        int4.check_shapes((name, checkpoint_weights.describe(name)[0]) for name in checkpoint_weights.names())
    needed = _estimated_bytes(checkpoint_weights, dtype, int4)

    examples = Examples(weights.dtype, n_image=facts.n_image, image_token_id=facts.image_token_id)
    tracer = Tracer.for_model(opset=opset, config=config, dtype=weights.dtype)  # what repeats is traced once
    parsers = importable_modules()  # the real TensorRT parsers that check each graph (none: the lint alone)
    steps = len(specs) + (1 if validate else 0)
    try:
        # staged_output removes the staging directory and the parents it made if anything below fails
        # or is interrupted (KeyboardInterrupt, the CLIs' Terminated), and swaps it in when done
        with staged_output(out, force=force) as staging:
            _check_free_space(out.parent, needed)
            entries, checks = [], []
            for number, spec in enumerate(specs, 1):
                started = time.perf_counter()
                kind = kind_of(spec.kind)
                if progress:
                    progress(number, steps, kind.describe(spec))
                module = kind.module(spec, weights, config)
                traced = kind.onnx_model(spec, module, tracer=tracer, examples=examples, weights=weights, config=config)
                path = staging / f"{spec.name}.onnx"
                write_graph(traced, spec, path, sources=parameter_sources(module, weights), weights=weights, int4=int4)
                del module, traced
                files = sorted(p.name for p in staging.glob(f"{spec.name}.onnx*"))
                checks.append(trt_check.check_graph(path, name=spec.name, modules=parsers))
                entries.append({**_concrete_dtypes(spec.to_dict(), DTYPES[dtype]), "file": f"{spec.name}.onnx",
                                **trt_check.manifest_entries(checks[-1]),
                                **({"int4_matmuls": checks[-1].lint.op_counts.get("DequantizeLinear", 0)}
                                   if int4 else {}),
                                "sha256": {name: sha256(staging / name) for name in files},
                                "bytes": sum((staging / name).stat().st_size for name in files),
                                "export_seconds": round(time.perf_counter() - started, 2)})
            inputs_sections = export_processor(processor, staging, anyres=facts.anyres)
            processor_files = {TOKENIZER_FILE: sha256(staging / TOKENIZER_FILE)}
            for name in _PROCESSOR_FILES:
                if (checkpoint / name).is_file():
                    shutil.copyfile(checkpoint / name, staging / name)
                    processor_files[name] = sha256(staging / name)
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "model": {"id": model, "checkpoint": str(checkpoint.resolve()), "config": config.to_dict(),
                          "facts": facts.__dict__},
                "schedule": schedule.to_dict(),
                # anyres builds keep int(n * ratio) of each image's n tokens: the counts at the extremes
                "keep_counts": (list(schedule.keep_counts(facts.n_image)) if not facts.anyres else
                                {bound: list(schedule.keep_counts(image_tokens[bound])) for bound in ("min", "max")}),
                "dtype": dtype,
                "weights": int4.to_dict() if int4 else {"format": "float", "dtype": dtype},
                "opset": opset,
                "limits": limits,
                "flops": flops_report(model=preset, schedule=schedule).to_dict(),
                "graphs": entries,
                "trt_check": trt_check.summary(checks),  # which checkers ran, and whether every graph passed
                **inputs_sections,
                "processor_files": processor_files,
                "versions": _versions(),
            }
            # what callers get back is exactly what is on disk (tuples become lists)
            manifest = json.loads(json.dumps(manifest, default=str))
            check_processor(processor, Build.from_manifest(staging, manifest), sample_image())
            if validate:
                from .validate import validate_build

                if progress:
                    progress(steps, steps, "validating against the PyTorch reference")
                validation = validate_build(staging, manifest, checkpoint=checkpoint, schedule=schedule)
                manifest["validation"] = json.loads(json.dumps(validation, default=str))
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except DiskFull as exc:  # staged_output has taken back what it wrote; the message gains the size
        raise DiskFull(exc.path, exc.what, remedy=exc.remedy, needed=needed) from None
    except OSError as exc:  # staged_output has taken back what it wrote
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise TransPruneError(f"cannot write --out {out}: {exc.strerror} ({exc.filename}); nothing was written. "
                                  f"Choose another --out") from None
        raise
    return manifest


def _inputs(checkpoint: Path, preset, cache_dir: Path | None) -> dict:
    """What the export reads, which ``--out`` may not be, hold or lie inside."""
    from transprune.checkpoints import hf_hub_cache_dir
    from transprune.synthetic import default_cache_dir

    inputs = {"the checkpoint": checkpoint}
    if preset.synthetic:  # built into, and read from, the transprune cache
        inputs["the transprune cache"] = cache_dir if cache_dir is not None else default_cache_dir()
    elif cache_dir is not None:
        inputs["the cache directory"] = cache_dir
    hub = hf_hub_cache_dir()
    # a hub snapshot's files are links into the cache's blobs: the whole cache is input
    if Path(os.path.realpath(checkpoint)).is_relative_to(os.path.realpath(hub)):
        inputs["the Hugging Face cache"] = hub
    return inputs


def _concrete_dtypes(entry: dict, model_dtype: str) -> dict:
    """The manifest names real types: a spec's "float" (the model dtype) becomes float32/float16."""
    for tensor in (*entry["inputs"], *entry["outputs"]):
        if tensor["dtype"] == "float":
            tensor["dtype"] = model_dtype
    return entry


def _image_token_range(facts, processor) -> dict:
    """{"min", "max"} image tokens one image gives: fixed for LLaVA-1.5; for anyres from one base
    tile alone (an image so thin that unpadding drops every grid row) to the largest grid pinpoint
    filled edge to edge (unpadding only ever removes rows or columns)."""
    if not facts.anyres:
        return {"min": facts.n_image, "max": facts.n_image}
    from transprune.runtime.anyres import AnyresPreprocess, image_feature_count

    from .processor_settings import describe_anyres_processor

    settings = AnyresPreprocess.from_dict(describe_anyres_processor(processor.image_processor))
    side = math.isqrt(facts.tile_tokens)
    most = max(image_feature_count(tuple(pin), settings, patches_per_side=side) for pin in settings.grid_pinpoints)
    return {"min": facts.tile_tokens, "max": most}


def _limits(max_text_tokens: int, *, image_tokens: dict, max_positions: int) -> dict:
    """Sequence limits the build promises (recorded for the runtime and TensorRT profiles)."""
    if not isinstance(max_text_tokens, int) or max_text_tokens < 1:
        raise TransPruneError(f"--max-text-tokens {max_text_tokens!r} must be a positive integer")
    most = image_tokens["max"]
    if max_text_tokens + most > max_positions:
        raise TransPruneError(f"--max-text-tokens {max_text_tokens} plus {most} image tokens exceeds the model's "
                              f"{max_positions} positions; use at most {max_positions - most}")
    return {"max_text_tokens": max_text_tokens, "max_prompt_tokens": max_text_tokens + most,
            "max_total_tokens": max_positions, "image_tokens": dict(image_tokens)}


def _estimated_bytes(weights, dtype: str, int4=None) -> int:
    """Bytes the graphs will take: every checkpoint tensor once in the export dtype, or in half a
    byte plus its share of a scale where ``int4`` quantizes it (plus the few weights the scorers
    repeat, covered by the margin the caller adds)."""
    total = 0
    for name in weights.names():
        shape, _ = weights.describe(name)
        count = 1
        for size in shape:
            count *= size
        quantized = int4 is not None and int4.quantizes(name)
        total += count // 2 + count * _BYTES_PER[dtype] // int4.block_size if quantized else count * _BYTES_PER[dtype]
    return total


def _int4_scheme(weight_format: str, block_size: int | None, parts: tuple[str, ...] | None):
    """The int4 scheme of ``--weights int4`` (None for float weights), its flags checked."""
    from .int4 import DEFAULT_BLOCK_SIZE, DEFAULT_PARTS, Int4Weights

    if weight_format not in WEIGHT_FORMATS:
        raise TransPruneError(f"--weights {weight_format!r} is not supported; use one of {', '.join(WEIGHT_FORMATS)}")
    if weight_format == "float":
        if block_size is not None or parts is not None:
            raise TransPruneError("--block-size and --int4-parts apply to --weights int4 only; add --weights int4 "
                                  "or drop them")
        return None
    return Int4Weights(block_size=DEFAULT_BLOCK_SIZE if block_size is None else block_size,
                       parts=DEFAULT_PARTS if parts is None else tuple(parts))


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed * 1.1:
        raise TransPruneError(f"{directory} has {free / 1e9:.1f} GB free but the export needs about "
                              f"{needed * 1.1 / 1e9:.1f} GB; free space or pass --out on another disk")


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"transprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0]}
