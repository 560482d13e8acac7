"""CoAP transport (aiocoap, UDP): POST /infer for short answers, /health, /.well-known/core."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code

from edge_runtime.codec import CBOR, JSON, TEXT, encode
from edge_runtime.messages import Request, Response, Status
from edge_runtime.transports.mqtt import Handler, PayloadOf

log = logging.getLogger("edge_runtime.coap")

# CoAP Content-Format numbers (RFC 7252 §12.3) and the media types they stand for.
FORMATS = {0: TEXT, 50: JSON, 60: CBOR}
FORMAT_OF = {TEXT: 0, JSON: 50, CBOR: 60}
STATUS_CODES = {
    Status.OK: Code.CONTENT,
    Status.CREATED: Code.CREATED,
    Status.BAD_REQUEST: Code.BAD_REQUEST,
    Status.UNAUTHORIZED: Code.UNAUTHORIZED,
    Status.FORBIDDEN: Code.FORBIDDEN,
    Status.NOT_FOUND: Code.NOT_FOUND,
    Status.PAYLOAD_TOO_LARGE: Code.REQUEST_ENTITY_TOO_LARGE,
    Status.UNSUPPORTED_MEDIA_TYPE: Code.UNSUPPORTED_CONTENT_FORMAT,
    Status.UNPROCESSABLE: Code.UNPROCESSABLE_ENTITY,
    Status.TOO_MANY_REQUESTS: Code.TOO_MANY_REQUESTS,
    Status.INTERNAL_ERROR: Code.INTERNAL_SERVER_ERROR,
    Status.BAD_GATEWAY: Code.BAD_GATEWAY,
    Status.SERVICE_UNAVAILABLE: Code.SERVICE_UNAVAILABLE,
    Status.GATEWAY_TIMEOUT: Code.GATEWAY_TIMEOUT,
}


class InferResource(resource.Resource):  # type: ignore[misc]
    """POST /infer: one request, one answer (piggybacked when it is quick)."""

    rt = "edge-runtime.infer"
    ct = "0 50 60"

    def __init__(self, handler: Handler, payload_of: PayloadOf, max_payload_bytes: int):
        super().__init__()
        self._handler = handler
        self._payload_of = payload_of
        self._max = max_payload_bytes

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return True

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        # aiocoap reassembles Block1 uploads with no cap: the size is checked before any work.
        if len(request.payload) > self._max:
            return aiocoap.Message(code=Code.REQUEST_ENTITY_TOO_LARGE, size1=self._max)
        fmt = request.opt.content_format
        fmt_number = int(fmt) if fmt is not None else 50
        if fmt_number not in FORMATS:
            return _error(Code.UNSUPPORTED_CONTENT_FORMAT, "use Content-Format 0, 50 or 60", 50)
        accept = request.opt.accept
        answer_format = (
            int(accept) if accept is not None else (fmt_number if fmt_number != 0 else 50)
        )
        if answer_format not in (50, 60):
            return _error(Code.NOT_ACCEPTABLE, "answers are JSON (50) or CBOR (60)", 50)
        host = request.remote.hostinfo if request.remote is not None else ""
        path = "/".join(request.opt.uri_path)
        query = "&".join(request.opt.uri_query)
        device = dict(q.split("=", 1) for q in request.opt.uri_query if "=" in q).get(
            "device", host
        )
        inner = Request(
            id=uuid.uuid4().hex,
            transport="coap",
            method="POST",
            path=f"/{path}" + (f"?{query}" if query else ""),
            headers=(
                (":method", "POST"),
                (":path", f"/{path}"),
                (":authority", request.opt.uri_host or host),
                (":scheme", "coap"),
                ("content-type", FORMATS[fmt_number]),
            ),
            body=bytes(request.payload),
            device_id=device,
        )
        response = await self._handler(inner, None)
        return self._message(response, answer_format)

    def _message(self, response: Response, answer_format: int) -> aiocoap.Message:
        code = STATUS_CODES.get(response.status, Code.INTERNAL_SERVER_ERROR)
        payload = encode(self._payload_of(response), FORMATS[answer_format])
        message = aiocoap.Message(code=code, payload=payload, content_format=answer_format)
        if response.status == Status.SERVICE_UNAVAILABLE:
            retry = dict(response.headers).get("retry-after", "1")
            message.opt.max_age = int(retry) if retry.isdigit() else 1
        return message


class HealthResource(resource.Resource):  # type: ignore[misc]
    """GET /health: whether this node serves."""

    rt = "edge-runtime.health"
    ct = "50"

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(
            code=Code.CONTENT, payload=json.dumps({"status": "ready"}).encode(), content_format=50
        )


def _error(code: Code, message: str, fmt: int) -> aiocoap.Message:
    body: dict[str, Any] = {"error": {"status": _http_status(code), "message": message}}
    return aiocoap.Message(code=code, payload=encode(body, FORMATS[fmt]), content_format=fmt)


def _http_status(code: Code) -> int:
    # CoAP codes are class.detail packed as class << 5 | detail (4.15 is 0b100_01111).
    return (int(code) >> 5) * 100 + (int(code) & 0x1F)


class CoapTransport:
    """The CoAP server of a node."""

    def __init__(
        self,
        handler: Handler,
        payload_of: PayloadOf,
        *,
        host: str = "::",
        port: int = 5683,
        max_payload_bytes: int = 64 * 1024,
    ):
        self._site = resource.Site()
        self._site.add_resource(
            [".well-known", "core"], resource.WKCResource(self._site.get_resources_as_linkheader)
        )
        self._site.add_resource(["infer"], InferResource(handler, payload_of, max_payload_bytes))
        self._site.add_resource(["health"], HealthResource())
        self._bind = (host, port)
        self._context: aiocoap.Context | None = None

    async def __aenter__(self) -> CoapTransport:
        self._context = await aiocoap.Context.create_server_context(
            self._site, bind=self._bind, transports=["udp6"]
        )
        log.info("CoAP on udp [%s]:%d", *self._bind)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._context is not None:
            await self._context.shutdown()
            await asyncio.sleep(0)
