"""`bench transport` runs both servers over a real broker and reports consistent figures."""

from __future__ import annotations

import io
import json

from edge_runtime.bench.transport import TransportBenchArgs, run


def test_bench_transport_structure() -> None:
    out = io.StringIO()
    result = run(TransportBenchArgs(requests=60, concurrency=(1, 4), direct_requests=6), out)
    json.dumps(result)
    for kind in ("bare", "ours"):
        for level in ("1", "4"):
            row = result["mqtt_echo"][kind][level]
            assert row["rps"] > 0
            assert 0 < row["p50_ms"] <= row["p99_ms"]
    ratio = result["ratio_ours_to_bare"]["1"]["p50"]
    assert ratio == round(
        result["mqtt_echo"]["ours"]["1"]["p50_ms"] / result["mqtt_echo"]["bare"]["1"]["p50_ms"], 2
    )
    for kind in ("bare", "ours"):
        for level in ("1", "4"):
            row = result["coap_echo"][kind][level]
            assert row["rps"] > 0
            assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert set(result["coap_ratio_ours_to_bare"]) == {"1", "4"}
    assert "p50 ours/bare" in out.getvalue()
    assert "CoAP" in out.getvalue()
    assert all(result["mqtt_direct"][level]["rps"] > 0 for level in ("1", "4"))
