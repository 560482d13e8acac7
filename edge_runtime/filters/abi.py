"""The Proxy-Wasm ABI: enums, hostcall and WASI signatures, version detection, the pair codec."""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence

I32 = "i32"
I64 = "i64"


class AbiVersion(enum.Enum):
    """The ABI versions a module can announce with an empty exported function."""

    V0_2_1 = "proxy_abi_version_0_2_1"
    V0_2_0 = "proxy_abi_version_0_2_0"
    V0_1_0 = "proxy_abi_version_0_1_0"


class WasmStatus(enum.IntEnum):
    """Results of hostcalls."""

    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    INTERNAL_FAILURE = 10
    UNIMPLEMENTED = 12


class Action(enum.IntEnum):
    """What a stream callback asks for; any non-zero value pauses (AssemblyScript uses 0..4)."""

    CONTINUE = 0
    PAUSE = 1


class LogLevel(enum.IntEnum):
    """proxy_log levels."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5


class MetricType(enum.IntEnum):
    """proxy_define_metric kinds."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class BufferType(enum.IntEnum):
    """Buffers a filter can read or write."""

    REQUEST_BODY = 0
    RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_RECEIVE_BUFFER = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7
    FOREIGN_FUNCTION_ARGUMENTS = 8


class MapType(enum.IntEnum):
    """Header maps a filter can read or write."""

    REQUEST_HEADERS = 0
    REQUEST_TRAILERS = 1
    RESPONSE_HEADERS = 2
    RESPONSE_TRAILERS = 3
    GRPC_RECEIVE_INITIAL_METADATA = 4
    GRPC_RECEIVE_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class StreamType(enum.IntEnum):
    """Streams proxy_continue_stream and proxy_close_stream name."""

    REQUEST = 0
    RESPONSE = 1
    DOWNSTREAM = 2
    UPSTREAM = 3


Signature = tuple[tuple[str, ...], tuple[str, ...]]


def _sig(params: int, *, results: int = 1, i64_at: Sequence[int] = ()) -> Signature:
    types = tuple(I64 if i in i64_at else I32 for i in range(params))
    return types, (I32,) * results


# Every `env` hostcall of ABI v0.1.0 to v0.2.1 with its exact wasm type: wasmtime refuses to
# instantiate a module whose imports do not all resolve, and SDKs import many they never call.
HOSTCALLS: dict[str, Signature] = {
    "proxy_log": _sig(3),
    "proxy_get_log_level": _sig(1),
    "proxy_get_current_time_nanoseconds": _sig(1),
    "proxy_set_tick_period_milliseconds": _sig(1),
    "proxy_set_effective_context": _sig(1),
    "proxy_done": _sig(0),
    "proxy_call_foreign_function": _sig(6),
    "proxy_get_buffer_bytes": _sig(5),
    "proxy_get_buffer_status": _sig(3),
    "proxy_set_buffer_bytes": _sig(5),
    "proxy_get_header_map_pairs": _sig(3),
    "proxy_set_header_map_pairs": _sig(3),
    "proxy_get_header_map_size": _sig(2),
    "proxy_get_header_map_value": _sig(5),
    "proxy_add_header_map_value": _sig(5),
    "proxy_replace_header_map_value": _sig(5),
    "proxy_remove_header_map_value": _sig(3),
    "proxy_get_property": _sig(4),
    "proxy_set_property": _sig(4),
    "proxy_continue_stream": _sig(1),
    "proxy_close_stream": _sig(1),
    "proxy_get_status": _sig(3),
    "proxy_send_local_response": _sig(8),
    "proxy_http_call": _sig(10),
    "proxy_grpc_call": _sig(12),
    "proxy_grpc_stream": _sig(9),
    "proxy_grpc_send": _sig(4),
    "proxy_grpc_cancel": _sig(1),
    "proxy_grpc_close": _sig(1),
    "proxy_get_shared_data": _sig(5),
    "proxy_set_shared_data": _sig(5),
    "proxy_register_shared_queue": _sig(3),
    "proxy_resolve_shared_queue": _sig(5),
    "proxy_enqueue_shared_queue": _sig(3),
    "proxy_dequeue_shared_queue": _sig(3),
    "proxy_define_metric": _sig(4),
    "proxy_record_metric": _sig(2, i64_at=(1,)),
    "proxy_increment_metric": _sig(2, i64_at=(1,)),
    "proxy_get_metric": _sig(2),
    # v0.1.0 only.
    "proxy_get_configuration": _sig(2),
    "proxy_continue_request": _sig(0),
    "proxy_continue_response": _sig(0),
    "proxy_clear_route_cache": _sig(0),
    # Emscripten-built C++ modules announce memory growth.
    "emscripten_notify_memory_growth": ((I32,), ()),
}

