#!/usr/bin/env python
"""Write a random-weight fp16 LLaVA checkpoint with a real model's configuration, streaming.

    python scripts/make_synthetic_checkpoint.py --out DIR [--model llava-1.5-7b] [--seed 0]
                                                [--shard-gb 2] [--force]

What for: measuring the exporter (peak RSS, wall time) on a 7B-sized model on a machine with
no hub access. The result is a llava-hf checkpoint directory like the one
``transprune.synthetic.build_synthetic_checkpoint`` writes for ``tiny``: config.json,
generation_config.json, sharded safetensors + model.safetensors.index.json, tokenizer and
processor files. It loads with ``LlavaForConditionalGeneration.from_pretrained`` and with
``transprune.export.weights.CheckpointWeights``.

Why not reuse the synthetic builder: it materialises the whole model in fp32 and saves it with
``save_pretrained`` (28 GB of RAM for 7B). Here nothing bigger than a few chunk buffers is ever
in memory:

- tensor names and shapes come from the model built on the ``meta`` device (no storage), passed
  through the same helpers ``save_pretrained`` uses (tied-weight removal and the reverse weight
  renaming), so the files carry exactly the names ``save_pretrained`` would write;
- the safetensors files are written by hand (the format is a length-prefixed JSON header
  followed by the raw tensor bytes), because ``safetensors.save_file`` needs every tensor of a
  shard in memory at once; each tensor is generated chunk by chunk and its bytes appended.

Values: seeded N(0, std) in fp16, with the stds of ``transprune.synthetic`` (language model and
projector: ``text_initializer_range(hidden)``; CLIP: what CLIP's own init draws, with
``VISION_INIT_RANGE`` for its embeddings); norm weights 1, biases 0. Random numbers come from
``torch.Generator``: numpy's own float32 -> float16 cast runs at ~70 ns per element here (no
hardware path), which would take ~8 minutes for 7B, while torch fills an fp16 buffer directly
at ~4 ns per element. Each tensor gets its own generator, seeded from (--seed, tensor index).
The same arguments give byte-identical files (with the same torch version).

Exit status: 0 done, 1 error (e.g. not enough free disk), 2 usage error (e.g. --out exists
without --force), 130 interrupted. Nothing is left behind on failure: everything is written
into a temporary sibling of --out, renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from transprune.presets import PRESETS, ModelPreset
from transprune.synthetic import (
    VISION_INIT_RANGE,
    _hf_tokenizer,
    _llava_config,
    _processor,
    build_tokenizer,
    text_initializer_range,
)

# Presets with real (downloadable) weights that LlavaForConditionalGeneration loads.
MODELS = sorted(n for n, p in PRESETS.items() if not p.synthetic and p.architecture == "llava")

# Elements per generated chunk: 32 MB of fp16. Three such buffers are in flight at most (one
# being filled, two queued for the disk), so weights never take more than ~100 MB of memory.
CHUNK = 16 << 20
N_BUFFERS = 3

GB = 1e9  # decimal, as transformers' "2GB" shard sizes and `df -H`
SPACE_MARGIN = 1.05  # the tokenizer/config files, filesystem overhead


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    """One tensor of the checkpoint: where it goes and how its values are drawn."""

    name: str
    shape: tuple[int, ...]
    init: str  # "normal", "ones" or "zeros"
    std: float  # for "normal"
    index: int  # position in the checkpoint: seeds this tensor's generator

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 2 * self.numel  # fp16


# --------------------------------------------------------------------------------------------
# Planning: config, tensor list, shards


def model_preset_for(name: str, layers: int | None = None,
                     hidden_size: int | None = None) -> ModelPreset:
    """The preset ``name``, optionally shrunk by the test hooks: ``layers`` text and vision
    layers; a text width of ``hidden_size`` (head size kept, MLP width scaled alike)."""
    preset = PRESETS[name]
    text, vision = preset.text, preset.vision
    if layers is not None:
        text = dataclasses.replace(text, num_layers=layers)
        vision = dataclasses.replace(vision, num_layers=layers)
    if hidden_size is not None:
        heads = max(1, hidden_size // text.head_dim)
        text = dataclasses.replace(
            text, hidden_size=heads * text.head_dim, num_heads=heads,
            num_kv_heads=max(1, heads * text.num_kv_heads // text.num_heads),
            intermediate_size=8 * round(text.intermediate_size * heads / text.num_heads / 8),
        )
    return dataclasses.replace(preset, text=text, vision=vision)


def llava_config(preset: ModelPreset):
    """The LlavaConfig of ``preset``, as the synthetic builder makes it, marked fp16."""
    config = _llava_config(
        preset, text_init=text_initializer_range(preset.text.hidden_size),
        vision_init=VISION_INIT_RANGE,
    )
    # save_pretrained would record these from the model object; we never build a real one.
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = "float16"
    return config


def saved_tensors(config) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor ``save_pretrained`` would write for ``config``, in its order.

    The model is built on the meta device (shapes only, no memory). ``save_pretrained`` then
    drops keys the model asks to ignore, drops tied duplicates (for llava-1.5
    ``tie_word_embeddings`` is False, so lm_head stays), and reverts transformers 5's weight
    renaming (``model.language_model.*`` is saved as ``language_model.model.*``); we call the
    same helpers so the names cannot drift from what it writes.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    try:
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError as exc:  # private helpers of save_pretrained (transformers 5.x)
        import transformers

        raise RuntimeError(
            f"transformers {transformers.__version__} lacks the save_pretrained helpers this "
            f"script uses ({exc}); it was written against transformers 5.x"
        ) from None

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    state = model.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    state = remove_tied_weights_from_state_dict(state, model)
    state = revert_weight_conversion(model, state)
    return [(name, tuple(t.shape)) for name, t in state.items()]


_NORM_WEIGHT = re.compile(r"(norm|layrnorm|layer_norm\d*)\.weight$")  # RMSNorm and LayerNorm
_VISION = "vision_tower."


def init_for(name: str, preset: ModelPreset) -> tuple[str, float]:
    """How ``name`` is initialised: ("normal", std), ("ones", 0) or ("zeros", 0).

    Mirrors what the synthetic builder gets from transformers' init: the language model and the
    projector draw from text_initializer_range (LlavaConfig passes the text initializer_range
    to the projector); CLIP scales its Linear layers by width and depth (CLIPPreTrainedModel's
    init, initializer_factor 1) and draws its patch and position embeddings from
    VISION_INIT_RANGE.
    """
    if name.endswith(".bias"):
        return "zeros", 0.0
    if _NORM_WEIGHT.search(name):
        return "ones", 0.0
    if not name.startswith(_VISION):
        return "normal", text_initializer_range(preset.text.hidden_size)
    d, depth = preset.vision.hidden_size, preset.vision.num_layers
    in_proj = d**-0.5 * (2 * depth) ** -0.5
    for pattern, std in (
        ("class_embedding", d**-0.5),
        ("patch_embedding.", VISION_INIT_RANGE),
        ("position_embedding.", VISION_INIT_RANGE),
        ("self_attn.out_proj.", d**-0.5),
        ("self_attn.", in_proj),  # q/k/v
        ("mlp.fc1.", (2 * d) ** -0.5),
        ("mlp.fc2.", in_proj),
    ):
        if pattern in name:
            return "normal", std
    return "normal", VISION_INIT_RANGE  # a vision tensor this table does not know


def plan_tensors(preset: ModelPreset, config) -> list[TensorPlan]:
    plans = []
    for index, (name, shape) in enumerate(saved_tensors(config)):
        init, std = init_for(name, preset)
        plans.append(TensorPlan(name, shape, init, std, index))
    return plans


def plan_shards(tensors: list[TensorPlan], shard_bytes: int) -> list[list[TensorPlan]]:
    """Fill shards greedily in order; a tensor bigger than a shard gets one of its own."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    """save_pretrained's file names: one file unsharded, else model-0000i-of-0000n."""
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


