"""The request path: filters, route, model, filters again; the one place errors become answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from edge_runtime.codec import (
    JSON,
    InferenceRequest,
    decode_object,
    decode_request,
    encode,
    media_type,
)
from edge_runtime.devices import DeviceRegistry
from edge_runtime.errors import (
    BusyError,
    DeadlineExceededError,
    EdgeRuntimeError,
    RequestError,
)
from edge_runtime.filters.chain import Exchange, FilterChain
from edge_runtime.filters.service import FilterService
from edge_runtime.filters.stream import HttpStream, LocalResponse, get_header
from edge_runtime.logs import request_id
from edge_runtime.messages import Chunk, Request, Response, Status, Timing, Usage
from edge_runtime.metrics import Metrics
from edge_runtime.model.runtime import Model
from edge_runtime.orchestrator.llm import ModelGenerator
from edge_runtime.orchestrator.service import Ask, Orchestrator

log = logging.getLogger("edge_runtime.pipeline")

ChunkSink = Callable[[Chunk], Awaitable[None]]
ROUTES = ("direct", "orchestrate", "echo")


@dataclass(frozen=True)
class PipelineSettings:
    """Bounds and defaults of the request path."""

    default_route: str = "direct"
    timeout_seconds: float = 30.0
    max_payload_bytes: int = 64 * 1024
    max_concurrent: int = 2
    max_queue: int = 16
    max_new_tokens: int = 256
    # Stream deltas are coalesced: a chunk goes out when this many characters or this much
    # time has gathered, so a device is not sent one publish per token.
    coalesce_chars: int = 48
    coalesce_seconds: float = 0.08
    pause_timeout_seconds: float = 5.0


class Pipeline:
    """Runs one request through the filter chain and a route, and always returns a Response."""

    def __init__(
        self,
        settings: PipelineSettings,
        *,
        orchestrator: Orchestrator | None = None,
        model: Model | None = None,
        filters: FilterService | None = None,
        devices: DeviceRegistry | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        if orchestrator is None and model is not None:
            # A bare model: generations and intents, no tools, nothing stored on disk.
            orchestrator = Orchestrator.for_model(ModelGenerator(model))
        self.orchestrator = orchestrator
        self._filters = filters
        self._devices = devices
        self._metrics = metrics
        self._clock = clock
        # Set on SIGTERM: new requests are turned away while those under way finish.
        self.draining = False
        # Set after a request: its filters may have queued work or started HTTP calls.
        self.poll_soon = asyncio.Event()
        self.busy = 0
        # Every filter callback runs on this one thread: a wasmtime store has one owner.
        self._filter_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="filters")
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return self._waiting

    def close(self) -> None:
        """Stop the filter thread."""
        self._filter_thread.shutdown(wait=True)

    async def poll_filters(self) -> float:
        """Deliver filter timers, queue notices and HTTP answers, on the filter thread.

        Returns how soon to poll again; poll_soon is set when a request may have changed that.
        """
        self.poll_soon.clear()
        if self._filters is None:
            return 3600.0
        wait: float = await self._on_filter_thread(self._filters.poll)
        return wait

    async def handle(
        self, request: Request, sink: ChunkSink | None = None, *, stream: bool | None = None
    ) -> Response:
        """Answer ``request``; streamed deltas go to ``sink``; errors become error Responses.

        ``stream`` overrides the body's own ``stream`` field (CoAP jobs always stream).
        """
        started = self._clock()
        token = request_id.set(request.id)
        self.busy += 1
        try:
            response = await self._admit(request, sink, started, stream)
        finally:
            self.busy -= 1
            request_id.reset(token)
        if self._metrics is not None:
            self._metrics.observe(request.transport, response, self._clock() - started)
        return response

    async def _admit(
        self, request: Request, sink: ChunkSink | None, started: float, stream: bool | None
    ) -> Response:
        try:
            if self.draining:
                raise BusyError("this node is shutting down", retry_after=1.0)
            if request.kind == "feedback":
                # A rating is a small write: it never waits behind generations for a slot.
                return await self._handle(request, sink, started, stream)
            if self._waiting >= self.settings.max_queue and self._slots.locked():
                raise BusyError("too many requests waiting", retry_after=1.0)
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
            try:
                return await self._handle(request, sink, started, stream)
            finally:
                self._slots.release()
        except EdgeRuntimeError as exc:
            return _error(request, exc.status, str(exc), exc)
        except Exception:
            log.exception("request %s failed", request.id)
            return _error(request, Status.INTERNAL_ERROR, "internal error", None)

    async def _handle(
        self, request: Request, sink: ChunkSink | None, started: float, stream_override: bool | None
    ) -> Response:
        deadline = request.deadline
        if deadline is None:
            deadline = started + self.settings.timeout_seconds
        stream = self._stream(request, request.headers, request.body)
        chain_exchange: tuple[FilterChain, Exchange] | None = None
        try:
            if self._filters is not None:
                chain_exchange = await self._request_phase(stream)
                if stream.local_response is not None:
                    return _local(request, stream.local_response)
            content_type = _header(stream, "content-type")
            kind = media_type(content_type)
            if request.kind == "feedback":
                return await self._feedback(request, stream, content_type)
            body = decode_request(
                bytes(stream.request_body), content_type, max_bytes=self.settings.max_payload_bytes
            )
            if stream_override is not None:
                body = body.model_copy(update={"stream": stream_override})
            route = _header(stream, "x-route") or body.route or self.settings.default_route
            if route not in ROUTES:
                raise RequestError(f"unknown route {route!r}; routes are {', '.join(ROUTES)}")
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise DeadlineExceededError("the request expired before it was answered")
            try:
                async with asyncio.timeout(remaining):
                    chain = chain_exchange[0] if chain_exchange is not None else None
                    answer = await self._route(
                        request, body, route, sink, deadline=deadline, chain=chain
                    )
            except TimeoutError:
                raise DeadlineExceededError(
                    f"no answer within {remaining:.1f} s (the request's deadline)"
                ) from None
            if chain_exchange is not None:
                answer = await self._response_phase(chain_exchange, stream, answer, kind)
                if stream.local_response is not None:
                    return _local(request, stream.local_response)
            return answer
        finally:
            if chain_exchange is not None and self._filters is not None:
                chain, exchange = chain_exchange
                await self._on_filter_thread(self._filters.end, chain, exchange)
                self.poll_soon.set()

    async def _on_filter_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._filter_thread, func, *args)

    def _guest(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run chain work that bypasses FilterService (which gates its own) with the filters'
        deadline clock ticking: the clock sleeps while no guest code can run."""
        if self._filters is None:
            return func(*args)
        with self._filters.guest():
            return func(*args)

    async def _begin_guarded(self, stream: HttpStream) -> tuple[FilterChain, Exchange]:
        """begin() on the filter thread; if the caller is cancelled meanwhile, end() still runs."""
        assert self._filters is not None
        filters = self._filters
        begun = asyncio.ensure_future(self._on_filter_thread(filters.begin, stream))
        try:
            return await asyncio.shield(begun)
        except asyncio.CancelledError:

            def end_when_begun(future: asyncio.Future[tuple[FilterChain, Exchange]]) -> None:
                if not future.cancelled() and future.exception() is None:
                    with contextlib.suppress(RuntimeError):  # the pipeline is closing
                        self._filter_thread.submit(filters.end, *future.result())

            begun.add_done_callback(end_when_begun)
            raise

    def _stream(
        self,
        request: Request,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        request_id: str | None = None,
        tool: str | None = None,
    ) -> HttpStream:
        """How the filters see a request (or one of its tool calls): headers, body, properties."""
        properties = {
            "device.id": request.device_id.encode(),
            "request.protocol": request.transport.encode(),
            "request.id": (request_id or request.id).encode(),
            **self._device_properties(request.device_id),
        }
        if tool is not None:
            properties["tool.name"] = tool.encode()
        return HttpStream(
            request_headers=[(k.encode(), v.encode()) for k, v in headers],
            request_body=bytearray(body),
            properties=properties,
        )

    def _device_properties(self, device_id: str) -> dict[str, bytes]:
        """device.registered and device.kind, from the device registry."""
        if self._devices is None:
            return {}
        self._devices.seen(device_id)
        kind = self._devices.kind(device_id)
        return {
            "device.registered": b"true" if self._devices.registered(device_id) else b"false",
            "device.kind": (kind or "").encode(),
        }

    async def _request_phase(self, stream: HttpStream) -> tuple[FilterChain, Exchange]:
        assert self._filters is not None
        started = time.perf_counter()
        chain, exchange = await self._on_filter_thread(self._filters.begin, stream)
        self._time_phase("request", started)
        await self._wait_resumed(chain, exchange)
        return chain, exchange

    def _time_phase(self, phase: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.filter_phase.labels(phase).observe(time.perf_counter() - started)

    async def _wait_resumed(self, chain: FilterChain, exchange: Exchange) -> None:
        assert self._filters is not None
        filters = self._filters
        while exchange.paused_at is not None:

            def check() -> bool:
                filters.poll()
                if chain.resume(exchange):
                    return True
                if time.monotonic() - exchange.paused_since > self.settings.pause_timeout_seconds:
                    chain.expire(exchange)
                return exchange.paused_at is None

            if await self._on_filter_thread(self._guest, check):
                return
            await asyncio.sleep(filters.host.tick_ms / 1000)

    async def _response_phase(
        self,
        chain_exchange: tuple[FilterChain, Exchange],
        stream: HttpStream,
        answer: Response,
        kind: str,
    ) -> Response:
        chain, exchange = chain_exchange
        payload = _answer_payload(answer)
        stream.response_headers[:] = [
            (b":status", str(int(answer.status)).encode()),
            (b"content-type", kind.encode()),
        ]
        stream.response_body[:] = encode(payload, JSON)
        started = time.perf_counter()
        await self._on_filter_thread(self._guest, chain.response, exchange)
        self._time_phase("response", started)
        await self._wait_resumed(chain, exchange)
        # Filters may have rewritten the answer (redaction): take the text back from the body.
        try:
            rewritten = json.loads(bytes(stream.response_body))
            text = (
                rewritten.get("text", answer.text) if isinstance(rewritten, dict) else answer.text
            )
        except (ValueError, UnicodeDecodeError):
            text = bytes(stream.response_body).decode("utf-8", "replace")
        headers = tuple(
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in stream.response_headers
            if not k.startswith(b":")
        )
        return Response(
            id=answer.id,
            status=answer.status,
            text=str(text),
            route=answer.route,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            timing=answer.timing,
            headers=headers,
            tool_calls=answer.tool_calls,
            details=answer.details,
        )

    async def _feedback(
        self, request: Request, stream: HttpStream, content_type: str | None
    ) -> Response:
        if self.orchestrator is None:
            raise BusyError("feedback is not taken here", retry_after=5.0)
        body = decode_object(
            bytes(stream.request_body), content_type, max_bytes=self.settings.max_payload_bytes
        )
        outcome = await self.orchestrator.feedback(body, request.device_id)
        return Response(id=request.id, text="recorded", route="feedback", details=outcome)

    async def _route(
        self,
        request: Request,
        body: InferenceRequest,
        route: str,
        sink: ChunkSink | None,
        *,
        deadline: float,
        chain: FilterChain | None,
    ) -> Response:
        if route == "echo":
            text = body.prompt if body.prompt is not None else body.conversation()[-1]["content"]
            if body.stream and sink is not None:
                await sink(Chunk(seq=0, type="delta", text=text))
            return Response(id=request.id, text=text, route="echo")
        if self.orchestrator is None:
            raise BusyError("no model is loaded", retry_after=5.0)
        params: dict[str, Any] = {}
        if body.max_tokens:
            params["max_new_tokens"] = body.max_tokens
        elif route == "direct":
            # Orchestrated model steps have their own default (orchestrator.max_new_tokens).
            params["max_new_tokens"] = self.settings.max_new_tokens
        for name in ("temperature", "top_p", "top_k", "seed"):
            value = getattr(body, name)
            if value is not None:
                params[name] = value
        ask = Ask(
            id=request.id,
            device=request.device_id,
            messages=body.conversation(),
            params=params,
            deadline=deadline,
            session=body.session,
            filters=chain.version if chain is not None else "",
            guard=self._tool_guard(request) if self._filters is not None else None,
        )
        coalescer = _Coalescer(sink, self.settings, self._clock) if body.stream else None
        answer = await self.orchestrator.answer(
            ask, "direct" if route == "direct" else "orchestrate", coalescer
        )
        if coalescer is not None:
            await coalescer.flush()
        return Response(
            id=request.id,
            text=answer.text,
            route=route,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            timing=answer.timing,
            tool_calls=answer.tool_calls,
            details=answer.details,
        )

    def _tool_guard(
        self, request: Request
    ) -> Callable[[str, Mapping[str, Any]], Awaitable[str | None]]:
        """Filters see each tool call as a request on ``tool/<name>``, and may deny it."""

        async def guard(name: str, arguments: Mapping[str, Any]) -> str | None:
            assert self._filters is not None
            headers = [
                *(
                    (k, v)
                    for k, v in request.headers
                    if k not in (":path", ":method", "content-type")
                ),
                (":path", f"tool/{name}"),
                (":method", "CALL"),
                ("content-type", "application/json"),
            ]
            body = json.dumps(dict(arguments)).encode()
            stream = self._stream(
                request, headers, body, request_id=f"{request.id}/tool/{name}", tool=name
            )
            chain, exchange = await self._begin_guarded(stream)
            try:
                await self._wait_resumed(chain, exchange)
                local = stream.local_response
                if local is None:
                    return None
                return _local(request, local).text or f"status {local.status}"
            finally:
                # Not awaited: a call cancelled by its step timeout must still end its exchange.
                with contextlib.suppress(RuntimeError):  # the pipeline is closing
                    self._filter_thread.submit(self._filters.end, chain, exchange)

        return guard


class _Coalescer:
    """Turns deltas into stream chunks, a chunk per so many characters or so much time."""

    def __init__(
        self, sink: ChunkSink | None, settings: PipelineSettings, clock: Callable[[], float]
    ):
        self._sink = sink
        self._settings = settings
        self._clock = clock
        self._seq = 0
        self._pending = ""
        self._last_sent = clock()

    async def __call__(self, delta: str) -> None:
        self._pending += delta
        now = self._clock()
        if (
            len(self._pending) >= self._settings.coalesce_chars
            or now - self._last_sent >= self._settings.coalesce_seconds
        ):
            await self.flush()

    async def flush(self) -> None:
        """Send what has gathered."""
        if self._pending and self._sink is not None:
            await self._sink(Chunk(seq=self._seq, type="delta", text=self._pending))
            self._seq += 1
        self._pending = ""
        self._last_sent = self._clock()


def _header(stream: HttpStream, name: str) -> str | None:
    value = get_header(stream.request_headers, name.encode())
    return value.decode("latin-1") if value is not None else None


def _local(request: Request, local: LocalResponse) -> Response:
    try:
        status = Status(local.status)
    except ValueError:
        status = Status.BAD_REQUEST if local.status < 500 else Status.INTERNAL_ERROR
    text = local.body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            text = str(parsed["error"].get("message", text))
    except ValueError:
        pass
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in local.headers)
    return Response(
        id=request.id,
        status=status,
        text=text,
        route=f"filter:{local.filter}",
        finish_reason="error" if local.status >= 400 else "stop",
        headers=headers,
    )


