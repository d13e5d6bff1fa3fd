"""Session load time of one build, measured in a fresh process: ``python -m transprune.bench.load_time``.

A process that has already opened a build keeps what onnxruntime and the allocator set up (and
the interpreter's imports), so a second open in it says little about what a user waits for. The
probe (this module run with ``-m``) imports the runtime, then times opening the build once:
``Pipeline.from_dir(verify=False)``, i.e. reading the manifest, the tokenizer and creating one
onnxruntime session per graph, with the graph optimizations onnxruntime runs at load (fusing the
int4 ``DequantizeLinear + MatMul`` pairs, prepacking weights). sha256 verification is left out: it
reads every byte once and is the same work for any form of weights of the same size. It prints one
JSON line; :func:`load_time_in_fresh_process` starts it and reads that line back.

The graph files are read from the page cache when a benchmark has just used them (warm cache);
that is the figure reported, since a cold read measures the disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODULE = "transprune.bench.load_time"


def load_time_in_fresh_process(build: str | Path, *, threads: int, int4_accuracy_level: int | None = None) -> dict:
    """Runs the probe on ``build`` in a new Python process; -> its reading (see :func:`probe`).
    RuntimeError if the probe fails."""
    command = [sys.executable, "-m", MODULE, "--build", str(build), "--threads", str(threads)]
    if int4_accuracy_level is not None:
        command += ["--int4-accuracy-level", str(int4_accuracy_level)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the load-time probe of {build} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


def probe(build: Path, *, threads: int, int4_accuracy_level: int | None = None) -> dict:
    """Imports the runtime, then opens ``build`` once and closes it. -> {"load_s", "import_s", "graphs"}."""
    started = time.perf_counter()
    from .export_and_runtime import import_runtime, open_pipeline

    import_runtime()  # before the clock starts: imports are not the build's cost
    imported = time.perf_counter()
    opened = open_pipeline(build, threads=threads, verify=False, int4_accuracy_level=int4_accuracy_level)
    load_s = time.perf_counter() - imported
    graphs = len(opened.build.graphs)
    opened.close()
    return {"load_s": round(load_s, 4), "import_s": round(imported - started, 4), "graphs": graphs,
            "torch_imported": "torch" in sys.modules}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, required=True, metavar="DIR", help="the build to open")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: 1)")
    parser.add_argument("--int4-accuracy-level", type=int, default=None,
                        help="how onnxruntime computes the int4 MatMuls it fuses (default: its own)")
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.build, threads=args.threads, int4_accuracy_level=args.int4_accuracy_level)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