# --------------------------------------------------------------------------------------------
# Writing


def safetensors_header(tensors: list[TensorPlan]) -> bytes:
    """The safetensors prefix: u64 little-endian header length, then the JSON header.

    Offsets are relative to the end of the header and must tile the data exactly, in the order
    the bytes are written. The JSON is padded with spaces to a multiple of 8 so the data that
    follows is aligned (the safetensors library does the same).
    """
    header: dict = {"__metadata__": {"format": "pt"}}  # "pt": transformers checks for it
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": "F16", "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


class ChunkWriter:
    """Appends fp16 buffers to a file on a second thread.

    Generating a chunk and writing one both release the GIL, so with the write in the
    background the disk and the random number generator work at the same time. Buffers are
    recycled round-robin; a buffer is handed out again only once its last write has finished.
    """

    def __init__(self) -> None:
        import torch

        self._buffers = [torch.empty(CHUNK, dtype=torch.float16) for _ in range(N_BUFFERS)]
        self._pending: list[Future | None] = [None] * N_BUFFERS
        self._next = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")

    def buffer(self):
        """A free buffer (waits for its previous write; re-raises that write's error)."""
        i = self._next
        if self._pending[i] is not None:
            self._pending[i].result()
            self._pending[i] = None
        return self._buffers[i]

    def write(self, f, n: int) -> None:
        """Queue the first ``n`` elements of the buffer last returned by ``buffer()``."""
        i = self._next
        data = self._buffers[i][:n].numpy()  # a view: no copy
        self._pending[i] = self._pool.submit(f.write, data)
        self._next = (i + 1) % N_BUFFERS

    def drain(self) -> None:
        """Wait for every queued write (before closing or seeking the file)."""
        for i, fut in enumerate(self._pending):
            if fut is not None:
                self._pending[i] = None
                fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def tensor_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for tensor ``index``: hashed, so --seed 1 is not --seed 0 shifted."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def _write_tensor(f, t: TensorPlan, seed: int, writer: ChunkWriter) -> None:
    """Append the bytes of ``t`` to ``f``, chunk by chunk (tests replace this to inject errors)."""
    import torch

    gen = torch.Generator().manual_seed(tensor_seed(seed, t.index))
    left = t.numel
    while left:
        n = min(left, CHUNK)
        buf = writer.buffer()[:n]
        if t.init == "normal":
            buf.normal_(0.0, t.std, generator=gen)
        else:
            buf.fill_(1.0 if t.init == "ones" else 0.0)
        writer.write(f, n)
        left -= n