def _error(
    request: Request, status: Status, message: str, exc: EdgeRuntimeError | None
) -> Response:
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, BusyError):
        headers = (("retry-after", str(max(1, round(exc.retry_after)))),)
    return Response(
        id=request.id, status=status, text=message, finish_reason="error", headers=headers
    )


def _answer_payload(answer: Response) -> dict[str, Any]:
    """The answer body: id, text, route, finish_reason, tool_calls, usage, timing, details."""
    payload: dict[str, Any] = {
        "id": answer.id,
        "text": answer.text,
        "route": answer.route,
        "finish_reason": answer.finish_reason,
    }
    if answer.route not in ("echo", "feedback") and not answer.route.startswith("filter:"):
        payload["tool_calls"] = list(answer.tool_calls)
    if answer.usage is not None:
        payload["usage"] = _usage(answer.usage)
    if answer.timing is not None:
        payload["timing"] = _timing(answer.timing, answer.usage)
    for key, value in answer.details.items():
        payload.setdefault(key, value)
    return payload


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _timing(timing: Timing, usage: Usage | None) -> dict[str, float]:
    tokens = usage.completion_tokens if usage is not None else 0
    return {
        "time_to_first_token_ms": round(timing.time_to_first_token_s * 1000, 2),
        "decode_tokens_per_s": round(timing.decode_tokens_per_s(tokens), 1),
    }


def answer_payload(response: Response) -> dict[str, Any]:
    """What a transport sends for a Response: the answer body, or the error body."""
    if response.status >= 400:
        error: dict[str, Any] = {"status": int(response.status), "message": response.text}
        retry = dict(response.headers).get("retry-after")
        if retry is not None and retry.isdigit():
            # Busy or rate-limited: tells the device when to try again.
            error["retry_after"] = int(retry)
        return {"error": error}
    return _answer_payload(response)
