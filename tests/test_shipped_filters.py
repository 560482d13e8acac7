"""The filters that ship in filters/, end to end through the chain (SDK-built modules)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import FilterHostSettings, FilterSettings
from edge_runtime.filters.service import FilterService
from edge_runtime.filters.stream import HttpStream, get_header

FILTERS = Path(__file__).resolve().parent.parent / "filters"
ROUTER = {
    "default": "orchestrate",
    "rules": [
        {"path_prefix": "edge/req/diag", "route": "echo"},
        {"keywords": ["weather", "天气", "remind"], "route": "orchestrate"},
        {"keywords": ["say"], "route": "direct"},
    ],
}
AUTH = {"header": "x-api-key", "keys": {"sensor-1": "s3cret", "sensor-2": "k2"}}


def settings(name: str, config: dict[str, Any], **kw: Any) -> FilterSettings:
    kw.setdefault("deadline_ms", 500)
    return FilterSettings(
        name=name, module=FILTERS / f"{name}.wasm", config=json.dumps(config), **kw
    )


@pytest.fixture(params=[True, False], ids=["fast", "public"])
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FilterService]:
    svc = FilterService(
        FilterHostSettings(cache_dir=tmp_path / "cache", fast_path=request.param),
        collect_logs=True,
    )
    yield svc
    svc.close()


def exchange(
    svc: FilterService,
    *,
    path: str = "edge/req/sensor-1",
    body: str = '{"prompt": "hello"}',
    device: str = "sensor-1",
    headers: list[tuple[str, str]] | None = None,
    response_body: str = '{"text": "ok"}',
) -> HttpStream:
    stream = HttpStream(
        request_headers=[
            (b":method", b"PUBLISH"),
            (b":path", path.encode()),
            (b":scheme", b"mqtt"),
            (b"content-type", b"application/json"),
            *[(k.encode(), v.encode()) for k, v in (headers or [])],
        ],
        request_body=bytearray(body.encode()),
        response_headers=[(b":status", b"200")],
        response_body=bytearray(response_body.encode()),
        properties={"device.id": device.encode(), "source.address": b"127.0.0.1"},
    )
    chain, ex = svc.begin(stream)
    chain.response(ex)
    svc.end(chain, ex)
    return stream


def route(stream: HttpStream) -> str | None:
    value = get_header(stream.request_headers, b"x-route")
    return value.decode() if value is not None else None


def test_router(service: FilterService) -> None:
    service.load([settings("router", ROUTER)])
    assert route(exchange(service, path="edge/req/diag/ping")) == "echo"
    assert route(exchange(service, body='{"prompt": "weather tomorrow?"}')) == "orchestrate"
    assert route(exchange(service, body=json.dumps({"prompt": "明天天气"}))) == "orchestrate"
    assert route(exchange(service, body='{"prompt": "Say hi"}')) == "direct"
    assert route(exchange(service, body='{"prompt": "hello"}')) == "orchestrate"
    kept = exchange(service, body='{"prompt": "say"}', headers=[("x-route", "echo")])
    assert route(kept) == "echo"


def test_device_auth(service: FilterService) -> None:
    service.load([settings("device-auth", AUTH)])
    missing = exchange(service)
    assert missing.local_response is not None
    assert missing.local_response.status == 401
    assert get_header(missing.local_response.headers, b"www-authenticate") is not None
    wrong = exchange(service, headers=[("x-api-key", "nope")])
    assert wrong.local_response is not None
    assert wrong.local_response.status == 403
    other_device = exchange(service, device="sensor-2", headers=[("x-api-key", "s3cret")])
    assert other_device.local_response is not None
    assert other_device.local_response.status == 403
    good = exchange(service, headers=[("x-api-key", "s3cret")])
    assert good.local_response is None
    # The secret never travels further than the filter that checked it.
    assert get_header(good.request_headers, b"x-api-key") is None


def test_rate_limit(service: FilterService) -> None:
    service.load([settings("rate-limit", {"rate_per_second": 1, "burst": 3})])
    answers = [exchange(service).local_response for _ in range(4)]
    assert answers[:3] == [None, None, None]
    limited = answers[3]
    assert limited is not None
    assert limited.status == 429
    retry = get_header(limited.headers, b"retry-after")
    assert retry is not None
    assert int(retry) >= 1
    # Buckets are per device, kept in shared data with CAS.
    assert exchange(service, device="sensor-2").local_response is None
    stored = service.env.shared_data.get(b"rate-limit/sensor-1")
    assert stored is not None
    assert service.env.metrics.snapshot("rate-limit")["rate_limit_rejected"] == 1


def test_size_guard(service: FilterService) -> None:
    service.load([settings("size-guard", {"max_bytes": 64})])
    assert exchange(service, body="x" * 64).local_response is None
    over = exchange(service, body="x" * 65)
    assert over.local_response is not None
    assert over.local_response.status == 413
    declared = exchange(service, body="x", headers=[("content-length", "100000")])
    assert declared.local_response is not None
    assert declared.local_response.status == 413


def test_redact(service: FilterService) -> None:
    service.load([settings("redact", {})])
    body = json.dumps(
        {"prompt": "mail jane@example.com or call +1 (555) 123-4567", "max_tokens": 12345678}
    )
    stream = exchange(service, body=body, response_body='{"text": "Call 0176 5551234 now"}')
    prompt = json.loads(bytes(stream.request_body))
    assert prompt["prompt"] == "mail [email] or call [phone]"
    assert prompt["max_tokens"] == 12345678
    assert json.loads(bytes(stream.response_body))["text"] == "Call [phone] now"


def test_redact_leaves_digits_inside_words(service: FilterService) -> None:
    # Answer ids are hex: a run of digits inside one is not a phone number.
    service.load([settings("redact", {})])
    body = json.dumps({"id": "2bc790015ac74c52afa7f0123456e46b", "note": "x5551234567 9876543x"})
    stream = exchange(service, body=body)
    assert json.loads(bytes(stream.request_body)) == json.loads(body)


def test_full_chain(service: FilterService) -> None:
    service.load(
        [
            settings("size-guard", {"max_bytes": 4096}),
            settings("device-auth", AUTH),
            settings("rate-limit", {"rate_per_second": 1000, "burst": 1000}),
            settings("redact", {}),
            settings("router", ROUTER),
        ]
    )
    stream = exchange(
        service,
        body='{"prompt": "weather in Berlin? write to jane@example.com"}',
        headers=[("x-api-key", "s3cret")],
    )
    assert stream.local_response is None
    assert route(stream) == "orchestrate"
    assert b"[email]" in stream.request_body
    denied = exchange(service)
    assert denied.local_response is not None
    assert denied.local_response.filter == "device-auth"
    # Filters after the one that answered never saw the request.
    assert route(denied) is None
