"""The `env` hostcalls of one filter instance: every pointer checked, every failure a status."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import wasmtime

from edge_runtime.filters.abi import (
    BufferType,
    LogLevel,
    MapType,
    PairsError,
    StreamType,
    WasmStatus,
    decode_pairs,
    encode_pairs,
    split_property_path,
)
from edge_runtime.filters.http import HttpCalls
from edge_runtime.filters.memory import GuestMemory, GuestMemoryError
from edge_runtime.filters.metrics import FilterMetrics
from edge_runtime.filters.shared import SharedData, SharedQueues
from edge_runtime.filters.stream import HttpStream, LocalResponse, remove_header, replace_header

_PY_LEVELS = {
    LogLevel.TRACE: logging.DEBUG,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.CRITICAL: logging.CRITICAL,
}
MAX_LOG_BYTES = 16 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024


class FilterExit(BaseException):
    """The guest called proc_exit: its instance is finished."""

    def __init__(self, code: int):
        self.code = code
        super().__init__(f"proc_exit({code})")


@dataclass
class HostEnv:
    """What every filter instance of a chain shares."""

    shared_data: SharedData = field(default_factory=SharedData)
    queues: SharedQueues = field(default_factory=SharedQueues)
    metrics: FilterMetrics = field(default_factory=FilterMetrics)
    http: HttpCalls = field(default_factory=HttpCalls)
    wall_clock: Callable[[], int] = time.time_ns
    monotonic_clock: Callable[[], int] = time.monotonic_ns


@dataclass
class Context:
    """A root or stream context of one instance."""

    id: int
    stream: HttpStream | None = None
    # Set by proxy_continue_stream / proxy_close_stream while the stream is paused.
    resumed: bool = False


_F = TypeVar("_F", bound=Callable[..., int])


def guarded(method: _F) -> _F:
    """Turn every failure inside a hostcall into a status: nothing escapes into wasmtime."""

    @functools.wraps(method)
    def wrapper(self: Hostcalls, *args: int) -> int:
        try:
            return method(self, *args)
        except GuestMemoryError as exc:
            self.logger.debug("%s: %s: %s", self.name, method.__name__, exc)
            return WasmStatus.INVALID_MEMORY_ACCESS
        except PairsError as exc:
            self.logger.debug("%s: %s: %s", self.name, method.__name__, exc)
            return WasmStatus.BAD_ARGUMENT
        except (FilterExit, wasmtime.Trap, wasmtime.WasmtimeError):
            # The guest itself failed (a trap in its allocator, proc_exit): the instance is
            # finished, so this must unwind out of wasm, not become a status.
            raise
        except Exception:
            self.logger.exception("%s: %s failed", self.name, method.__name__)
            return WasmStatus.INTERNAL_FAILURE

    return wrapper  # type: ignore[return-value]


class Hostcalls:
    """Mixin implementing the hostcalls for a FilterInstance (see host.py)."""

    name: str
    root_id: str
    log_level: LogLevel
    logger: logging.Logger
    env: HostEnv
    memory: GuestMemory
    contexts: dict[int, Context]
    current: int
    configuration: bytes
    vm_configuration: bytes
    properties: dict[str, bytes]
    tick_period_ms: int
    logs: list[tuple[int, str]] | None
    http_call_status: tuple[int, bytes] | None
    # The response of the call being delivered to on_http_call_response, while it runs.
    http_response: tuple[list[tuple[bytes, bytes]], bytes] | None
    done: bool

    def stop_stream(self) -> None:
        """Tell the running phase to skip the filter's remaining callbacks (see host.py)."""

    def _stream(self) -> HttpStream | None:
        context = self.contexts.get(self.current)
        return context.stream if context else None

    # Logging ---------------------------------------------------------------

    @guarded
    def proxy_log(self, level: int, ptr: int, size: int) -> int:
        # Most SDK logging is DEBUG: drop it before reading guest memory.
        if level < self.log_level:
            return WasmStatus.OK
        if level > LogLevel.CRITICAL:
            return WasmStatus.BAD_ARGUMENT
        text = self.memory.read(ptr, min(size & 0xFFFFFFFF, MAX_LOG_BYTES))
        message = text.decode("utf-8", "replace")
        if self.logs is not None:
            self.logs.append((level, message))
        self.logger.log(_PY_LEVELS[LogLevel(level)], "[%s] %s", self.name, message)
        return WasmStatus.OK

    @guarded
    def proxy_get_log_level(self, ret_ptr: int) -> int:
        self.memory.write_u32(ret_ptr, int(self.log_level))
        return WasmStatus.OK

    # Time and timers -------------------------------------------------------

    @guarded
    def proxy_get_current_time_nanoseconds(self, ret_ptr: int) -> int:
        self.memory.write_u64(ret_ptr, self.env.wall_clock())
        return WasmStatus.OK

    @guarded
    def proxy_set_tick_period_milliseconds(self, period: int) -> int:
        self.tick_period_ms = period & 0xFFFFFFFF
        return WasmStatus.OK

    @guarded
    def proxy_set_effective_context(self, context_id: int) -> int:
        if context_id not in self.contexts:
            return WasmStatus.BAD_ARGUMENT
        self.current = context_id
        return WasmStatus.OK

    @guarded
    def proxy_done(self) -> int:
        self.done = True
        return WasmStatus.OK

    # Buffers -----------------------------------------------------------------

    def _buffer(self, which: int) -> bytes | bytearray | None:
        if which == BufferType.HTTP_CALL_RESPONSE_BODY:
            return self.http_response[1] if self.http_response else None
        if which == BufferType.PLUGIN_CONFIGURATION:
            return self.configuration
        if which == BufferType.VM_CONFIGURATION:
            return self.vm_configuration
        stream = self._stream()
        return stream.buffer(which) if stream else None

    @guarded
    def proxy_get_buffer_bytes(
        self, which: int, start: int, max_size: int, ret_ptr: int, ret_size: int
    ) -> int:
        buffer = self._buffer(which)
        if buffer is None:
            return WasmStatus.NOT_FOUND
        start, max_size = start & 0xFFFFFFFF, max_size & 0xFFFFFFFF
        if start > len(buffer):
            return WasmStatus.BAD_ARGUMENT
        self.memory.give(bytes(buffer[start : start + max_size]), ret_ptr, ret_size)
        return WasmStatus.OK

    @guarded
    def proxy_get_buffer_status(self, which: int, ret_len: int, ret_flags: int) -> int:
        buffer = self._buffer(which)
        if buffer is None:
            return WasmStatus.NOT_FOUND
        self.memory.write_u32(ret_len, len(buffer))
        self.memory.write_u32(ret_flags, 0)
        return WasmStatus.OK

    @guarded
    def proxy_set_buffer_bytes(
        self, which: int, start: int, size: int, ptr: int, length: int
    ) -> int:
        stream = self._stream()
        buffer = stream.buffer(which) if stream else None
        if buffer is None:
            return WasmStatus.NOT_FOUND
        data = self.memory.read(ptr, length)
        start, size = start & 0xFFFFFFFF, size & 0xFFFFFFFF
        # start=0,size=0 prepends; start past the end appends; otherwise replace the range.
        start = min(start, len(buffer))
        removed = min(size, len(buffer) - start)
        if len(buffer) - removed + len(data) > MAX_BODY_BYTES:
            return WasmStatus.BAD_ARGUMENT
        buffer[start : start + size] = data
        return WasmStatus.OK

    # Header maps ---------------------------------------------------------

    def _map(self, which: int) -> list[tuple[bytes, bytes]] | None:
        if which == MapType.HTTP_CALL_RESPONSE_HEADERS:
            return list(self.http_response[0]) if self.http_response else None
        stream = self._stream()
        return stream.header_map(which) if stream else None

    @guarded
    def proxy_get_header_map_size(self, which: int, ret_ptr: int) -> int:
        pairs = self._map(which)
        if pairs is None:
            return WasmStatus.NOT_FOUND
        self.memory.write_u32(ret_ptr, len(encode_pairs(pairs)))
        return WasmStatus.OK

    @guarded
    def proxy_get_header_map_pairs(self, which: int, ret_ptr: int, ret_size: int) -> int:
        pairs = self._map(which)
        if pairs is None:
            return WasmStatus.NOT_FOUND
        self.memory.give(encode_pairs(pairs), ret_ptr, ret_size)
        return WasmStatus.OK

    @guarded
    def proxy_set_header_map_pairs(self, which: int, ptr: int, size: int) -> int:
        pairs = decode_pairs(self.memory.read(ptr, size))
        stream = self._stream()
        if stream is None or not stream.set_header_map(which, pairs):
            return WasmStatus.NOT_FOUND
        return WasmStatus.OK

    @guarded
    def proxy_get_header_map_value(
        self, which: int, key_ptr: int, key_size: int, ret_ptr: int, ret_size: int
    ) -> int:
        pairs = self._map(which)
        if pairs is None:
            return WasmStatus.NOT_FOUND
        wanted = self.memory.read(key_ptr, key_size).lower()
        for key, value in pairs:
            if key.lower() == wanted:
                self.memory.give(value, ret_ptr, ret_size)
                return WasmStatus.OK
        return WasmStatus.NOT_FOUND

    @guarded
    def proxy_add_header_map_value(
        self, which: int, key_ptr: int, key_size: int, value_ptr: int, value_size: int
    ) -> int:
        pairs = self._map(which)
        if pairs is None:
            return WasmStatus.NOT_FOUND
        key = self.memory.read(key_ptr, key_size)
        pairs.append((key, self.memory.read(value_ptr, value_size)))
        return WasmStatus.OK

    @guarded
    def proxy_replace_header_map_value(
        self, which: int, key_ptr: int, key_size: int, value_ptr: int, value_size: int
    ) -> int:
        pairs = self._map(which)
        if pairs is None:
            return WasmStatus.NOT_FOUND
        key = self.memory.read(key_ptr, key_size)
        replace_header(pairs, key, self.memory.read(value_ptr, value_size))
        return WasmStatus.OK

    @guarded
    def proxy_remove_header_map_value(self, which: int, key_ptr: int, key_size: int) -> int:
        pairs = self._map(which)
        if pairs is None:
            return WasmStatus.NOT_FOUND
        remove_header(pairs, self.memory.read(key_ptr, key_size))
        return WasmStatus.OK

    # Properties ----------------------------------------------------------

    def _property(self, path: str) -> bytes | None:
        if path in self.properties:
            return self.properties[path]
        stream = self._stream()
        if stream is not None:
            return stream.properties.get(path)
        return None

    @guarded
    def proxy_get_property(self, path_ptr: int, path_size: int, ret_ptr: int, ret_size: int) -> int:
        path = ".".join(split_property_path(self.memory.read(path_ptr, path_size)))
        value = self._property(path)
        if value is None:
            return WasmStatus.NOT_FOUND
        self.memory.give(value, ret_ptr, ret_size)
        return WasmStatus.OK

    @guarded
    def proxy_set_property(
        self, path_ptr: int, path_size: int, value_ptr: int, value_size: int
    ) -> int:
        path = ".".join(split_property_path(self.memory.read(path_ptr, path_size)))
        value = self.memory.read(value_ptr, value_size)
        stream = self._stream()
        if stream is None:
            return WasmStatus.NOT_FOUND
        stream.properties[path] = value
        return WasmStatus.OK

    # Stream control --------------------------------------------------------

    @guarded
    def proxy_continue_stream(self, which: int) -> int:
        context = self.contexts.get(self.current)
        if context is None or context.stream is None:
            return WasmStatus.NOT_FOUND
        if which not in (StreamType.REQUEST, StreamType.RESPONSE):
            return WasmStatus.BAD_ARGUMENT
        context.resumed = True
        return WasmStatus.OK

    @guarded
    def proxy_close_stream(self, which: int) -> int:
        context = self.contexts.get(self.current)
        if context is None or context.stream is None:
            return WasmStatus.NOT_FOUND
        context.stream.closed = True
        context.resumed = True
        self.stop_stream()
        return WasmStatus.OK

    @guarded
    def proxy_continue_request(self) -> int:
        return self.proxy_continue_stream(StreamType.REQUEST)

    @guarded
    def proxy_continue_response(self) -> int:
        return self.proxy_continue_stream(StreamType.RESPONSE)

    @guarded
    def proxy_clear_route_cache(self) -> int:
        return WasmStatus.OK

    @guarded
    def proxy_get_configuration(self, ret_ptr: int, ret_size: int) -> int:
        self.memory.give(self.configuration, ret_ptr, ret_size)
        return WasmStatus.OK

    @guarded
    def proxy_get_status(self, code_ptr: int, msg_ptr: int, msg_size: int) -> int:
        if self.http_call_status is None:
            return WasmStatus.NOT_FOUND
        code, message = self.http_call_status
        self.memory.write_u32(code_ptr, code)
        self.memory.give(message, msg_ptr, msg_size)
        return WasmStatus.OK

    @guarded
    def proxy_send_local_response(
        self,
        status: int,
        details_ptr: int,
        details_size: int,
        body_ptr: int,
        body_size: int,
        headers_ptr: int,
        headers_size: int,
        grpc_status: int,
    ) -> int:
        stream = self._stream()
        if stream is None:
            return WasmStatus.NOT_FOUND
        details = self.memory.read(details_ptr, details_size).decode("utf-8", "replace")
        body = self.memory.read(body_ptr, body_size)
        headers = decode_pairs(self.memory.read(headers_ptr, headers_size)) if headers_size else []
        status &= 0xFFFFFFFF
        if not 100 <= status <= 599:
            return WasmStatus.BAD_ARGUMENT
        stream.local_response = LocalResponse(status, body, headers, details, self.name)
        self.stop_stream()
        return WasmStatus.OK

    # Shared data and queues ------------------------------------------------

    @guarded
    def proxy_get_shared_data(
        self, key_ptr: int, key_size: int, ret_ptr: int, ret_size: int, ret_cas: int
    ) -> int:
        found = self.env.shared_data.get(self.memory.read(key_ptr, key_size))
        if found is None:
            return WasmStatus.NOT_FOUND
        value, cas = found
        self.memory.give(value, ret_ptr, ret_size)
        self.memory.write_u32(ret_cas, cas)
        return WasmStatus.OK

    @guarded
    def proxy_set_shared_data(
        self, key_ptr: int, key_size: int, value_ptr: int, value_size: int, cas: int
    ) -> int:
        key = self.memory.read(key_ptr, key_size)
        value = self.memory.read(value_ptr, value_size)
        return self.env.shared_data.set(key, value, cas & 0xFFFFFFFF)

    @guarded
    def proxy_register_shared_queue(self, name_ptr: int, name_size: int, ret_id: int) -> int:
        name = self.memory.read(name_ptr, name_size)
        self.memory.write_u32(ret_id, self.env.queues.register(b"", name, self.name))
        return WasmStatus.OK

    @guarded
    def proxy_resolve_shared_queue(
        self, vm_ptr: int, vm_size: int, name_ptr: int, name_size: int, ret_id: int
    ) -> int:
        self.memory.read(vm_ptr, vm_size)
        found = self.env.queues.resolve(b"", self.memory.read(name_ptr, name_size))
        if found is None:
            return WasmStatus.NOT_FOUND
        self.memory.write_u32(ret_id, found)
        return WasmStatus.OK

    @guarded
    def proxy_enqueue_shared_queue(self, queue_id: int, ptr: int, size: int) -> int:
        status, _owner = self.env.queues.enqueue(queue_id, self.memory.read(ptr, size))
        return status

    @guarded
    def proxy_dequeue_shared_queue(self, queue_id: int, ret_ptr: int, ret_size: int) -> int:
        status, item = self.env.queues.dequeue(queue_id)
        if status == WasmStatus.OK:
            self.memory.give(item, ret_ptr, ret_size)
        return status

    # Metrics ---------------------------------------------------------------

    @guarded
    def proxy_define_metric(self, kind: int, name_ptr: int, name_size: int, ret_id: int) -> int:
        name = self.memory.read(name_ptr, name_size).decode("utf-8", "replace")
        status, metric_id = self.env.metrics.define(self.name, kind, name)
        if status == WasmStatus.OK:
            self.memory.write_u32(ret_id, metric_id)
        return status

    @guarded
    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        return self.env.metrics.record(metric_id, value)

    @guarded
    def proxy_increment_metric(self, metric_id: int, delta: int) -> int:
        return self.env.metrics.increment(metric_id, delta)

    @guarded
    def proxy_get_metric(self, metric_id: int, ret_ptr: int) -> int:
        value = self.env.metrics.value(metric_id)
        if value is None:
            return WasmStatus.NOT_FOUND
        self.memory.write_u64(ret_ptr, value)
        return WasmStatus.OK

    # Outbound calls ------------------------------------------------------

    @guarded
    def proxy_http_call(
        self,
        upstream_ptr: int,
        upstream_size: int,
        headers_ptr: int,
        headers_size: int,
        body_ptr: int,
        body_size: int,
        trailers_ptr: int,
        trailers_size: int,
        timeout_ms: int,
        ret_token: int,
    ) -> int:
        upstream = self.memory.read(upstream_ptr, upstream_size).decode("utf-8", "replace")
        headers = decode_pairs(self.memory.read(headers_ptr, headers_size)) if headers_size else []
        body = self.memory.read(body_ptr, body_size)
        self.memory.read(trailers_ptr, trailers_size)
        self.memory.write_u32(ret_token, 0)
        # Only upstreams named in the config are reachable; nothing else ever is.
        token = self.env.http.start(self, upstream, headers, body, timeout_ms)
        if token is None:
            self.logger.warning("%s: http_call to %r refused", self.name, upstream)
            return WasmStatus.BAD_ARGUMENT
        self.memory.write_u32(ret_token, token)
        return WasmStatus.OK

    def emscripten_notify_memory_growth(self, pages: int) -> None:
        """Emscripten's growth notice; nothing to do, memory is re-measured on every access."""

    @guarded
    def proxy_call_foreign_function(self, *args: int) -> int:
        # No foreign functions are registered: NOT_FOUND is what every SDK expects then.
        return WasmStatus.NOT_FOUND

    @guarded
    def _unimplemented(self, *args: int) -> int:
        return WasmStatus.UNIMPLEMENTED

    # gRPC has no place on an MQTT/CoAP box; SDKs accept UNIMPLEMENTED from these.
    proxy_grpc_call = proxy_grpc_stream = proxy_grpc_send = _unimplemented
    proxy_grpc_cancel = proxy_grpc_close = _unimplemented
