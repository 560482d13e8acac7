"""Transports: the only code that knows MQTT or CoAP; what they hand requests to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from edge_runtime.devices import Description
from edge_runtime.messages import Chunk, Request, Response

ChunkSink = Callable[[Chunk], Awaitable[None]]
# Turns a Response into the body a device receives (answer or error).
PayloadOf = Callable[[Response], dict[str, Any]]
# A device announced itself: its id and its description (MQTT birth payload).
DeviceBirth = Callable[[str, bytes], None]
# A device registered over CoAP: its id and what it says of itself.
DeviceRegister = Callable[[str, Description], None]
# The node's health report: {"status": ..., "reasons": [...]}.
HealthReport = Callable[[], dict[str, Any]]


class Handler(Protocol):
    """What a transport hands each request to (the pipeline's handle())."""

    def __call__(
        self, request: Request, sink: ChunkSink | None = None, *, stream: bool | None = None
    ) -> Awaitable[Response]:
        """Answer ``request``; deltas go to ``sink`` when it streams."""
        ...
