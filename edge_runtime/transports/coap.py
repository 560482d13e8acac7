"""CoAP transport (aiocoap, UDP): /infer for short answers, /jobs with Observe for streams."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.util import linkformat

from edge_runtime.codec import CBOR, JSON, TEXT, encode
from edge_runtime.devices import Description, parse_json_description
from edge_runtime.messages import Chunk, Request, RequestKind, Response, Status
from edge_runtime.transports import DeviceRegister, Handler, HealthReport, PayloadOf

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
        fmt_number, refused = check_upload(request, self._max)
        if refused is not None:
            return refused
        accept = request.opt.accept
        answer_format = (
            int(accept) if accept is not None else (fmt_number if fmt_number != 0 else 50)
        )
        if answer_format not in (50, 60):
            return _error(Code.NOT_ACCEPTABLE, "answers are JSON (50) or CBOR (60)", 50)
        inner = inner_request(request, fmt_number, "infer")
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


def check_upload(request: aiocoap.Message, max_bytes: int) -> tuple[int, aiocoap.Message | None]:
    """The body's Content-Format number, or the answer refusing the upload (4.13 or 4.15).

    aiocoap reassembles Block1 uploads with no cap, so the size is checked before any work.
    """
    if len(request.payload) > max_bytes:
        return 0, aiocoap.Message(code=Code.REQUEST_ENTITY_TOO_LARGE, size1=max_bytes)
    fmt = request.opt.content_format
    fmt_number = int(fmt) if fmt is not None else 50
    if fmt_number not in FORMATS:
        refused = _error(Code.UNSUPPORTED_CONTENT_FORMAT, "use Content-Format 0, 50 or 60", 50)
        return fmt_number, refused
    return fmt_number, None


def inner_request(
    request: aiocoap.Message, fmt_number: int, mount: str, kind: RequestKind = "infer"
) -> Request:
    """The protocol-free Request for a CoAP request (device id from ?device=, else the peer).

    aiocoap hands a resource the request with its own path stripped: ``mount`` puts it back,
    so filters see the path the device used.
    """
    host = request.remote.hostinfo if request.remote is not None else ""
    path = "/".join((mount, *request.opt.uri_path))
    query = "&".join(request.opt.uri_query)
    device = dict(q.split("=", 1) for q in request.opt.uri_query if "=" in q).get("device", host)
    return Request(
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
        kind=kind,
    )


class FeedbackResource(resource.Resource):  # type: ignore[misc]
    """POST /feedback: ``{id, rating, comment}`` about an earlier answer; 2.04 when recorded."""

    rt = "edge-runtime.feedback"
    ct = "50 60"

    def __init__(self, handler: Handler, payload_of: PayloadOf, max_payload_bytes: int):
        super().__init__()
        self._handler = handler
        self._payload_of = payload_of
        self._max = max_payload_bytes

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        fmt_number, refused = check_upload(request, self._max)
        if refused is not None:
            return refused
        answer_format = fmt_number if fmt_number in (50, 60) else 50
        response = await self._handler(inner_request(request, fmt_number, "feedback", "feedback"))
        payload = encode(self._payload_of(response), FORMATS[answer_format])
        code = (
            Code.CHANGED
            if response.status < 400
            else STATUS_CODES.get(response.status, Code.INTERNAL_SERVER_ERROR)
        )
        return aiocoap.Message(code=code, payload=payload, content_format=answer_format)


class JobsResource(resource.Resource):  # type: ignore[misc]
    """POST /jobs: start a streamed answer; its deltas are observed at /jobs/<id>."""

    rt = "edge-runtime.jobs"
    ct = "0 50 60"

    def __init__(
        self,
        site: resource.Site,
        handler: Handler,
        payload_of: PayloadOf,
        max_payload_bytes: int,
        keep_s: float = 60.0,
    ):
        super().__init__()
        self._site = site
        self._handler = handler
        self._payload_of = payload_of
        self._max = max_payload_bytes
        self._keep_s = keep_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return True

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        fmt_number, refused = check_upload(request, self._max)
        if refused is not None:
            return refused
        job_id = uuid.uuid4().hex[:12]
        job = JobResource()
        self._site.add_resource(["jobs", job_id], job)
        task = asyncio.get_running_loop().create_task(
            self._run(job, job_id, inner_request(request, fmt_number, "jobs"))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        payload = json.dumps({"job": job_id, "location": f"/jobs/{job_id}"}).encode()
        answer = aiocoap.Message(code=Code.CREATED, payload=payload, content_format=50)
        answer.opt.location_path = ("jobs", job_id)
        return answer

    async def _run(self, job: JobResource, job_id: str, inner: Request) -> None:
        async def sink(chunk: Chunk) -> None:
            job.publish({"seq": chunk.seq, "type": chunk.type, "text": chunk.text})

        response = await self._handler(inner, sink, stream=True)
        answer = self._payload_of(response)
        terminal = "error" if response.status >= 400 else "final"
        final: dict[str, Any] = {"seq": job.next_seq, "type": terminal}
        # Notifications are not split into blocks: the final state leaves out the text the
        # deltas already carried.
        final.update({k: v for k, v in answer.items() if k != "text"})
        job.publish(final)
        asyncio.get_running_loop().call_later(
            self._keep_s, self._site.remove_resource, ["jobs", job_id]
        )


class JobResource(resource.ObservableResource):  # type: ignore[misc]
    """GET /jobs/<id> with Observe: one notification per delta, then the final state."""

    def __init__(self) -> None:
        super().__init__()
        self._latest: dict[str, Any] = {"seq": -1, "type": "pending"}
        self.next_seq = 0

    def publish(self, state: dict[str, Any]) -> None:
        """A new state for observers (kept under ~1 KiB by the pipeline's coalescing)."""
        self._latest = state
        self.next_seq = int(state.get("seq", -1)) + 1
        self.updated_state()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        payload = json.dumps(self._latest, ensure_ascii=False).encode()
        return aiocoap.Message(code=Code.CONTENT, payload=payload, content_format=50)


class HealthResource(resource.Resource):  # type: ignore[misc]
    """GET /health: ready, degraded (with reasons) or not ready (5.03)."""

    rt = "edge-runtime.health"
    ct = "50"

    def __init__(self, report: HealthReport | None):
        super().__init__()
        self._report = report

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        report = self._report() if self._report is not None else {"status": "ready"}
        code = Code.SERVICE_UNAVAILABLE if report["status"] == "not_ready" else Code.CONTENT
        return aiocoap.Message(code=code, payload=json.dumps(report).encode(), content_format=50)


class DirectoryResource(resource.Resource):  # type: ignore[misc]
    """POST /rd?ep=<id>: a device registers itself (RFC 9176 style).

    The body is link-format (Content-Format 40: ``</temp>;rt="temperature"``, the rt values
    become its capabilities and ``?et=`` or ``d=`` its kind) or JSON (50: ``{"kind",
    "capabilities"}``). Answers 2.01 Created with Location-Path ``rd/<id>``.
    """

    rt = "core.rd"
    ct = "40 50"

    def __init__(self, register: DeviceRegister, max_payload_bytes: int):
        super().__init__()
        self._register = register
        self._max = max_payload_bytes

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        if len(request.payload) > self._max:
            return aiocoap.Message(code=Code.REQUEST_ENTITY_TOO_LARGE, size1=self._max)
        query = dict(q.split("=", 1) for q in request.opt.uri_query if "=" in q)
        device = query.get("ep", "")
        if not device or len(device) > 128 or "/" in device:
            return _error(Code.BAD_REQUEST, "give the device id as ?ep=<id>", 50)
        fmt = request.opt.content_format
        try:
            if fmt is None or int(fmt) == 40:
                capabilities = _link_format(request.payload)
                kind = str(query.get("et") or query.get("d") or "")
                found = Description(kind[:128], tuple(c[:128] for c in capabilities[:256]))
            elif int(fmt) == 50:
                found = parse_json_description(request.payload)
            else:
                return _error(Code.UNSUPPORTED_CONTENT_FORMAT, "use link-format (40) or JSON", 50)
        except Exception as exc:  # link_header raises its own ParseException; all are 4.00
            return _error(Code.BAD_REQUEST, f"cannot read the description: {exc}", 50)
        self._register(device, found)
        return aiocoap.Message(code=Code.CREATED, location_path=("rd", device))


def _link_format(payload: bytes) -> list[str]:
    """The rt values of a link-format body: what the device's resources are."""
    links = linkformat.parse(payload.decode("utf-8")).links if payload else []
    capabilities: list[str] = []
    for link in links:
        for name, value in link.attr_pairs:
            if name == "rt":
                capabilities.extend(str(value).split())
    return capabilities


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
        health: HealthReport | None = None,
        register: DeviceRegister | None = None,
    ):
        self._site = resource.Site()
        self._site.add_resource(
            [".well-known", "core"], resource.WKCResource(self._site.get_resources_as_linkheader)
        )
        self._site.add_resource(["infer"], InferResource(handler, payload_of, max_payload_bytes))
        self._site.add_resource(["health"], HealthResource(health))
        if register is not None:
            self._site.add_resource(["rd"], DirectoryResource(register, max_payload_bytes))
        self._site.add_resource(
            ["feedback"], FeedbackResource(handler, payload_of, max_payload_bytes)
        )
        self._site.add_resource(
            ["jobs"], JobsResource(self._site, handler, payload_of, max_payload_bytes)
        )
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
