"""How step results read in an answer, in the request's language."""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from typing import Any

from edge_runtime.orchestrator.planner import Step
from edge_runtime.orchestrator.tools import ToolCall

_PHRASES: dict[str, dict[str, str]] = {
    "en": {
        "failed": "{tool} failed: {error}",
        "noted": "Noted: {note}",
        "found": "Your notes:\n{notes}",
        "nothing": "I found no notes about that.",
        "step_failed": "I could not finish this part: {error}",
    },
    "zh": {
        "failed": "{tool}调用失败：{error}",
        "noted": "已记下：{note}",
        "found": "您的笔记：\n{notes}",
        "nothing": "没有找到相关的笔记。",
        "step_failed": "这一部分未能完成：{error}",
    },
}


def short_language(language: str) -> str:
    """The phrase-table key of a language code: "zh" for any Chinese, else "en"."""
    return "zh" if language.startswith("zh") else "en"


def phrase(language: str, key: str, **fields: Any) -> str:
    """One of the answer's fixed phrases."""
    return _PHRASES[short_language(language)][key].format(**fields)


def describe_call(call: ToolCall, language: str, templates: Mapping[str, str]) -> str:
    """A tool call as a sentence: the tool's answer template, or its result as JSON."""
    if call.error is not None:
        return phrase(language, "failed", tool=call.name, error=call.error)
    template = templates.get(short_language(language)) or templates.get("en")
    if template:
        fields: dict[str, Any] = dict(call.arguments)
        if isinstance(call.output, Mapping):
            fields.update(call.output)
        fields["result"] = call.output
        try:
            return string.Formatter().vformat(template, (), _Missing(fields))
        except (ValueError, IndexError, AttributeError, TypeError):
            pass
    return json.dumps(call.output, ensure_ascii=False)


def describe_step(step: Step, text: str, error: str | None, language: str) -> str:
    """A finished non-tool step as the answer tells it."""
    if error is not None and step.kind != "tool":
        return phrase(language, "step_failed", error=error)
    if step.kind == "note_add":
        return phrase(language, "noted", note=text)
    if step.kind == "note_search":
        return phrase(language, "found", notes=text) if text else phrase(language, "nothing")
    return text


class _Missing(dict[str, Any]):
    """Template fields the result lacks read as "?" instead of failing the answer."""

    def __missing__(self, key: str) -> str:
        return "?"
