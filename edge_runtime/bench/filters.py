"""`bench filters`: router → device-auth → rate-limit per request, fast path beside public API."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edge_runtime.bench.machine import describe_machine
from edge_runtime.bench.report import markdown_table, times
from edge_runtime.config import FilterHostSettings, FilterSettings
from edge_runtime.device import probe
from edge_runtime.filters.loader import EngineOptions, ModuleCache, make_engine
from edge_runtime.filters.service import FilterService
from edge_runtime.filters.stream import HttpStream

CHAIN = ("router", "device-auth", "rate-limit")
CONFIGS = {
    "router": {
        "default": "orchestrate",
        "rules": [
            {"path_prefix": "edge/req/diag", "route": "echo"},
            {"keywords": ["weather", "remind"], "route": "orchestrate"},
        ],
    },
    "device-auth": {"header": "x-api-key", "keys": {"sensor-1": "s3cret"}},
    # A bucket no benchmark can empty: every request takes the full path through the chain.
    "rate-limit": {"rate_per_second": 1_000_000, "burst": 1_000_000},
}


@dataclass(frozen=True, slots=True)
class FilterBenchArgs:
    """What `bench filters` measures."""

    json: bool = False
    filters_dir: Path = Path("filters")
    requests: int = 3000
    warmup: int = 300
    loads: int = 20
    deadline_ms: float = 50.0

    def __post_init__(self) -> None:
        if self.requests < 100 or self.loads < 1:
            raise ValueError("requests must be >= 100 and loads >= 1")


def _stream() -> HttpStream:
    return HttpStream(
        request_headers=[
            (b":method", b"PUBLISH"),
            (b":path", b"edge/req/sensor-1"),
            (b":authority", b"sensor-1"),
            (b":scheme", b"mqtt"),
            (b"content-type", b"application/json"),
            (b"x-api-key", b"s3cret"),
        ],
        request_body=bytearray(b'{"prompt": "What will the weather be tomorrow?"}'),
        response_headers=[(b":status", b"200"), (b"content-type", b"application/json")],
        response_body=bytearray(b'{"text": "Sunny, 21 degrees."}'),
        properties={"device.id": b"sensor-1", "request.protocol": b"mqtt"},
    )


def _settings(args: FilterBenchArgs) -> list[FilterSettings]:
    return [
        FilterSettings(
            name=name,
            module=args.filters_dir / f"{name}.wasm",
            config=json.dumps(CONFIGS[name]),
            log_level="info",
            # Armed on every callback as in production, but loose enough that a slow public-API
            # call on a noisy box is measured rather than killed.
            deadline_ms=args.deadline_ms,
        )
        for name in CHAIN
    ]


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def _exchange_times(args: FilterBenchArgs, fast: bool, cache: Path) -> dict[str, Any]:
    service = FilterService(FilterHostSettings(cache_dir=cache, fast_path=fast))
    try:
        service.load(_settings(args))
        samples: list[float] = []
        for index in range(args.warmup + args.requests):
            stream = _stream()
            started = time.perf_counter()
            service.run(stream)
            elapsed = time.perf_counter() - started
            if stream.local_response is not None:
                raise RuntimeError(f"the chain answered locally: {stream.local_response}")
            if index >= args.warmup:
                samples.append(elapsed * 1e6)
    finally:
        service.close()
    samples.sort()
    return {
        "fast_path": fast,
        "p50_us": round(_percentile(samples, 0.50), 1),
        "p99_us": round(_percentile(samples, 0.99), 1),
        "mean_us": round(statistics.fmean(samples), 1),
        "requests": len(samples),
    }


def _fuel_per_exchange(args: FilterBenchArgs, cache: Path) -> dict[str, int]:
    """Wasm instructions (fuel) each filter spends per exchange: a figure noise cannot move."""
    metered = [FilterSettings(**{**s.model_dump(), "fuel": 10**12}) for s in _settings(args)]
    service = FilterService(FilterHostSettings(cache_dir=cache))
    try:
        service.load(metered)
        for _ in range(args.warmup):
            service.run(_stream())
        before = {s.name: s.instance().fuel_used for s in service.chain.filters}
        count = 200
        for _ in range(count):
            service.run(_stream())
        return {
            s.name: (s.instance().fuel_used - before[s.name]) // count
            for s in service.chain.filters
        }
    finally:
        service.close()


def _load_times(args: FilterBenchArgs, cache: Path) -> dict[str, Any]:
    """Per filter: compile from wasm bytes (cold) and deserialize from the disk cache."""
    options = EngineOptions()
    engine = make_engine(options)
    rows: dict[str, Any] = {}
    for name in CHAIN:
        path = args.filters_dir / f"{name}.wasm"
        cold, cached = [], []
        for repeat in range(args.loads):
            directory = cache / f"load-{name}-{repeat}"
            started = time.perf_counter()
            ModuleCache(engine, options, directory).load(path, name)
            cold.append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            ModuleCache(engine, options, directory).load(path, name)
            cached.append((time.perf_counter() - started) * 1e3)
        rows[name] = {
            "bytes": path.stat().st_size,
            "cold_ms": round(statistics.median(cold), 2),
            "cached_ms": round(statistics.median(cached), 2),
        }
    return rows


def run(args: FilterBenchArgs, out: TextIO) -> dict[str, Any]:
    """Measure both paths and module loading; print a table unless ``args.json``."""
    device = probe()
    with tempfile.TemporaryDirectory(prefix="edge-bench-filters-") as tmp:
        cache = Path(tmp)
        fast = _exchange_times(args, True, cache / "fast")
        public = _exchange_times(args, False, cache / "public")
        loads = _load_times(args, cache)
        fuel = _fuel_per_exchange(args, cache / "fuel")
    result = {
        "machine": describe_machine(device, 1),
        "chain": list(CHAIN),
        "exchange": {"fast": fast, "public": public},
        "speedup_p50": round(public["p50_us"] / fast["p50_us"], 2),
        "speedup_p99": round(public["p99_us"] / fast["p99_us"], 2),
        "load": loads,
        "fuel_per_exchange": fuel,
    }
    if not args.json:
        out.write(render(result) + "\n")
    return result


def render(result: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = [
        f"Chain: {' → '.join(result['chain'])}; one request and its response per exchange "
        "(context create, request headers and body, response headers and body, done, log, "
        "delete), epoch deadline armed on every callback",
        "",
    ]
    body = []
    for key in ("fast", "public"):
        row = result["exchange"][key]
        label = "unchecked entry points" if key == "fast" else "public wasmtime-py API"
        body.append(
            [label, f"{row['p50_us']:.1f}", f"{row['p99_us']:.1f}", f"{row['mean_us']:.1f}"]
        )
    lines += markdown_table(["path", "p50 µs", "p99 µs", "mean µs"], body, left=1)
    lines += [
        "",
        f"fast path vs public API: p50 {times(result['speedup_p50'])}, "
        f"p99 {times(result['speedup_p99'])}",
        "",
    ]
    load_rows = [
        [name, f"{row['bytes'] / 1024:.1f}", f"{row['cold_ms']:.2f}", f"{row['cached_ms']:.2f}"]
        for name, row in result["load"].items()
    ]
    lines += markdown_table(
        ["filter", "KiB", "compile ms", "from cache ms", "wasm fuel / exchange"],
        [[*row, f"{result['fuel_per_exchange'][row[0]]:,}"] for row in load_rows],
        left=1,
    )
    return "\n".join(lines)
