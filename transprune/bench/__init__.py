"""Benchmarks of the exported builds, as a library; ``scripts/bench_runtime.py``,
``scripts/bench_weights.py``, ``scripts/bench_next.py``, ``scripts/soak.py`` and
``scripts/report.py`` are its command lines.

An application layer like :mod:`transprune.cli`: it may use :mod:`transprune.export` and
:mod:`transprune.runtime`, and does so only through :mod:`transprune.bench.export_and_runtime`.
Nothing is imported here, so that ``python -m transprune.bench.rss`` (a peak-RSS probe that must
measure the runtime alone) starts from an empty process.

Shared pieces:

* ``builds``: where a benchmark's builds live, whether one can be reused, exporting it if not;
* ``engines``: the timed engines (the runtime on one build, transformers eager), EOS ignored;
* ``stats``: medians and paired ratios of interleaved runs;
* ``rss``: the one peak-RSS probe, run in a fresh process;
* ``load_time``: the session-load-time probe, run in a fresh process;
* ``machine``: facts about the machine a benchmark ran on;
* ``output``: progress on stderr, JSON files, number cells of markdown tables.

One module per benchmark: ``runtime_vs_hf`` (+ ``runtime_vs_hf_markdown``) for
bench_runtime.py, ``weights`` (+ ``weights_markdown``) for bench_weights.py (fp32, fp16 and int4
weights side by side), ``next_image_sizes`` for bench_next.py, ``soak`` for soak.py (many
generations and threads on one Pipeline, every answer checked), and for report.py ``schedules`` (the
catalogue), ``flops_table``, ``schedule_timing``, ``report`` (everything gathered into one
dict), ``plots`` and ``report_markdown`` (docs/BENCHMARKS.md).
"""
