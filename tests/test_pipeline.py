"""The request path with the real tiny model and the shipped filters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import FilterHostSettings, FilterSettings
from edge_runtime.filters.service import FilterService
from edge_runtime.messages import Chunk, Request, Response, Status
from edge_runtime.model.runtime import Model
from edge_runtime.pipeline import Pipeline, PipelineSettings, answer_payload

FILTERS = Path(__file__).resolve().parent.parent / "filters"
AUTH = {"header": "x-api-key", "keys": {"sensor-1": "s3cret"}}
ROUTER = {"default": "direct", "rules": [{"path_prefix": "edge/req/diag", "route": "echo"}]}


def request(
    body: object = None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
    path: str = "edge/req/sensor-1",
    headers: tuple[tuple[str, str], ...] = (("x-api-key", "s3cret"),),
    deadline: float | None = None,
) -> Request:
    payload = raw if raw is not None else json.dumps(body).encode()
    return Request(
        id="r1",
        transport="mqtt",
        method="PUBLISH",
        path=path,
        headers=((":path", path), ("content-type", content_type), *headers),
        body=payload,
        device_id="sensor-1",
        deadline=deadline,
    )


@pytest.fixture
def filters(tmp_path: Path) -> Iterator[FilterService]:
    service = FilterService(FilterHostSettings(cache_dir=tmp_path / "cache"))
    service.load(
        [
            FilterSettings(
                name="device-auth", module=FILTERS / "device-auth.wasm", config=json.dumps(AUTH)
            ),
            FilterSettings(name="redact", module=FILTERS / "redact.wasm", config="{}"),
            FilterSettings(
                name="router", module=FILTERS / "router.wasm", config=json.dumps(ROUTER)
            ),
        ]
    )
    yield service
    service.close()


def run(pipeline: Pipeline, req: Request, chunks: list[Chunk] | None = None) -> Response:
    async def sink(chunk: Chunk) -> None:
        assert chunks is not None
        chunks.append(chunk)

    return asyncio.run(pipeline.handle(req, sink if chunks is not None else None))


def test_echo_route_without_filters(tiny_model: Model) -> None:
    pipeline = Pipeline(PipelineSettings(), model=tiny_model)
    response = run(pipeline, request({"prompt": "hello", "route": "echo"}))
    assert (response.status, response.text, response.route) == (Status.OK, "hello", "echo")
    pipeline.close()


def test_direct_route_streams_ordered_chunks(tiny_model: Model) -> None:
    pipeline = Pipeline(PipelineSettings(coalesce_chars=4), model=tiny_model)
    chunks: list[Chunk] = []
    body = {
        "prompt": "What is the temperature in the kitchen?",
        "stream": True,
        "max_tokens": 24,
        "temperature": 0.8,
    }
    response = run(pipeline, request(body), chunks)
    assert response.status == Status.OK
    assert response.usage is not None and response.usage.completion_tokens >= 1
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.text for c in chunks) == response.text
    payload = answer_payload(response)
    assert set(payload) >= {"id", "text", "route", "finish_reason", "usage", "timing"}
    pipeline.close()


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b'{"prompt": ', "application/json", Status.BAD_REQUEST),
        (b"\xff\xfe", "application/json", Status.BAD_REQUEST),
        (b"x" * 70_000, "text/plain", Status.PAYLOAD_TOO_LARGE),
        (b"<a/>", "application/xml", Status.UNSUPPORTED_MEDIA_TYPE),
    ],
)
def test_bad_bodies_get_their_status(
    tiny_model: Model, raw: bytes, content_type: str, status: Status
) -> None:
    pipeline = Pipeline(PipelineSettings(), model=tiny_model)
    response = run(pipeline, request(raw=raw, content_type=content_type))
    assert response.status == status
    assert answer_payload(response)["error"]["status"] == int(status)
    # The pipeline keeps serving.
    assert run(pipeline, request({"prompt": "ok", "route": "echo"})).text == "ok"
    pipeline.close()


def test_filters_answer_rewrite_and_route(tiny_model: Model, filters: FilterService) -> None:
    pipeline = Pipeline(PipelineSettings(), model=tiny_model, filters=filters)
    denied = run(pipeline, request({"prompt": "hi", "route": "echo"}, headers=()))
    assert denied.status == Status.UNAUTHORIZED
    assert denied.route == "filter:device-auth"
    routed = run(
        pipeline,
        request({"prompt": "mail jane@example.com please"}, path="edge/req/diag/ping"),
    )
    assert routed.status == Status.OK
    assert routed.route == "echo"
    assert routed.text == "mail [email] please"
    pipeline.close()


def test_an_expired_request_gets_504(tiny_model: Model) -> None:
    pipeline = Pipeline(PipelineSettings(), model=tiny_model)
    response = run(pipeline, request({"prompt": "x"}, deadline=time.monotonic() - 1))
    assert response.status == Status.GATEWAY_TIMEOUT
    pipeline.close()


def test_unknown_route_is_400(tiny_model: Model) -> None:
    pipeline = Pipeline(PipelineSettings(), model=tiny_model)
    response = run(pipeline, request({"prompt": "x"}, headers=(("x-route", "cloud"),)))
    assert response.status == Status.BAD_REQUEST
    assert "unknown route" in response.text
    pipeline.close()


def test_overflow_is_answered_busy_at_once(tiny_model: Model) -> None:
    pipeline = Pipeline(PipelineSettings(max_concurrent=1, max_queue=0), model=tiny_model)

    async def both() -> list[Status]:
        body = {"prompt": "tell me a long story", "max_tokens": 64}
        first = asyncio.create_task(pipeline.handle(request(body)))
        await asyncio.sleep(0)
        second = await pipeline.handle(request(body))
        assert second.headers == (("retry-after", "1"),)
        assert answer_payload(second)["error"]["retry_after"] == 1
        return [(await first).status, second.status]

    assert asyncio.run(both()) == [Status.OK, Status.SERVICE_UNAVAILABLE]
    pipeline.close()


def test_filters_see_tool_calls_and_may_deny_them(tmp_path: Path, tiny_model: Model) -> None:
    """Each tool call crosses the chain as a request on tool/<name>: policy guards actions."""
    import wasmtime

    from edge_runtime.config import Settings
    from edge_runtime.orchestrator.llm import ModelGenerator
    from edge_runtime.orchestrator.service import Orchestrator

    deny = tmp_path / "deny_tools.wasm"
    deny.write_bytes(
        wasmtime.wat2wasm((Path(__file__).parent / "filters" / "deny_tools.wat").read_text())
    )
    settings = Settings.model_validate(
        {
            "tools": [
                {
                    "name": "weather",
                    "kind": "python",
                    "entry_point": "tool_functions:forecast",
                    "intents": ["weather"],
                    "parameters": {"city": {}},
                }
            ],
            "state_dir": str(tmp_path / "state"),
        }
    )

    def answer(modules: list[FilterSettings]) -> Response:
        service = FilterService(FilterHostSettings(cache_dir=tmp_path / "cache"))
        service.load(modules)
        orchestrator = Orchestrator.build(settings, generator=ModelGenerator(tiny_model))
        pipeline = Pipeline(
            PipelineSettings(default_route="orchestrate"),
            orchestrator=orchestrator,
            filters=service,
        )
        try:
            return run(pipeline, request({"prompt": "weather in Oslo"}, headers=()))
        finally:
            pipeline.close()
            asyncio.run(orchestrator.close())
            service.close()

    allowed = answer([FilterSettings(name="redact", module=FILTERS / "redact.wasm", config="{}")])
    assert allowed.tool_calls[0]["result"]["city"] == "Oslo"
    denied = answer([FilterSettings(name="deny-tools", module=deny, config="{}")])
    # The request itself passed the filter (its path is not tool/...); the call did not.
    assert denied.status == Status.OK
    assert denied.tool_calls[0]["error"] == "weather: denied: tools are off"
    assert denied.text == "weather failed: weather: denied: tools are off"


class SlowModel:
    """A model seam that writes one token every 10 ms and, like ModelGenerator, stops itself at
    the deadline it is given (finish "cancelled"), keeping what it wrote."""

    identity = "slow"

    def __init__(self) -> None:
        self.params: list[dict[str, Any]] = []

    def count_tokens(self, text: str) -> int:
        return len(text)

    def deterministic(self, params: Any) -> bool:
        return True

    async def __call__(
        self,
        messages: Any,
        *,
        params: Any,
        tools: Any = None,
        on_delta: Any = None,
        deadline: float | None = None,
        grounding: object = None,
    ) -> Any:
        from edge_runtime.orchestrator.llm import Generated

        self.params.append(dict(params))
        text = ""
        for _ in range(int(params.get("max_new_tokens", 16))):
            if deadline is not None and time.monotonic() >= deadline:
                return Generated(text, "cancelled")
            await asyncio.sleep(0.01)
            text += "x"
            if on_delta is not None:
                await on_delta("x")
        return Generated(text, "length")


def _orchestrated(
    tmp_path: Path, model: Any, filters: FilterService | None = None, **settings: Any
) -> Pipeline:
    from edge_runtime.config import Settings
    from edge_runtime.orchestrator.llm import ModelGenerator
    from edge_runtime.orchestrator.service import Orchestrator

    config = Settings.model_validate(
        {
            "tools": [
                {
                    "name": "weather",
                    "kind": "python",
                    "entry_point": "tool_functions:forecast",
                    "intents": ["weather"],
                    "parameters": {"city": {}},
                    "answer": {"en": "{city}: {condition}"},
                }
            ],
            "state_dir": str(tmp_path / "state"),
        }
    )
    generator = model if isinstance(model, SlowModel) else ModelGenerator(model)
    orchestrator = Orchestrator.build(config, generator=generator)
    return Pipeline(
        PipelineSettings(default_route="orchestrate", **settings),
        orchestrator=orchestrator,
        filters=filters,
    )


def test_a_model_step_cut_by_the_deadline_still_answers(tmp_path: Path) -> None:
    pipeline = _orchestrated(tmp_path, SlowModel())
    try:
        response = run(
            pipeline,
            request(
                {"prompt": "weather in Oslo and write a reminder", "max_tokens": 1500},
                headers=(),
                deadline=time.monotonic() + 1.0,
            ),
        )
    finally:
        pipeline.close()
        assert pipeline.orchestrator is not None
        asyncio.run(pipeline.orchestrator.close())
    # 1500 tokens take 15 s: the reminder is cut short, but the weather and what was written
    # are answered, not thrown away in a 504.
    assert response.status == Status.OK, response.text
    assert response.finish_reason == "cancelled"
    assert response.text.startswith("Oslo: light rain\nxxx")


def test_a_tool_call_cancelled_while_a_filter_holds_it_ends_its_exchange(
    tmp_path: Path, tiny_model: Model
) -> None:
    import wasmtime

    wat = Path(__file__).parent / "filters" / "pauser.wat"
    held = tmp_path / "pauser.wasm"
    held.write_bytes(wasmtime.wat2wasm(wat.read_text()))
    service = FilterService(
        FilterHostSettings(cache_dir=tmp_path / "cache", upstreams={"auth": "http://127.0.0.1:9/"})
    )
    service.load([FilterSettings(name="pauser", module=held, config="hold")])
    pipeline = _orchestrated(tmp_path, tiny_model, service)

    async def main() -> None:
        guard = pipeline._tool_guard(request({"prompt": "x"}))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await guard("weather", {"city": "Oslo"})
        await asyncio.sleep(0.2)
        # The exchange was ended on the filter thread even though nobody awaited it.
        await pipeline._on_filter_thread(lambda: None)

    try:
        asyncio.run(main())
        assert set(service._in_flight.values()) <= {0}
    finally:
        pipeline.close()
        service.close()
        assert pipeline.orchestrator is not None
        asyncio.run(pipeline.orchestrator.close())


def test_feedback_does_not_wait_behind_generations(tmp_path: Path) -> None:
    pipeline = _orchestrated(tmp_path, SlowModel(), max_concurrent=1, max_queue=0)

    async def main() -> tuple[Response, Response, Response]:
        long = asyncio.ensure_future(
            pipeline.handle(
                request({"prompt": "tell me a long story", "max_tokens": 200, "route": "direct"})
            )
        )
        await asyncio.sleep(0.05)
        busy = await pipeline.handle(request({"prompt": "and another", "route": "direct"}))
        rating = Request(
            id="f",
            transport="mqtt",
            method="PUBLISH",
            path="edge/feedback/s",
            headers=(("content-type", "application/json"),),
            body=b'{"id": "r1", "rating": 4}',
            device_id="sensor-1",
            kind="feedback",
        )
        recorded = await pipeline.handle(rating)
        return await long, busy, recorded

    try:
        _, busy, recorded = asyncio.run(main())
    finally:
        pipeline.close()
        assert pipeline.orchestrator is not None
        asyncio.run(pipeline.orchestrator.close())
    assert busy.status == Status.SERVICE_UNAVAILABLE
    assert recorded.status == Status.OK
    assert recorded.details["recorded"] is True


def test_the_model_defaults_decide_whether_an_answer_is_sampled(tiny_model: Model) -> None:
    from edge_runtime.orchestrator.llm import ModelGenerator

    generator = ModelGenerator(tiny_model)
    # glm-tiny's generation_config.json samples: without a seed, answers vary.
    assert generator.deterministic({}) is False
    assert generator.deterministic({"seed": 7}) is True
    assert generator.deterministic({"temperature": 0}) is True
    assert generator.deterministic({"temperature": 0.5}) is False


def test_filters_read_what_the_registry_knows_of_a_device(
    tmp_path: Path, tiny_model: Model
) -> None:
    import wasmtime

    from edge_runtime.devices import DeviceRegistry

    wat = Path(__file__).parent / "filters" / "registered_only.wat"
    module = tmp_path / "registered_only.wasm"
    module.write_bytes(wasmtime.wat2wasm(wat.read_text()))
    service = FilterService(FilterHostSettings(cache_dir=tmp_path / "cache"))
    service.load([FilterSettings(name="registered-only", module=module, config="{}")])
    devices = DeviceRegistry(tmp_path / "devices.db")
    pipeline = Pipeline(PipelineSettings(), model=tiny_model, filters=service, devices=devices)
    body = {"prompt": "hi", "route": "echo"}
    try:
        refused = run(pipeline, request(body, headers=()))
        devices.register("sensor-1", "thermometer", ("temperature",), source="mqtt")
        allowed = run(pipeline, request(body, headers=()))
    finally:
        pipeline.close()
        service.close()
        devices.close()
    assert (refused.status, refused.text) == (Status.FORBIDDEN, "register first")
    assert allowed.status == Status.OK
    assert dict(allowed.headers)["x-device-kind"] == "thermometer"


def test_each_route_has_its_own_default_length(tmp_path: Path) -> None:
    model = SlowModel()
    pipeline = _orchestrated(tmp_path, model, max_new_tokens=3)
    try:
        run(pipeline, request({"prompt": "hi", "route": "direct"}, headers=()))
        run(pipeline, request({"prompt": "tell me something"}, headers=()))
        run(pipeline, request({"prompt": "tell me more", "max_tokens": 5}, headers=()))
    finally:
        pipeline.close()
        assert pipeline.orchestrator is not None
        asyncio.run(pipeline.orchestrator.close())
    # direct: the model's max_new_tokens; orchestrate: orchestrator.max_new_tokens (128);
    # a request's own max_tokens wins over both.
    assert [p["max_new_tokens"] for p in model.params] == [3, 128, 5]


def test_tool_calls_carry_what_the_registry_knows(tmp_path: Path, tiny_model: Model) -> None:
    import wasmtime

    from edge_runtime.devices import DeviceRegistry

    wat = Path(__file__).parent / "filters" / "registered_only.wat"
    module = tmp_path / "registered_only.wasm"
    module.write_bytes(wasmtime.wat2wasm(wat.read_text()))
    service = FilterService(FilterHostSettings(cache_dir=tmp_path / "cache"))
    service.load([FilterSettings(name="registered-only", module=module, config="{}")])
    devices = DeviceRegistry(tmp_path / "devices.db")
    devices.register("sensor-1", "sensor", (), source="mqtt")
    pipeline = _orchestrated(tmp_path, tiny_model, service)
    pipeline._devices = devices
    try:
        answer = run(pipeline, request({"prompt": "weather in Oslo"}, headers=()))
    finally:
        pipeline.close()
        service.close()
        devices.close()
        assert pipeline.orchestrator is not None
        asyncio.run(pipeline.orchestrator.close())
    # The filter admits registered devices: the request and its tool call alike.
    assert answer.status == Status.OK
    assert answer.tool_calls[0]["result"]["city"] == "Oslo"
