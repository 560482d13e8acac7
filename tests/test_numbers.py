"""Grounded numbers: a plain answer states only numbers its conversation has."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.model.constrain import Vocabulary
from edge_runtime.model.numbers import NumberConstraint, numbers_in
from edge_runtime.model.runtime import Model
from edge_runtime.orchestrator.toolcall import PlainText, parse_output

CONVERSATION = [
    {"role": "system", "content": "You are the house assistant."},
    {"role": "user", "content": "How warm is the kitchen? Remind me at 7."},
    {"role": "assistant", "content": "sensor_reading\n{...} 99"},
    {"role": "tool", "content": '{"area": "kitchen", "sensor": "temperature", "value": 21.5}'},
    {"role": "tool", "content": '{"area": "garden", "sensor": "temperature", "value": -3}'},
]
TOOLS = [
    {
        "name": "sensor_reading",
        "parameters": {
            "type": "object",
            "properties": {"area": {"type": "string", "x-grounded": True}},
            "required": ["area"],
        },
    }
]


@pytest.fixture(scope="module")
def vocab(tiny_model: Model) -> Vocabulary:
    observation = tiny_model.tokenizer.token_id("<|observation|>")
    assert observation is not None
    return Vocabulary.of(tiny_model.tokenizer.backend, tiny_model.config.vocab_size, observation)


def test_numbers_come_from_the_users_and_tools_turns_only() -> None:
    assert numbers_in(CONVERSATION) == {b"7", b"21.5", b"-3"}
    # A dash between numbers is not a sign.
    assert numbers_in([{"role": "user", "content": "on 2026-11-29, 3-5 or -2"}]) == {
        b"2026",
        b"11",
        b"29",
        b"3",
        b"5",
        b"-2",
    }


def writes(tiny_model: Model, vocab: Vocabulary, text: str) -> bool:
    """Whether the constraint lets the model write ``text``, then end its turn."""
    constraint = NumberConstraint(numbers_in(CONVERSATION), vocab)
    for token in tiny_model.tokenizer.encode(text):
        mask = constraint.mask()
        assert mask is not None
        if not mask[token]:
            return False
        constraint.advance(token)
    end = tiny_model.tokenizer.token_id("<|user|>")
    assert end is not None
    final = constraint.mask()
    return final is not None and bool(final[end])


@pytest.mark.parametrize(
    "text",
    [
        "The kitchen is 21.5 degrees.",
        "厨房现在21.5度",
        "It is 21.5.",
        "I will remind you at 7, and the CO2 sensor and PM2.5 are names.",
        "No numbers at all",
        "The garden is -3 °C.",
        "花园-3°C",
        "Between 7-21.5 degrees",
    ],
)
def test_numbers_of_the_conversation_may_be_written(
    tiny_model: Model, vocab: Vocabulary, text: str
) -> None:
    assert writes(tiny_model, vocab, text)


@pytest.mark.parametrize(
    "text",
    [
        "The kitchen is 12.5 degrees.",  # a reading it did not copy
        "The kitchen is 21 degrees.",  # cut short: 21 is not a number of the conversation
        "The kitchen is 21.55 degrees.",
        "It is 99",  # the model's own earlier turn does not count
        "The kitchen is 21",  # the turn cannot end inside a number (prefix of 21.5)
        "It is -21.5 outside",  # a sign the reading does not have
        "The garden is 3 °C.",  # nor one it drops
    ],
)
def test_other_numbers_may_not(tiny_model: Model, vocab: Vocabulary, text: str) -> None:
    assert not writes(tiny_model, vocab, text)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**31))
def test_the_model_under_grounding_writes_only_numbers_it_was_given(
    tiny_model: Model, seed: int
) -> None:
    # glm-tiny has random weights and writes digits freely; grounded, its answers may not.
    params = tiny_model.default_params(max_new_tokens=64, seed=seed, do_sample=True)
    message = str(CONVERSATION[1]["content"])
    generation = tiny_model.chat(CONVERSATION, params, tools=TOOLS, grounding=message)
    result = generation.run()
    out = parse_output(result.text, {"sensor_reading"})
    if isinstance(out, PlainText):
        for number in re.findall(r"(?<![A-Za-z0-9.])(?:(?<![\w.])-)?\d+(?:\.\d+)?", result.text):
            # Cut at max_new_tokens, the answer may end inside a number.
            assert any(n.startswith(number) for n in ("7", "21.5", "-3")), result.text
