"""Request bodies: every format, every way they can be wrong."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_runtime.codec import CBOR, JSON, decode_request, encode, error_payload, media_type
from edge_runtime.errors import PayloadTooLargeError, RequestError, UnsupportedMediaTypeError
from edge_runtime.messages import Status

LIMIT = 4096


def test_json_prompt_with_options() -> None:
    body = json.dumps(
        {"prompt": "厨房的温度是多少？", "max_tokens": 12, "stream": True, "route": "echo"}
    )
    request = decode_request(body.encode(), "application/json; charset=utf-8", max_bytes=LIMIT)
    assert (request.prompt, request.max_tokens, request.stream, request.route) == (
        "厨房的温度是多少？",
        12,
        True,
        "echo",
    )
    assert request.conversation() == [{"role": "user", "content": "厨房的温度是多少？"}]


def test_cbor_messages() -> None:
    body = cbor2.dumps(
        {
            "messages": [{"role": "system", "content": "brief"}, {"role": "user", "content": "hi"}],
            "session": "s1",
        }
    )
    request = decode_request(body, "application/cbor", max_bytes=LIMIT)
    assert request.session == "s1"
    assert [m["role"] for m in request.conversation()] == ["system", "user"]


def test_plain_text_is_a_prompt() -> None:
    assert (
        decode_request(b"turn on the fan", "text/plain", max_bytes=LIMIT).prompt
        == "turn on the fan"
    )


def test_no_content_type_means_json() -> None:
    assert decode_request(b'{"prompt": "x"}', None, max_bytes=LIMIT).prompt == "x"


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        (b'{"prompt": "x"', JSON, "malformed JSON"),
        (b"\xff\xfe{}", JSON, "not valid UTF-8"),
        (b"\xff", "text/plain", "not valid UTF-8"),
        (b"\x9f\x01", CBOR, "malformed CBOR"),
        (b"[1, 2]", JSON, "must be an object"),
        (b"{}", JSON, "exactly one of prompt or messages"),
        (b'{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', JSON, "exactly one"),
        (b'{"prompt": "a", "temperature": -1}', JSON, "temperature"),
        (b'{"prompt": "a", "max_tokens": 0}', JSON, "max_tokens"),
        (b'{"prompt": "a", "route": "cloud"}', JSON, "route"),
        (b'{"prompt": "a", "bogus": 1}', JSON, "bogus: unknown field"),
        (b'{"messages": [{"role": "robot", "content": "b"}]}', JSON, "messages.0.role"),
        (b'{"messages": []}', JSON, "messages"),
    ],
)
def test_bad_bodies_are_request_errors(body: bytes, kind: str, message: str) -> None:
    with pytest.raises(RequestError, match=message) as info:
        decode_request(body, kind, max_bytes=LIMIT)
    assert info.value.status == Status.BAD_REQUEST


def test_oversize_is_413_before_parsing() -> None:
    with pytest.raises(PayloadTooLargeError) as info:
        decode_request(b"{" * (LIMIT + 1), JSON, max_bytes=LIMIT)
    assert info.value.status == Status.PAYLOAD_TOO_LARGE


def test_unsupported_media_type_is_415() -> None:
    with pytest.raises(UnsupportedMediaTypeError) as info:
        media_type("application/xml")
    assert info.value.status == Status.UNSUPPORTED_MEDIA_TYPE


@given(st.binary(max_size=200), st.sampled_from([JSON, CBOR, "text/plain"]))
def test_any_bytes_give_a_request_or_a_request_error(body: bytes, kind: str) -> None:
    try:
        request = decode_request(body, kind, max_bytes=LIMIT)
    except RequestError as exc:
        assert exc.status == Status.BAD_REQUEST
    else:
        assert request.conversation()


def test_answers_are_encoded_in_the_request_format() -> None:
    payload = error_payload(429, "slow down")
    assert json.loads(encode(payload, JSON)) == {"error": {"status": 429, "message": "slow down"}}
    assert cbor2.loads(encode(payload, CBOR)) == payload


def test_deeply_nested_bodies_are_bad_requests_not_crashes() -> None:
    from edge_runtime.codec import decode_object

    with pytest.raises(RequestError, match="nested too deeply"):
        decode_object(b"[" * 100_000, "application/json", max_bytes=1 << 20)