class Progress:
    """Tensors and GB written, on one stderr line (a TTY) or a line per shard (a log)."""

    def __init__(self, n_tensors: int, total_bytes: int) -> None:
        self.n_tensors, self.total = n_tensors, total_bytes
        self.tensors = self.bytes = 0
        self.start = self._last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def _line(self) -> str:
        rate = self.bytes / GB / max(time.monotonic() - self.start, 1e-9)
        return (f"{self.tensors}/{self.n_tensors} tensors, {self.bytes / GB:.2f}/"
                f"{self.total / GB:.2f} GB, {rate:.2f} GB/s")

    def tensor_done(self, t: TensorPlan) -> None:
        self.tensors += 1
        self.bytes += t.nbytes
        now = time.monotonic()
        if self.tty and now - self._last > 0.2:
            self._last = now
            print(f"\r  {self._line()}", end="", file=sys.stderr, flush=True)

    def shard_done(self, name: str) -> None:
        prefix = "\r" if self.tty else ""
        print(f"{prefix}  wrote {name}: {self._line()}", file=sys.stderr, flush=True)


def write_weights(out: Path, tensors: list[TensorPlan], *, seed: int, shard_bytes: int,
                  progress: Progress) -> None:
    """Write the safetensors shards (and the index when there are several) into ``out``."""
    shards = plan_shards(tensors, shard_bytes)
    names = shard_names(len(shards))
    writer = ChunkWriter()
    try:
        for name, shard in zip(names, shards):
            header = safetensors_header(shard)
            with open(out / name, "wb") as f:
                f.write(header)
                for t in shard:
                    _write_tensor(f, t, seed, writer)
                    progress.tensor_done(t)
                writer.drain()
                expected = len(header) + sum(t.nbytes for t in shard)
                if f.tell() != expected:  # a short write would make an unreadable shard
                    raise OSError(f"{name}: wrote {f.tell()} bytes, expected {expected}")
            progress.shard_done(name)
    finally:
        writer.close()
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: name for name, shard in zip(names, shards) for t in shard},
        }
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_side_files(out: Path, preset: ModelPreset, config, *, seed: int) -> None:
    """config.json, generation_config.json, tokenizer and processor files, as the synthetic
    builder writes them (its tokenizer: trained here in well under a second)."""
    from transformers import GenerationConfig

    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    tok = build_tokenizer(preset.text.vocab_size, seed=seed)
    if tok.get_vocab_size() > preset.text.vocab_size:
        raise AssertionError("tokenizer vocabulary larger than the model's")
    _processor(_hf_tokenizer(tok, preset), preset).save_pretrained(out)


