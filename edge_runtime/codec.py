"""Request and answer bodies: JSON, CBOR or plain text in, the same format out, clear errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import cbor2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import PayloadTooLargeError, RequestError, UnsupportedMediaTypeError

JSON = "application/json"
CBOR = "application/cbor"
TEXT = "text/plain"
MEDIA_TYPES = (JSON, CBOR, TEXT)
Route = Literal["direct", "orchestrate", "echo"]


class ChatMessage(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant", "tool", "observation"]
    content: str = Field(max_length=1_000_000)


class InferenceRequest(BaseModel):
    """What a device asks: a prompt or a conversation, and how to answer it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # MQTT 3.1.1 devices carry their correlation id in the body.
    id: str | None = Field(None, max_length=256)
    prompt: str | None = Field(None, max_length=1_000_000)
    messages: tuple[ChatMessage, ...] | None = Field(None, min_length=1, max_length=256)
    session: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    temperature: float | None = Field(None, ge=0, le=10)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    # Makes sampling reproducible (tests, debugging a device's odd answer).
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    route: Route | None = None

    @model_validator(mode="after")
    def _one_input(self) -> InferenceRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self

    def conversation(self) -> list[dict[str, str]]:
        """The request as chat messages."""
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type value (parameters dropped); JSON when absent."""
    if not content_type:
        return JSON
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in ("application/json", "text/json"):
        return JSON
    if kind in (CBOR, "application/cbor-seq"):
        return CBOR
    if kind == TEXT:
        return TEXT
    raise UnsupportedMediaTypeError(
        f"content type {kind!r} is not supported; use {', '.join(MEDIA_TYPES)}"
    )


def decode_request(body: bytes, content_type: str | None, *, max_bytes: int) -> InferenceRequest:
    """Parse and validate a request body; every problem is a RequestError that says what."""
    if media_type(content_type) == TEXT:
        _check_size(body, max_bytes)
        return _validate({"prompt": _text(body)})
    data = decode_object(body, content_type, max_bytes=max_bytes)
    return _validate(data)


def decode_object(body: bytes, content_type: str | None, *, max_bytes: int) -> Mapping[str, Any]:
    """A JSON or CBOR body that must be an object (requests, feedback)."""
    _check_size(body, max_bytes)
    kind = media_type(content_type)
    if kind in (JSON, TEXT):
        try:
            data = json.loads(_text(body))
        except json.JSONDecodeError as exc:
            raise RequestError(
                f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except RecursionError:
            raise RequestError("malformed JSON: nested too deeply") from None
    else:
        try:
            data = cbor2.loads(body)
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise RequestError(f"malformed CBOR: {exc}") from None
    if not isinstance(data, Mapping):
        raise RequestError("the body must be an object")
    return data


def _check_size(body: bytes, max_bytes: int) -> None:
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"body is {len(body)} bytes; the limit is {max_bytes}")


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"body is not valid UTF-8 (byte {exc.start})") from None


def _validate(data: Mapping[str, Any]) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise RequestError(f"{where}: {message}") from None


def encode(payload: Mapping[str, Any], kind: str) -> bytes:
    """An answer, error or stream chunk in the request's format (text answers are JSON)."""
    if kind == CBOR:
        return bytes(cbor2.dumps(dict(payload)))
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def error_payload(status: int, message: str) -> dict[str, Any]:
    """The error body every transport sends."""
    return {"error": {"status": status, "message": message}}
