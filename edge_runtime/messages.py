"""The protocol-free envelope: Request, Response, Chunk, Status, usage and timing figures."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


class Status(enum.IntEnum):
    """Outcome of a request, in HTTP terms; transports map it to their own codes."""

    OK = 200
    CREATED = 201
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    PAYLOAD_TOO_LARGE = 413
    UNSUPPORTED_MEDIA_TYPE = 415
    UNPROCESSABLE = 422
    TOO_MANY_REQUESTS = 429
    INTERNAL_ERROR = 500
    BAD_GATEWAY = 502
    SERVICE_UNAVAILABLE = 503
    GATEWAY_TIMEOUT = 504


Header = tuple[str, str]
RequestKind = Literal["infer", "feedback"]


@dataclass(frozen=True, slots=True)
class Request:
    """One device request, whatever transport carried it."""

    id: str
    transport: str
    method: str
    path: str
    headers: tuple[Header, ...] = ()
    body: bytes = b""
    device_id: str = ""
    # Monotonic clock reading after which the answer is useless to the device.
    deadline: float | None = None
    # "feedback": a rating of an earlier answer, not a question.
    kind: RequestKind = "infer"

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), if any."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Timing:
    """Where the time of one generation went, in seconds."""

    prefill_s: float
    decode_s: float
    time_to_first_token_s: float

    def decode_tokens_per_s(self, completion_tokens: int) -> float:
        """Tokens per second over the decode phase (tokens after the first)."""
        steps = completion_tokens - 1
        if steps <= 0 or self.decode_s <= 0:
            return 0.0
        return steps / self.decode_s


FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to one request."""

    id: str
    status: Status = Status.OK
    text: str = ""
    route: str = ""
    finish_reason: FinishReason = "stop"
    usage: Usage | None = None
    timing: Timing | None = None
    headers: tuple[Header, ...] = ()
    tool_calls: tuple[dict[str, object], ...] = field(default_factory=tuple)
    # Route-specific parts of the answer: intents, steps, a clarification, cached.
    details: Mapping[str, object] = field(default_factory=dict)


ChunkType = Literal["delta", "final", "error"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a streamed answer; a stream ends with exactly one final or error chunk."""

    seq: int
    type: ChunkType
    text: str = ""
