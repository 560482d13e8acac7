"""`filters run`: one request, then one response, through one filter, as a filter author sees it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.config import FilterHostSettings, FilterSettings
from edge_runtime.errors import ConfigError, FilterError
from edge_runtime.filters.service import FilterService
from edge_runtime.filters.stream import HttpStream, Pairs

DEFAULT_REQUEST: dict[str, Any] = {
    "headers": [
        [":method", "PUBLISH"],
        [":path", "edge/req/device-1"],
        [":authority", "device-1"],
        [":scheme", "mqtt"],
        ["content-type", "application/json"],
    ],
    "body": '{"prompt": "What is the temperature in the kitchen?"}',
    "properties": {
        "device.id": "device-1",
        "request.protocol": "mqtt",
        "source.address": "127.0.0.1",
    },
}
DEFAULT_RESPONSE: dict[str, Any] = {
    "headers": [[":status", "200"], ["content-type", "application/json"]],
    "body": '{"text": "It is 21 degrees in the kitchen."}',
}


@dataclass(frozen=True)
class RunOptions:
    """What `filters run` was asked to do."""

    module: Path
    root_id: str | None = None
    config: str = ""
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    log_level: str = "trace"
    cache_dir: Path | None = None


def read_message(path: Path, what: str) -> dict[str, Any]:
    """A request or response file: JSON {"headers": [[name, value], ...], "body": "..."}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {what}: {exc}", file=path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object", file=path)
    return data


def _pairs(raw: Any, what: str) -> Pairs:
    if not isinstance(raw, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in raw
    ):
        raise ConfigError(f"{what}.headers must be a list of [name, value] strings")
    return [(k.encode(), v.encode()) for k, v in raw]


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")


def _headers(pairs: Pairs) -> list[list[str]]:
    return [[_text(k), _text(v)] for k, v in pairs]


def run_filter(options: RunOptions) -> dict[str, Any]:
    """Run one exchange through one filter and describe everything it did."""
    request = {**DEFAULT_REQUEST, **(options.request or {})}
    response = {**DEFAULT_RESPONSE, **(options.response or {})}
    stream = HttpStream(
        request_headers=_pairs(request["headers"], "request"),
        request_body=bytearray(str(request.get("body", "")).encode()),
        response_headers=_pairs(response["headers"], "response"),
        response_body=bytearray(str(response.get("body", "")).encode()),
        properties={k: str(v).encode() for k, v in dict(request.get("properties", {})).items()},
    )
    name = options.module.stem
    settings = FilterSettings(
        name=name,
        module=options.module,
        root_id=options.root_id,
        config=options.config,
        log_level=options.log_level,
    )
    service = FilterService(FilterHostSettings(cache_dir=options.cache_dir), collect_logs=True)
    result: dict[str, Any] = {"local_response": None, "error": None}
    try:
        try:
            service.load([settings])
            service.run(stream)
            supervisor = service.chain.filters[0]
            if supervisor.stats.traps:
                result["error"] = f"trapped ({supervisor.stats.last_trap})"
        except FilterError as exc:
            result["error"] = str(exc)
        logs: list[tuple[int, str]] = []
        for supervisor in service.chain.filters:
            current = supervisor._instance
            if current is not None and current.logs:
                logs = current.logs
        local = stream.local_response
        if local is not None:
            result["local_response"] = {
                "status": local.status,
                "headers": _headers(local.headers),
                "body": _text(local.body),
            }
        result["request"] = {
            "headers": _headers(stream.request_headers),
            "body": _text(stream.request_body),
        }
        result["response"] = {
            "headers": _headers(stream.response_headers),
            "body": _text(stream.response_body),
        }
        result["logs"] = [[level, message] for level, message in logs]
        result["metrics"] = service.env.metrics.snapshot(name)
    finally:
        service.close()
    return result
