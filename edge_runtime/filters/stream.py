"""One request as filters see it: header maps, bodies, properties, and a local answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_runtime.filters.abi import BufferType, MapType

Pairs = list[tuple[bytes, bytes]]


@dataclass
class LocalResponse:
    """An answer a filter gave in place of the route (proxy_send_local_response)."""

    status: int
    body: bytes = b""
    headers: Pairs = field(default_factory=list)
    details: str = ""
    # The filter that answered, for logs and metrics.
    filter: str = ""


@dataclass
class HttpStream:
    """The request and response of one exchange, shared by every filter of the chain."""

    request_headers: Pairs = field(default_factory=list)
    request_body: bytearray = field(default_factory=bytearray)
    response_headers: Pairs = field(default_factory=list)
    response_body: bytearray = field(default_factory=bytearray)
    request_trailers: Pairs = field(default_factory=list)
    response_trailers: Pairs = field(default_factory=list)
    # Property paths (segments joined by ".") to raw bytes, e.g. "device.id" → b"sensor-1".
    properties: dict[str, bytes] = field(default_factory=dict)
    local_response: LocalResponse | None = None
    # Set by proxy_close_stream: the exchange ends without an answer from the route.
    closed: bool = False

    def header_map(self, which: int) -> Pairs | None:
        """The map a hostcall names, or None for maps this host does not have."""
        if which == MapType.REQUEST_HEADERS:
            return self.request_headers
        if which == MapType.RESPONSE_HEADERS:
            return self.response_headers
        if which == MapType.REQUEST_TRAILERS:
            return self.request_trailers
        if which == MapType.RESPONSE_TRAILERS:
            return self.response_trailers
        return None

    def set_header_map(self, which: int, pairs: Pairs) -> bool:
        """Replace a whole map in place (filters later in the chain see the change)."""
        target = self.header_map(which)
        if target is None:
            return False
        target[:] = pairs
        return True

    def buffer(self, which: int) -> bytearray | None:
        """The body a hostcall names, or None."""
        if which == BufferType.REQUEST_BODY:
            return self.request_body
        if which == BufferType.RESPONSE_BODY:
            return self.response_body
        return None


def get_header(pairs: Pairs, name: bytes) -> bytes | None:
    """First value of a header (names compare case-insensitively, as HTTP/2 lowercases them)."""
    wanted = name.lower()
    for key, value in pairs:
        if key.lower() == wanted:
            return value
    return None


def remove_header(pairs: Pairs, name: bytes) -> None:
    """Remove every value of a header."""
    wanted = name.lower()
    pairs[:] = [(k, v) for k, v in pairs if k.lower() != wanted]


def replace_header(pairs: Pairs, name: bytes, value: bytes) -> None:
    """Set a header to one value, in place of the first occurrence, dropping the others."""
    wanted = name.lower()
    for index, (key, _) in enumerate(pairs):
        if key.lower() == wanted:
            pairs[index] = (key, value)
            pairs[index + 1 :] = [(k, v) for k, v in pairs[index + 1 :] if k.lower() != wanted]
            return
    pairs.append((name, value))
