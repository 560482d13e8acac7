"""The GLM-4 tool-call parser: calls, plain answers, and everything in between."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge_runtime.orchestrator.toolcall import BadCall, ParsedCall, PlainText, parse_output

TOOLS = {"weather", "room_temperature"}


def test_a_call_is_name_then_json() -> None:
    out = parse_output('weather\n{"city": "北京", "date": "tomorrow"}', TOOLS)
    assert out == ParsedCall("weather", {"city": "北京", "date": "tomorrow"})


def test_fenced_json_is_accepted() -> None:
    out = parse_output('weather\n```json\n{"city": "Paris"}\n```', TOOLS)
    assert out == ParsedCall("weather", {"city": "Paris"})


def test_an_empty_first_line_is_a_plain_answer() -> None:
    assert parse_output("\nIt will rain tomorrow.", TOOLS) == PlainText("It will rain tomorrow.")


def test_text_without_a_newline_is_plain() -> None:
    assert parse_output("weather", TOOLS) == PlainText("weather")


def test_malformed_json_for_a_known_tool_is_a_bad_call() -> None:
    out = parse_output('weather\n{"city": "Paris"', TOOLS)
    assert isinstance(out, BadCall)
    assert out.name == "weather" and "not valid JSON" in out.reason


def test_arguments_must_be_an_object() -> None:
    out = parse_output('weather\n["Paris"]', TOOLS)
    assert isinstance(out, BadCall) and "object" in out.reason


def test_an_unknown_tool_is_named() -> None:
    out = parse_output('launch_rockets\n{"count": 3}', TOOLS)
    assert isinstance(out, BadCall) and "launch_rockets" in out.reason


def test_prose_that_looks_like_a_name_stays_prose() -> None:
    text = "Sure\nhere is your reminder: take an umbrella."
    assert parse_output(text, TOOLS) == PlainText(text)


@given(st.text(max_size=200))
def test_any_text_parses_without_raising(text: str) -> None:
    out = parse_output(text, TOOLS)
    assert isinstance(out, ParsedCall | PlainText | BadCall)
    if isinstance(out, ParsedCall):
        assert out.name in TOOLS and isinstance(out.arguments, dict)
