"""Grounded, schema-constrained tool calls: the grammar itself, and the real model under it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.model.constrain import Grounding, ToolCallConstraint, ToolGrammar, Vocabulary
from edge_runtime.model.runtime import Model
from edge_runtime.orchestrator.toolcall import BadCall, ParsedCall, PlainText, parse_output

TOOLS: list[dict[str, Any]] = [
    {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "x-grounded": True},
                "date": {"enum": ["today", "tomorrow"], "default": "today"},
            },
            "required": ["city"],
        },
    },
    {
        "name": "set_heating",
        "parameters": {
            "type": "object",
            "properties": {
                "room": {"type": "string", "maxLength": 20},
                "celsius": {"type": "number"},
                "on": {"type": "boolean"},
            },
            "required": ["room", "celsius", "on"],
        },
    },
]
MESSAGE = "查询北京明天的天气 and Paris"


@pytest.fixture(scope="module")
def vocab(tiny_model: Model) -> Vocabulary:
    observation = tiny_model.tokenizer.token_id("<|observation|>")
    assert observation is not None
    return Vocabulary.of(tiny_model.tokenizer.backend, tiny_model.config.vocab_size, observation)


def accepts(
    tiny_model: Model, vocab: Vocabulary, text: str, grammar: ToolGrammar | None = None
) -> bool:
    """Whether the grammar (TOOLS over MESSAGE unless given) lets the model write ``text``,
    then end the call."""
    constraint = ToolCallConstraint(grammar or ToolGrammar.of(TOOLS, MESSAGE), vocab)
    for token in tiny_model.tokenizer.encode(text):
        mask = constraint.mask()
        if mask is not None and not mask[token]:
            return False
        constraint.advance(token)
    mask = constraint.mask()
    return mask is not None and bool(mask[vocab.observation]) and int(mask.sum()) == 1


@pytest.mark.parametrize(
    "text",
    [
        'weather\n{"city": "北京", "date": "tomorrow"}',
        'weather\n{"city": "Paris"}',
        'set_heating\n{"room": "kitchen", "celsius": -2.5, "on": true}',
        'set_heating\n{"room": "卧室", "celsius": 21, "on": false}',
        'weather\n{"city": "and Paris"}',
        'weather\n{"city": "京"}',
    ],
)
def test_calls_that_fit_the_schema(tiny_model: Model, vocab: Vocabulary, text: str) -> None:
    assert accepts(tiny_model, vocab, text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('launch\n{"count": 3}', "not a declared tool"),
        ('weather\n{"city": "上海"}', "not in the message"),
        ('weather\n{"city": "明北"}', "not contiguous text of the message"),
        ('weather\n{"city": ""}', "empty"),
        ('weather\n{"city": "Par"}', "cut inside a word"),
        ('weather\n{"city": "aris"}', "starts inside a word"),
        ('weather\n{"city": " Paris"}', "starts with a space"),
        ('weather\n{"city": "and "}', "ends with a space"),
        ('weather\n{"date": "tomorrow"}', "a required key left out"),
        ('weather\n{"city": "北京", "date": "yesterday"}', "not in the enum"),
        ('weather\n{"city": "北京", "units": "C"}', "an unknown key"),
        ('set_heating\n{"room": "kitchen", "celsius": "21", "on": true}', "a string for a number"),
        ('set_heating\n{"room": "kitchen", "celsius": 21, "on": yes}', "not a boolean"),
        ('set_heating\n{"room": "a\\"b", "celsius": 21, "on": true}', "an escape"),
        ('set_heating\n{"room": "' + "x" * 100 + '", "celsius": 21, "on": true}', "too long"),
    ],
)
def test_calls_that_do_not(tiny_model: Model, vocab: Vocabulary, text: str, why: str) -> None:
    assert not accepts(tiny_model, vocab, text), why


def test_copied_text_starts_and_ends_on_a_letter_digit_or_ideograph(
    tiny_model: Model, vocab: Vocabulary
) -> None:
    grammar = ToolGrammar.of(TOOLS, "get Beijing's weather, then 上海的天气。")

    def weather(city: str) -> str:
        return "weather\n" + json.dumps({"city": city}, ensure_ascii=False)

    for city in ("Beijing", "Beijing's", "Beijing's weather", "上海", "上海的天气"):
        assert accepts(tiny_model, vocab, weather(city), grammar), city
    for city in ("Beijing'", "'s weather", "weather,", ", then", "上海的天气。", "。"):
        assert not accepts(tiny_model, vocab, weather(city), grammar), city


def test_a_plain_answer_is_left_alone(tiny_model: Model, vocab: Vocabulary) -> None:
    constraint = ToolCallConstraint(ToolGrammar.of(TOOLS, MESSAGE), vocab)
    for token in tiny_model.tokenizer.encode("\nIt will rain."):
        constraint.advance(token)
    assert constraint.free and constraint.mask() is None


def test_the_first_step_allows_only_a_newline_or_a_tool_name(
    tiny_model: Model, vocab: Vocabulary
) -> None:
    constraint = ToolCallConstraint(ToolGrammar.of(TOOLS, MESSAGE), vocab)
    mask = constraint.mask()
    assert mask is not None
    allowed = {vocab.pieces[i] for i in range(vocab.size) if mask[i]}
    assert allowed
    for piece in allowed:
        assert piece is not None
        assert any(
            (name + b"\n").startswith(piece)
            or piece.startswith(name + b"\n")
            or piece == b"\n"
            or piece.startswith(b"\n")
            for name in (b"weather", b"set_heating")
        ), piece


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**31))
def test_the_model_under_the_grammar_writes_only_valid_calls(tiny_model: Model, seed: int) -> None:
    # glm-tiny has random weights: whatever it writes, a tool call must be one it may make.
    params = tiny_model.default_params(max_new_tokens=96, seed=seed, do_sample=True)
    generation = tiny_model.chat(
        [{"role": "user", "content": MESSAGE}], params, tools=TOOLS, grounding=MESSAGE
    )
    result = generation.run()
    out = parse_output(result.text, {"weather", "set_heating"})
    if result.finish_reason == "length":
        return  # cut short mid-call: nothing to check but that it got this far legally
    assert not isinstance(out, BadCall), result.text
    if isinstance(out, ParsedCall):
        if out.name == "weather":
            assert set(out.arguments) <= {"city", "date"}
            assert out.arguments["city"] and out.arguments["city"] in MESSAGE
            assert out.arguments.get("date", "today") in ("today", "tomorrow")
        else:
            assert set(out.arguments) == {"room", "celsius", "on"}
            assert isinstance(out.arguments["celsius"], int | float)
            assert isinstance(out.arguments["on"], bool)
        # The call is valid JSON written canonically.
        _, _, body = result.text.partition("\n")
        assert json.loads(body) == out.arguments
    else:
        assert isinstance(out, PlainText)


DEVICE_TOOL: list[dict[str, Any]] = [
    {
        "name": "set_device",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "x-grounded": True},
                "state": {"enum": ["on", "off"]},
            },
            "required": ["name", "state"],
        },
    }
]
HOME = {"set_device": {"name": ["lamp", "desk lamp", "灯", "台灯", "fan", "客厅灯", "灯带"]}}


def writes(tiny_model: Model, vocab: Vocabulary, grounding: Grounding, text: str) -> bool:
    """Whether the grammar for ``grounding`` lets the model write the call ``text``."""
    return accepts(tiny_model, vocab, text, ToolGrammar.of(DEVICE_TOOL, grounding))


def call(name: str) -> str:
    return "set_device\n" + json.dumps({"name": name, "state": "off"}, ensure_ascii=False)


@pytest.mark.parametrize(
    ("said", "allowed", "refused"),
    [
        # The longest known name the message mentions, as it writes it; never a piece of it.
        ("Turn off the Desk Lamp please", ["Desk Lamp"], ["desk lamp", "Lamp", "Desk", "off"]),
        ("麻烦关闭灯", ["灯"], ["麻", "麻烦关闭灯", "关闭灯"]),
        ("台灯还亮着，关掉吧", ["台灯"], ["灯", "台"]),
        # Two known names: either. Two that overlap: the longer.
        ("the fan and the lamp", ["fan", "lamp"], ["the fan", "the"]),
        ("打开客厅灯带", ["客厅灯"], ["灯带", "灯"]),
    ],
)
def test_a_known_name_the_message_mentions_is_copied_whole(
    tiny_model: Model, vocab: Vocabulary, said: str, allowed: list[str], refused: list[str]
) -> None:
    grounding = Grounding(said, HOME)
    for name in allowed:
        assert writes(tiny_model, vocab, grounding, call(name)), name
    for name in refused:
        assert not writes(tiny_model, vocab, grounding, call(name)), name


def test_without_a_known_name_any_words_of_the_message_do(
    tiny_model: Model, vocab: Vocabulary
) -> None:
    # "lamps" is not the known "lamp" (a name ends where a word ends): a device the home does
    # not know yet is still copied from the message, as without names.
    grounding = Grounding("switch off the garden lamps", HOME)
    assert writes(tiny_model, vocab, grounding, call("garden lamps"))
    assert writes(tiny_model, vocab, grounding, call("lamps"))
    assert not writes(tiny_model, vocab, grounding, call("lamp"))
    # Names given for another tool change nothing here.
    other = Grounding("turn off the fan", {"device_state": {"name": ["fan"]}})
    assert writes(tiny_model, vocab, other, call("the fan"))
