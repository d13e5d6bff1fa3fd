"""``export_model``: checkpoint + schedule -> a validated build directory.

Writes into a temporary sibling directory and renames it into place only after every graph has
been exported (and, by default, validated), so a failure never leaves a half-written build.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from transprune import __version__
from transprune.errors import TransPruneError
from transprune.schedule import Schedule

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_DTYPES = {"fp32": "float32", "fp16": "float16"}
_PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "preprocessor_config.json", "processor_config.json", "chat_template.json",
                    "chat_template.jinja")


def export_model(*, model: str = "tiny", out: Path, schedule: Schedule, dtype: str = "fp32", opset: int = 18,
                 force: bool = False, validate: bool = True, cache_dir: Path | None = None,
                 progress=None) -> dict:
    """Exports ``model`` pruned by ``schedule`` into ``out``; returns the manifest."""
    import torch
    import transformers

    from transprune.checkpoints import resolve_checkpoint

    from .builder import build_module, model_facts
    from .onnx_writer import example_inputs, export_graph, sha256
    from .specs import graph_specs
    from .trt_lint import lint_model
    from .weights import CheckpointWeights

    out = Path(out)
    if dtype not in _DTYPES:
        raise TransPruneError(f"--dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)}")
    if not 18 <= opset <= 20:
        raise TransPruneError(f"--opset {opset} is outside 18..20 (18 is the exporter's minimum, "
                              f"20 TensorRT 10's maximum)")
    if out.exists() and not force:
        raise TransPruneError(f"{out} already exists; pass --force to replace it")
    checkpoint, _ = resolve_checkpoint(model, cache_dir=cache_dir)
    config = transformers.LlavaConfig.from_pretrained(checkpoint, local_files_only=True)
    facts = model_facts(config)
    schedule.check_model(num_layers=facts.num_layers, n_image=facts.n_image)
    specs = graph_specs(facts, schedule)
    torch_dtype = getattr(torch, _DTYPES[dtype])
    weights = CheckpointWeights(checkpoint)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = []
        for number, spec in enumerate(specs, 1):
            started = time.perf_counter()
            if progress:
                progress(number, len(specs), spec.name)
            module, variadic_from = build_module(spec, weights, config, schedule, torch_dtype)
            args = example_inputs(spec, torch_dtype, n_image=facts.n_image, image_token_id=facts.image_token_id)
            path = staging / f"{spec.name}.onnx"
            export_graph(module, spec, path, args=args, opset=opset, variadic_from=variadic_from)
            del module
            files = sorted(p.name for p in staging.glob(f"{spec.name}.onnx*"))
            lint = lint_model(path, name=spec.name)
            entries.append({**spec.to_dict(), "file": f"{spec.name}.onnx",
                            "trt_lint": {"ok": lint.ok, "errors": [i.message for i in lint.errors],
                                         "warnings": [i.message for i in lint.warnings]},
                            "sha256": {name: sha256(staging / name) for name in files},
                            "export_seconds": round(time.perf_counter() - started, 2)})
        for name in _PROCESSOR_FILES:
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, staging / name)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "model": {"id": model, "config": config.to_dict(), "facts": facts.__dict__},
            "schedule": schedule.to_dict(),
            "keep_counts": list(schedule.keep_counts(facts.n_image)),
            "dtype": dtype,
            "opset": opset,
            "graphs": entries,
            "processor_files": [n for n in _PROCESSOR_FILES if (staging / n).is_file()],
            "versions": _versions(),
        }
        if validate:
            from .validate import validate_chain

            manifest["validation"] = validate_chain(staging, manifest, checkpoint=checkpoint, schedule=schedule)
        # what callers get back is exactly what is on disk (tuples become lists)
        manifest = json.loads(json.dumps(manifest, default=str))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _versions() -> dict:
    import onnx
    import torch
    import transformers

    return {"transprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "python": sys.version.split()[0]}
