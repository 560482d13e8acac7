"""`model eval` scoring: an oracle scores full marks, a model that never calls a tool does not."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from edge_runtime.bench.assistant import FIGURES, render, score
from edge_runtime.model import dataset


def oracle(samples: Sequence[dataset.Sample]) -> Any:
    """Answers each prompt with what the sample's own assistant said next."""
    by_prompt: dict[str, str] = {}
    for sample in samples:
        for index, message in enumerate(sample.messages):
            if message["role"] != "assistant":
                continue
            key = json.dumps(sample.messages[:index], ensure_ascii=False)
            if message.get("tool_calls"):
                call = message["tool_calls"][0]
                turn = call["name"] + "\n" + json.dumps(call["arguments"], ensure_ascii=False)
            else:
                turn = "\n" + message["content"]
            by_prompt[key] = turn

    def respond(messages: Sequence[Mapping[str, Any]], tools: Any, grounding: str | None) -> str:
        return by_prompt[json.dumps(list(messages), ensure_ascii=False)]

    return respond


def test_an_oracle_scores_full_marks() -> None:
    for split in ("heldout_template", "heldout_value", "paraphrase"):
        samples = dataset.generate(split, 40, seed=0)  # type: ignore[arg-type]
        result = score(samples, oracle(samples), grounded=True)
        assert set(result) == {"en", "zh"}
        for figures in result.values():
            for figure in FIGURES:
                assert figures[figure] in (None, 1.0), (split, figure, figures)
            assert figures["exact_match"] == 1.0


def test_a_model_that_only_chats_scores_nothing_on_tools() -> None:
    samples = dataset.generate("heldout_template", 40, seed=0)

    def chatty(messages: Any, tools: Any, grounding: str | None) -> str:
        return "\nI am not sure."

    result = score(samples, chatty, grounded=False)
    for figures in result.values():
        assert figures["exact_match"] == 0.0 and figures["slot_accuracy"] == 0.0
        assert figures["values_in_answer"] == 0.0
        assert figures["clarify"] == 0.0  # it never asks
        assert figures["refuse"] == 1.0  # it never calls a tool


def test_a_wrong_argument_costs_the_exact_match_but_not_every_slot() -> None:
    samples = [s for s in dataset.generate("heldout_template", 80) if s.category == "weather"]
    right = oracle(samples)

    def off_by_date(messages: Any, tools: Any, grounding: str | None) -> str:
        turn = right(messages, tools, grounding)
        name, _, body = turn.partition("\n")
        if name != "weather":
            return turn
        arguments = json.loads(body)
        arguments["date"] = "today" if arguments["date"] != "today" else "tomorrow"
        return name + "\n" + json.dumps(arguments, ensure_ascii=False)

    result = score(samples, off_by_date, grounded=True)
    for figures in result.values():
        assert figures["exact_match"] == 0.0
        assert figures["slot_accuracy"] == 0.5
    table = render(
        {
            "heldout_template": {"grounded": result, "free": result},
            "heldout_value": {"grounded": {}, "free": {}},
            "paraphrase": {"grounded": {}, "free": {}},
        }
    )
    assert "| heldout_template | en   | grounded |    0% |   50% |" in table
