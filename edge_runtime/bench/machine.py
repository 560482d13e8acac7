"""The machine a benchmark ran on: what it is, and how fast it reads memory."""

from __future__ import annotations

import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.device import DeviceInfo

# Larger than the last-level cache of current server parts (300 MiB on some Xeons), so the
# scan measures DRAM, not cache.
BANDWIDTH_BYTES = 1 << 30


def describe_machine(device: DeviceInfo, threads: int) -> dict[str, Any]:
    """The box and the library versions the figures belong to."""
    versions = {}
    for package in ("onnxruntime", "torch", "transformers", "optimum", "optimum-onnx", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu_model": device.cpu_model,
        "arch": device.arch,
        "isa": sorted(device.isa),
        "avx512_vnni": "avx512_vnni" in device.isa,
        "physical_cores": device.physical_cores,
        "logical_cpus": device.logical_cpus,
        "usable_cpus": device.usable_cpus,
        "threads": threads,
        "memory_total_bytes": device.memory_total_bytes,
        "cache_bytes": _caches(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[str, int]:
    """Bytes of each cache level of the first CPU (L1d, L1i, L2, L3), from sysfs."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    found: dict[str, int] = {}
    for index in sorted(root.glob("index*")):
        try:
            level, kind, size = ((index / n).read_text().strip() for n in ("level", "type", "size"))
            found[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = int(
                size.rstrip("KMG")
            ) * units.get(size[-1:], 1)
        except (OSError, ValueError):
            continue
    return found


def read_bandwidth(threads: int, size: int, repeats: int = 5) -> float:
    """Bytes per second that ``threads`` threads read from memory: median of full scans."""
    data = np.ones(size // 8, dtype=np.uint64)
    chunks = np.array_split(data, threads)

    # max() is the cheapest full-read reduction: it stays memory-bound where sum() does not.
    def scan(chunk: npt.NDArray[np.uint64]) -> int:
        return int(chunk.max())

    with ThreadPoolExecutor(threads) as pool:
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            list(pool.map(scan, chunks))
            times.append(time.perf_counter() - started)
    # The first scan starts the pool's threads.
    return data.nbytes / statistics.median(times[1:])


class OtherLoad:
    """CPU time other processes take while a bench measures: on a 2-core box, any of it skews."""

    def __init__(self, usable_cpus: int):
        self._cpus = usable_cpus
        self._box, self._own = cpu_seconds()
        self._started = time.perf_counter()

    def report(self) -> dict[str, float]:
        """Their CPU seconds since the start, and their share of the box's capacity."""
        box, own = cpu_seconds()
        others = max(0.0, (box - self._box) - (own - self._own))
        capacity = (time.perf_counter() - self._started) * self._cpus
        share = round(others / capacity, 3) if capacity > 0 else 0.0
        return {"cpu_seconds": round(others, 2), "share_of_capacity": share}


def cpu_seconds() -> tuple[float, float]:
    """Busy CPU seconds of the whole box, and of this process with its finished children."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    except (OSError, IndexError):
        fields = []
    # idle and iowait are the 4th and 5th counters; steal is counted as busy on purpose.
    ticks = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))
    own = os.times()
    return ticks / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + (
        own.children_system
    )
