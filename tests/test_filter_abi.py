"""The header-map codec and property paths of the Proxy-Wasm ABI."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.filters.abi import (
    HOSTCALLS,
    MAX_PAIRS,
    PairsError,
    decode_pairs,
    encode_pairs,
    split_property_path,
)

header = st.binary(max_size=40).filter(lambda b: b"\0" not in b)


def test_spec_example_bytes() -> None:
    blob = encode_pairs([(b"a", b"1"), (b"b", b"22")])
    assert blob.hex() == "0200000001000000010000000100000002000000610031006200323200"
    assert len(blob) == 29


@given(st.lists(st.tuples(header, header), max_size=30))
def test_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    assert decode_pairs(encode_pairs(pairs)) == pairs


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_never_crashes(blob: bytes) -> None:
    try:
        pairs = decode_pairs(blob)
    except PairsError:
        return
    assert encode_pairs(pairs) == blob


@given(st.lists(st.tuples(header, header), min_size=1, max_size=10), st.data())
def test_any_truncation_is_rejected(pairs: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    blob = encode_pairs(pairs)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(PairsError):
        decode_pairs(blob[:cut])


def test_missing_terminator_is_rejected() -> None:
    blob = bytearray(encode_pairs([(b"k", b"v")]))
    blob[-1] = ord("x")
    with pytest.raises(PairsError, match="NUL"):
        decode_pairs(bytes(blob))


def test_limits() -> None:
    with pytest.raises(PairsError, match="pairs is over"):
        decode_pairs(struct.pack("<I", MAX_PAIRS + 1))
    with pytest.raises(PairsError, match="bytes is over"):
        decode_pairs(b"\0" * (2 << 20))
    # A huge declared count with no table behind it is refused without allocating.
    with pytest.raises(PairsError):
        decode_pairs(struct.pack("<II", 1000, 5))


def test_property_paths() -> None:
    assert split_property_path(b"plugin_root_id") == ("plugin_root_id",)
    assert split_property_path(b"device\0id") == ("device", "id")
    assert split_property_path(b"device\0id\0") == ("device", "id")  # the C++ SDK's trailing NUL


def test_hostcall_table_has_every_abi_function() -> None:
    for name in (
        "proxy_log",
        "proxy_get_log_level",
        "proxy_send_local_response",
        "proxy_http_call",
        "proxy_grpc_call",
        "proxy_get_configuration",
        "proxy_continue_request",
        "proxy_call_foreign_function",
    ):
        assert name in HOSTCALLS
    assert HOSTCALLS["proxy_grpc_call"][0] == ("i32",) * 12
    assert HOSTCALLS["proxy_record_metric"][0] == ("i32", "i64")
