"""`model eval` scoring: an oracle scores full marks, a model that never calls a tool does not."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bench.assistant import FIGURES, render, score
from edge_runtime.cli import main
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

    def respond(messages: Sequence[Mapping[str, Any]], tools: Any, grounding: Any) -> str:
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

    def chatty(messages: Any, tools: Any, grounding: Any) -> str:
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

    def off_by_date(messages: Any, tools: Any, grounding: Any) -> str:
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


def test_failing_cases_say_what_was_asked_expected_and_written() -> None:
    samples = [s for s in dataset.generate("heldout_template", 80) if s.category == "weather"]
    right = oracle(samples)

    def wrong_city(messages: Any, tools: Any, grounding: Any) -> str:
        turn = right(messages, tools, grounding)
        return turn.replace('"city": "', '"city": "X', 1)

    misses: list[dict[str, Any]] = []
    result = score(samples, wrong_city, grounded=True, misses=misses)
    calls = sum(1 for s in samples if not s.expected.get("refuse"))
    assert len(misses) == calls and all(m["figure"] == "exact_match" for m in misses)
    first = misses[0]
    sample = samples[0]
    assert first["language"] == sample.language
    assert first["request"] == next(m["content"] for m in sample.messages if m["role"] == "user")
    assert first["expected"]["name"] == "weather"
    assert first["expected"]["arguments"]["city"] == sample.expected["arguments"]["city"]
    assert '"city": "X' in first["got"]
    # The oracle's answers carry the values: only the calls failed.
    assert all(figures["values_in_answer"] in (None, 1.0) for figures in result.values())
    shown = render(
        {
            "heldout_template": {"grounded": result, "free": result},
            "heldout_value": {"grounded": {}, "free": {}},
            "paraphrase": {"grounded": {}, "free": {}},
            "failures": {"heldout_template": {"grounded": misses[:2], "free": []}},
        }
    )
    assert "Failures, heldout_template, grounded:" in shown
    assert f"exact_match: {first['request']!r}" in shown
    assert "Failures, heldout_template, free" not in shown


@pytest.mark.export
def test_model_eval_runs_a_real_model_and_lists_its_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model in the assistant's chat format with its tool list, barely trained: it fails
    # the tasks, and says how.
    from edge_runtime.model.export import ExportOptions, export_model
    from edge_runtime.model.tiny import TinyShape
    from edge_runtime.model.train import TrainSettings, train

    shape = TinyShape(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        layers=2,
        heads=4,
        kv_heads=2,
        head_dim=32,  # GroupQueryAttention rotates multiples of 16 channels
        max_positions=4096,  # room for the tool list in the system prompt
    )
    settings = TrainSettings(
        shape=shape,
        samples=120,
        batch_tokens=8192,
        max_steps=4,
        warmup_steps=2,
        workers=1,
        log_every_s=0,
        copy_warmup_steps=10,
    )
    checkpoint = train(tmp_path / "ckpt", settings, io.StringIO())
    exported = tmp_path / "model"
    export_model(checkpoint, exported, ExportOptions(quantize="int8", parity_tokens=4))
    args = ["model", "eval", str(exported), "--samples", "2", "--failures", "1", "--json"]
    assert main(args) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["samples_per_split"] == 2
    for split in ("heldout_template", "heldout_value", "paraphrase"):
        for decoding in ("grounded", "free"):
            misses = found["failures"][split][decoding]
            assert len(misses) == 1, (split, decoding)
            assert {"language", "figure", "request", "expected", "got"} <= set(misses[0])