# --------------------------------------------------------------------------------------------
# CLI


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _parse_args(argv):
    p = argparse.ArgumentParser(
        description="Write a random-weight fp16 LLaVA checkpoint (llava-hf layout) with a real "
                    "model's configuration, without holding the weights in memory.",
    )
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory to create")
    p.add_argument("--model", default="llava-1.5-7b", choices=MODELS,
                   help="configuration to copy (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and tokenizer (default: 0)")
    p.add_argument("--shard-gb", type=float, default=2.0,
                   help="maximum safetensors shard size in GB of 1e9 bytes (default: 2)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (only a checkpoint directory or an empty one)")
    # Test hooks, so tests write tens of MB instead of 14 GB: fewer text and vision layers, a
    # narrower language model (rounded down to whole attention heads of the preset's size).
    p.add_argument("--layers", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--hidden-size", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.shard_gb <= 0:
        p.error("--shard-gb must be positive")
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be >= 1")
    if args.hidden_size is not None and args.hidden_size < 1:
        p.error("--hidden-size must be >= 1")
    return args


def _fail(message: str, code: int) -> int:
    print(f"make_synthetic_checkpoint: error: {message}", file=sys.stderr)
    return code


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main(argv=None) -> int:
    args = _parse_args(argv)
    if sys.byteorder != "little":  # buffers are written as they lie in memory; F16 is LE
        return _fail("big-endian hosts are not supported", 1)
    started = time.monotonic()
    out = args.out.expanduser().absolute()

    # Refuse before any slow work. --force only ever deletes what looks like our output.
    if out.exists() or out.is_symlink():
        if not args.force:
            return _fail(f"{out} already exists; pass --force to replace it", 2)
        if not out.is_dir() or out.is_symlink() or not (
            (out / "config.json").is_file() or not any(out.iterdir())
        ):
            return _fail(f"{out} exists and is not a checkpoint directory (no config.json); "
                         f"refusing to delete it even with --force", 2)

    preset = model_preset_for(args.model, args.layers, args.hidden_size)
    config = llava_config(preset)
    tensors = plan_tensors(preset, config)
    total = sum(t.nbytes for t in tensors)
    n_params = sum(t.numel for t in tensors)

    out.parent.mkdir(parents=True, exist_ok=True)
    need = int(total * SPACE_MARGIN)
    free = shutil.disk_usage(out.parent).free
    if out.exists() and out.stat().st_dev == out.parent.stat().st_dev:
        free += _dir_bytes(out)  # --force frees it before writing
    if free < need:
        return _fail(f"not enough free disk space under {out.parent}: need {need / GB:.2f} GB "
                     f"({total / GB:.2f} GB of weights + 5%), {free / GB:.2f} GB free", 1)
    if out.exists():
        print(f"removing existing {out} (--force)", file=sys.stderr)
        shutil.rmtree(out)

    shrunk = []
    if args.layers is not None:
        shrunk.append(f"{args.layers} layers")
    if args.hidden_size is not None:
        shrunk.append(f"text width {preset.text.hidden_size}")
    label = f"{args.model} ({', '.join(shrunk)})" if shrunk else args.model
    print(f"writing {label}: "
          f"{len(tensors)} tensors, {n_params / 1e9:.2f}e9 params, {total / GB:.2f} GB fp16 "
          f"-> {out}", file=sys.stderr)
    # SIGTERM (e.g. a job timeout) should clean up too; handlers only exist on the main thread.
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        write_side_files(tmp, preset, config, seed=args.seed)
        write_weights(tmp, tensors, seed=args.seed, shard_bytes=int(args.shard_gb * GB),
                      progress=Progress(len(tensors), total))
        # Ordinary permissions (mkdtemp makes 0700), as the synthetic builder leaves them.
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.rename(tmp, out)  # atomic; fails if something appeared at out meanwhile
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        print("\ninterrupted; removed the partial checkpoint", file=sys.stderr)
        return 130
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, old_term)

    wall = time.monotonic() - started
    print(f"checkpoint: {out}")
    print(f"size:       {total / GB:.2f} GB ({total} bytes of weights)")
    print(f"params:     {n_params} ({n_params / 1e9:.3f}e9)")
    print(f"wall time:  {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
