"""`bench filters` runs both paths on the shipped chain and reports consistent figures."""

from __future__ import annotations

import io
import json
from pathlib import Path

from edge_runtime.bench.filters import CHAIN, FilterBenchArgs, run

FILTERS = Path(__file__).resolve().parent.parent / "filters"


def test_bench_filters_structure() -> None:
    out = io.StringIO()
    result = run(FilterBenchArgs(filters_dir=FILTERS, requests=100, warmup=10, loads=1), out)
    json.dumps(result)
    assert result["chain"] == list(CHAIN)
    fast, public = result["exchange"]["fast"], result["exchange"]["public"]
    assert fast["fast_path"] is True
    assert public["fast_path"] is False
    for row in (fast, public):
        assert row["requests"] == 100
        assert 0 < row["p50_us"] <= row["p99_us"]
    assert result["speedup_p50"] == round(public["p50_us"] / fast["p50_us"], 2)
    assert set(result["load"]) == set(CHAIN)
    for row in result["load"].values():
        assert row["cold_ms"] > 0
        assert row["cached_ms"] > 0
    assert set(result["fuel_per_exchange"]) == set(CHAIN)
    assert all(fuel > 1000 for fuel in result["fuel_per_exchange"].values())
    assert "unchecked entry points" in out.getvalue()
