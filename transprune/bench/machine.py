"""Facts about the machine a benchmark ran on, recorded next to its timings.

The figures come from shared machines where other work runs meanwhile, so every report keeps the
CPU, the package versions and the load average before and after, to judge them by.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata


def machine_info() -> dict:
    """Platform, CPU count (and how many this process may use), Python and package versions."""
    versions = {}
    for package in ("onnxruntime", "torch", "transformers", "numpy", "transprune"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "versions": versions}


def machine_facts() -> dict:
    """:func:`machine_info` plus the CPU's model name and the total memory (GiB), for a written report."""
    facts = machine_info()
    facts["cpu_model"] = cpu_model() or facts["processor"] or facts["machine"]
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    facts["memory_gib"] = None if total is None else round(total / 2**30, 1)
    return facts


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def loadavg():
    """The 1, 5 and 15 minute load averages; None where the system has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
