"""GLM-4 tool calls in model output: ``{name}\\n{json arguments}``, parsed without trusting it."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """The model called a declared tool with a JSON object of arguments."""

    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PlainText:
    """The model answered in words."""

    text: str


@dataclass(frozen=True, slots=True)
class BadCall:
    """The model tried to call a tool, but the name is unknown or the arguments are not JSON."""

    name: str
    reason: str
    raw: str


ModelOutput = ParsedCall | PlainText | BadCall


def parse_output(text: str, tools: Collection[str]) -> ModelOutput:
    """Classify one assistant turn.

    GLM-4 writes a plain answer as an empty first line then the text, and a tool call as the
    tool's name on the first line then its arguments. Anything that is not clearly a call is
    treated as text, so a confused model degrades to a plain answer, never to an exception.
    """
    head, newline, rest = text.partition("\n")
    name = head.strip()
    if not newline or not name:
        return PlainText(text.strip())
    body = rest.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if name in tools:
        try:
            arguments = json.loads(body) if body else {}
        except json.JSONDecodeError as exc:
            return BadCall(name, f"arguments are not valid JSON ({exc.msg})", text)
        if not isinstance(arguments, dict):
            return BadCall(name, "arguments must be a JSON object", text)
        return ParsedCall(name, arguments)
    if _NAME.match(name) and body.startswith("{"):
        try:
            json.loads(body)
        except ValueError:
            return PlainText(text.strip())
        return BadCall(name, f"there is no tool named {name!r}", text)
    return PlainText(text.strip())