# The WASI preview 1 subset SDK-built modules import; defined under both module names.
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
WASI: dict[str, Signature] = {
    "fd_write": _sig(4),
    "fd_read": _sig(4),
    "fd_close": _sig(1),
    "fd_seek": ((I32, I64, I32, I32), (I32,)),
    "fd_fdstat_get": _sig(2),
    "fd_prestat_get": _sig(2),
    "fd_prestat_dir_name": _sig(3),
    "clock_time_get": ((I32, I64, I32), (I32,)),
    "clock_res_get": _sig(2),
    "random_get": _sig(2),
    "environ_sizes_get": _sig(2),
    "environ_get": _sig(2),
    "args_sizes_get": _sig(2),
    "args_get": _sig(2),
    "proc_exit": ((I32,), ()),
    "sched_yield": _sig(0),
    "poll_oneoff": _sig(4),
}


class WasiErrno(enum.IntEnum):
    """The WASI errno values the stubs return."""

    SUCCESS = 0
    BADF = 8
    INVAL = 28
    NOSYS = 52
    NOTSUP = 58


class PairsError(ValueError):
    """A serialized header map is malformed or over the limits."""


# The reference host's caps on a serialized map.
MAX_PAIRS_BYTES = 1 << 20
MAX_PAIRS = 1024

_U32 = struct.Struct("<I")


def encode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Serialize a header map: u32 count, count × (u32 key len, u32 value len), NUL-ended data."""
    items = list(pairs)
    sizes = b"".join(struct.pack("<II", len(k), len(v)) for k, v in items)
    data = b"".join(k + b"\0" + v + b"\0" for k, v in items)
    return _U32.pack(len(items)) + sizes + data


def decode_pairs(blob: bytes) -> list[tuple[bytes, bytes]]:
    """Parse a serialized header map; raise PairsError on anything malformed."""
    if len(blob) > MAX_PAIRS_BYTES:
        raise PairsError(f"{len(blob)} bytes is over {MAX_PAIRS_BYTES}")
    if len(blob) < 4:
        raise PairsError("shorter than its count")
    (count,) = _U32.unpack_from(blob, 0)
    if count > MAX_PAIRS:
        raise PairsError(f"{count} pairs is over {MAX_PAIRS}")
    offset = 4 + 8 * count
    if offset > len(blob):
        raise PairsError("truncated size table")
    pairs: list[tuple[bytes, bytes]] = []
    for index in range(count):
        key_len, value_len = struct.unpack_from("<II", blob, 4 + 8 * index)
        end = offset + key_len + 1 + value_len + 1
        if end > len(blob):
            raise PairsError(f"pair {index} runs past the end")
        key = blob[offset : offset + key_len]
        value_at = offset + key_len + 1
        value = blob[value_at : value_at + value_len]
        if blob[offset + key_len] != 0 or blob[end - 1] != 0:
            raise PairsError(f"pair {index} is not NUL-terminated")
        pairs.append((key, value))
        offset = end
    if offset != len(blob):
        raise PairsError(f"{len(blob) - offset} trailing bytes")
    return pairs


def split_property_path(raw: bytes) -> tuple[str, ...]:
    """A property path's segments: NUL-separated, with one trailing NUL (C++ SDK) ignored."""
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return tuple(part.decode("utf-8", "replace") for part in raw.split(b"\0"))
