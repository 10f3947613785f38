"""Measurement helpers shared by both sides of the benchmark.

Standard library only, so the mlplat process and the Feast process (separate
virtual environments) time and weigh their work with the very same code
(:func:`fresh_platform`, for the mlplat side alone, imports mlplat when called).
Peak memory uses Linux's ``/proc`` (``clear_refs`` resets the high-water mark).
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATUS = Path("/proc/self/status")


def latencies(call: Callable[[int], Any], calls: int, warmup: int) -> list[float]:
    """Seconds taken by ``call(i)`` for i in range(calls), after ``warmup`` untimed calls."""
    return interleaved_latencies([call], calls, warmup)[0]


def interleaved_latencies(functions: Sequence[Callable[[int], Any]], calls: int, warmup: int) -> list[list[float]]:
    """Seconds per call of each function, taking turns call by call so that load changes hit all alike."""
    for i in range(warmup):
        for function in functions:
            function(i)
    samples: list[list[float]] = [[] for _ in functions]
    for i in range(warmup, warmup + calls):
        for function, times in zip(functions, samples):
            start = time.perf_counter()
            function(i)
            times.append(time.perf_counter() - start)
    return samples


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``samples``."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def latency_summary(samples: list[float], prefix: str) -> dict[str, float]:
    """``{prefix}_p50`` and ``{prefix}_p99`` in seconds."""
    return {f"{prefix}_p50": percentile(samples, 50), f"{prefix}_p99": percentile(samples, 99)}


def median_time(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` runs of ``call`` and the last run's result."""
    times, result = [], None
    for _ in range(repeats):
        result = None  # free the previous result before the next run
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.M).group(1))


def timed_with_peak(call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Median time of ``call`` and the process's peak RSS while it ran.

    ``peak_mib`` is the peak above the resident size just before the first run
    (data loaded, libraries imported); ``peak_total_mib`` is the absolute peak.
    """
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    seconds, result = median_time(call, repeats)
    peak = _status_kib("VmHWM")
    return {"seconds": seconds, "peak_mib": (peak - before) / 1024, "peak_total_mib": peak / 1024, "result": result}


def checksum(values: Any) -> dict[str, float]:
    """Rows with a value and their sum: a cheap check that two joins agree."""
    present = values[values.notna()]
    return {"count": int(len(present)), "sum": float(present.astype("float64").sum())}


def machine_line() -> str:
    """Cores, CPU model, load average (call it before the run) and platform, as one line."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores ({model}), load average {load} before the run, {platform.platform()}"


def git_commit(folder: Path) -> str:
    """The checkout's commit (with -dirty when it has changes), so each table says what it measured."""
    found = subprocess.run(["git", "-C", str(folder), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return found.stdout.strip() or "?"


def versions_line(folder: Path, mlplat_version: str, packages: dict[str, str]) -> str:
    """Python, mlplat (with its commit) and each named package's version, as one line."""
    listed = ", ".join(f"{name} {version}" for name, version in packages.items())
    return (f"versions: python {platform.python_version()}, mlplat {mlplat_version} (git {git_commit(folder)}), "
            f"{listed}")


@contextmanager
def fresh_platform(prepare: Callable[[Path], Any]) -> Iterator[Any]:
    """The platform ``prepare(home)`` makes in a fresh temporary home; closed, its services stopped, on leaving."""
    from mlplat import services

    with tempfile.TemporaryDirectory() as folder:
        p = prepare(Path(folder))
        try:
            yield p
        finally:
            p.close()
            services.down(p.settings)
