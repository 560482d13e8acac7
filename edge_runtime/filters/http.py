"""proxy_http_call: requests to the upstreams named in config, made off the filter thread."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field

MAX_RESPONSE_BYTES = 1 << 20
MAX_IN_FLIGHT = 16
MAX_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class HttpResult:
    """A finished call, waiting to be handed to its filter's on_http_call_response."""

    # The filter instance that made the call.
    owner: object
    token: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    error: str = ""


@dataclass
class HttpCalls:
    """Outbound calls of every filter; results are collected by FilterService.poll()."""

    upstreams: dict[str, str] = field(default_factory=dict)
    _next: int = 1
    _in_flight: int = 0
    _done: deque[HttpResult] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(
        self,
        owner: object,
        upstream: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout_ms: int,
    ) -> int | None:
        """Begin a call; None when the upstream is unknown, the path bad or too many run."""
        base = self.upstreams.get(upstream)
        pseudo = {k: v for k, v in headers if k.startswith(b":")}
        path = pseudo.get(b":path", b"/").decode("utf-8", "replace")
        if base is None or not path.startswith("/"):
            return None
        with self._lock:
            if self._in_flight >= MAX_IN_FLIGHT:
                return None
            token = self._next
            self._next += 1
            self._in_flight += 1
        request = urllib.request.Request(
            base.rstrip("/") + path,
            data=body or None,
            method=pseudo.get(b":method", b"GET").decode("ascii", "replace"),
            headers={
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in headers
                if not k.startswith(b":")
            },
        )
        timeout = min(max(timeout_ms, 1), MAX_TIMEOUT_MS) / 1000
        thread = threading.Thread(
            target=self._run, args=(owner, token, request, timeout), daemon=True
        )
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self._in_flight -= 1
            return None
        return token

    def _run(
        self, owner: object, token: int, request: urllib.request.Request, timeout: float
    ) -> None:
        result = HttpResult(owner, token, 0, [], b"", error="call failed")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read(MAX_RESPONSE_BYTES + 1)[:MAX_RESPONSE_BYTES]
                headers = [(b":status", str(response.status).encode())]
                headers += [(k.lower().encode(), v.encode()) for k, v in response.getheaders()]
                result = HttpResult(owner, token, response.status, headers, body)
        except urllib.error.HTTPError as exc:
            headers = [(b":status", str(exc.code).encode())]
            try:
                body = exc.read(MAX_RESPONSE_BYTES)
            except Exception:
                body = b""
            result = HttpResult(owner, token, exc.code, headers, body)
        except Exception as exc:  # network errors of every kind end the call the same way
            result = HttpResult(owner, token, 0, [], b"", error=str(exc))
        finally:
            # Whatever happened, the call is over: free its slot and report it.
            with self._lock:
                self._in_flight -= 1
                self._done.append(result)

    @property
    def pending(self) -> int:
        """Calls under way, and answers not yet taken."""
        with self._lock:
            return self._in_flight + len(self._done)

    def take_done(self) -> list[HttpResult]:
        """Finished calls, cleared."""
        with self._lock:
            done = list(self._done)
            self._done.clear()
            return done
