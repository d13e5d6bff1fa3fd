"""Peak RSS of one engine, measured in a fresh process: ``python -m transprune.bench.rss``.

Each engine's peak memory is measured in a process of its own, so that the engines a benchmark
holds side by side do not contaminate each other. The probe (this module run with ``-m``) loads
one engine, either the runtime on a build (``--build DIR``) or transformers (``--hf MODEL``), runs
one generation and prints one JSON line; :func:`peak_rss_in_fresh_process` starts it and reads
that line back.

Linux carries ru_maxrss across fork and exec: a child starts with its parent's high-water mark
(here the benchmark process, which may hold several models), so ru_maxrss alone would report the
parent's peak whenever that is the larger. VmHWM belongs to the address space exec created and is
the probe's own; it is the figure reported (``peak_rss_bytes``) where it exists, ru_maxrss is kept
next to it.

This module and what it imports stay torch-free until ``--hf`` asks for transformers: the probe of
a runtime build reports whether torch was imported, and it must not have been.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from .engines import DEFAULT_PROMPT, HFEngine, RuntimeEngine

MODULE = "transprune.bench.rss"  # what the parent runs with ``python -m``


def ru_maxrss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def vm_hwm_bytes() -> int | None:
    """Linux: this process's own peak RSS (VmHWM of /proc/self/status); None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss_bytes() -> int | None:
    """Linux: this process's resident set size now (resident pages of /proc/self/statm); None
    elsewhere. Cheap (one small read), so it can be sampled after every generation."""
    import os

    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


# -- the parent's side ---------------------------------------------------------------------------

def peak_rss_in_fresh_process(*, build: str | Path | None = None, hf_model: str | None = None, threads: int,
                              new_tokens: int, prompt: str = DEFAULT_PROMPT,
                              int4_accuracy_level: int | None = None) -> dict:
    """Runs the probe on ``build`` (the runtime) or ``hf_model`` (transformers) in a new Python
    process and returns its reading (see :func:`probe`). RuntimeError if the probe fails.
    ``int4_accuracy_level``: the runtime's onnxruntime option of that name (None: its default)."""
    if (build is None) == (hf_model is None):
        raise ValueError("give exactly one of build and hf_model")
    target = ["--build", str(build)] if build is not None else ["--hf", hf_model]
    command = [sys.executable, "-m", MODULE, *target, "--threads", str(threads), "--new-tokens", str(new_tokens),
               "--prompt", prompt]
    if int4_accuracy_level is not None:
        command += ["--int4-accuracy-level", str(int4_accuracy_level)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the peak-RSS probe of {target[1]} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return json.loads(lines[-1])


# -- the probe's side ----------------------------------------------------------------------------

def probe(*, build: Path | None, hf_model: str | None, threads: int, new_tokens: int, prompt: str,
          ru_maxrss_at_start: int, int4_accuracy_level: int | None = None) -> dict:
    """Loads one engine, runs one generation of ``new_tokens`` tokens, and reads this process's peak RSS."""
    from transprune.sample_image import sample_image

    image = sample_image()
    if hf_model is not None:
        engine = HFEngine(hf_model, threads, image, prompt)
    else:
        engine = RuntimeEngine(Path(build), threads, int4_accuracy_level=int4_accuracy_level)
    result = engine.run(image, prompt, new_tokens)
    hwm, maxrss = vm_hwm_bytes(), ru_maxrss_bytes()
    return {"peak_rss_bytes": hwm if hwm is not None else maxrss, "vm_hwm_bytes": hwm, "ru_maxrss_bytes": maxrss,
            "ru_maxrss_at_start_bytes": ru_maxrss_at_start, "load_s": round(engine.load_s, 3),
            "generate_ms": result["wall_ms"], "new_tokens": result["new_tokens"],
            "torch_imported": "torch" in sys.modules}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--build", type=Path, metavar="DIR", help="the runtime (onnxruntime) on this build")
    target.add_argument("--hf", metavar="MODEL", help="transformers eager on this model preset or checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    parser.add_argument("--new-tokens", type=int, default=1, help="tokens the one generation makes (default: 1)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question about the sample picture")
    parser.add_argument("--int4-accuracy-level", type=int, default=None,
                        help="--build: how onnxruntime computes the int4 MatMuls it fuses (default: its own)")
    return parser


def main(argv: list[str] | None = None) -> int:
    at_start = ru_maxrss_bytes()
    args = build_parser().parse_args(argv)
    print(json.dumps(probe(build=args.build, hf_model=args.hf, threads=args.threads, new_tokens=args.new_tokens,
                           prompt=args.prompt, ru_maxrss_at_start=at_start,
                           int4_accuracy_level=args.int4_accuracy_level)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
