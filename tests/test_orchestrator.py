"""The orchestrator over a scripted model: plans, the DAG runner, the tool loop, cache, feedback.

The model is the one faked seam here (its answers are scripted, so the tests can say what the
orchestrator must do with them); tools, memory and stores are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import Settings
from edge_runtime.messages import Usage
from edge_runtime.model.constrain import Grounding
from edge_runtime.orchestrator.llm import DeltaSink, Generated
from edge_runtime.orchestrator.service import Answer, Ask, Orchestrator


class ScriptedModel:
    """Answers each call with the next scripted text (the last one repeats)."""

    identity = "scripted"

    def __init__(self, *answers: str):
        self.answers = list(answers) or ["\nok"]
        self.calls: list[dict[str, Any]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def deterministic(self, params: Mapping[str, Any]) -> bool:
        return not params.get("temperature") or params.get("seed") is not None

    async def __call__(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        params: Mapping[str, Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
        on_delta: DeltaSink | None = None,
        deadline: float | None = None,
        grounding: str | Grounding | None = None,
    ) -> Generated:
        self.calls.append(
            {
                "messages": [dict(m) for m in messages],
                "tools": tools,
                "grounding": grounding,
                "at": time.monotonic(),
            }
        )
        text = self.answers[min(len(self.calls) - 1, len(self.answers) - 1)]
        if on_delta is not None:
            for piece in (text[i : i + 3] for i in range(0, len(text), 3)):
                await on_delta(piece)
        return Generated(text, "stop", Usage(len(messages), len(text)))


TOOLS = [
    {
        "name": "weather",
        "kind": "python",
        "entry_point": "tool_functions:forecast",
        "intents": ["weather"],
        "cache_ttl_s": 600,
        "parameters": {
            "city": {},
            "date": {"enum": ["today", "tomorrow", "day_after_tomorrow"], "default": "today"},
        },
        "answer": {
            "en": "{city} {date}: {condition}, {low_c}-{high_c} C",
            "zh": "{city}{date}：{condition}，{low_c}～{high_c}°C",
        },
    },
    {
        "name": "echo",
        "kind": "python",
        "entry_point": "tool_functions:echo",
        "parameters": {"text": {}},
    },
]


def build(
    tmp_path: Path,
    model: ScriptedModel,
    tools: list[dict[str, Any]] | None = None,
    **orchestrator: Any,
) -> Orchestrator:
    settings = Settings.model_validate(
        {
            "tools": TOOLS if tools is None else tools,
            "state_dir": str(tmp_path / "state"),
            "orchestrator": orchestrator,
        }
    )
    return Orchestrator.build(settings, generator=model)


def ask(
    orch: Orchestrator,
    text: str,
    *,
    route: str = "orchestrate",
    device: str = "d1",
    session: str | None = None,
    timeout: float = 10.0,
    ident: str = "r1",
    stream: list[str] | None = None,
) -> Answer:
    async def sink(delta: str) -> None:
        assert stream is not None
        stream.append(delta)

    request = Ask(
        id=ident,
        device=device,
        messages=[{"role": "user", "content": text}],
        params={"max_new_tokens": 32},
        deadline=time.monotonic() + timeout,
        session=session,
    )
    return asyncio.run(
        orch.answer(
            request,
            route,  # type: ignore[arg-type]
            sink if stream is not None else None,
        )
    )


def close(orch: Orchestrator) -> None:
    asyncio.run(orch.close())


def test_the_reminder_is_written_with_the_weather_in_hand(tmp_path: Path) -> None:
    model = ScriptedModel("\nTake an umbrella: light rain in Beijing tomorrow.")
    orch = build(tmp_path, model)
    streamed: list[str] = []
    try:
        answer = ask(
            orch, "query tomorrow's weather in Beijing and write a reminder", stream=streamed
        )
    finally:
        close(orch)
    assert [i["name"] for i in answer.details["intents"]] == ["weather", "compose_reminder"]
    assert answer.tool_calls[0]["name"] == "weather"
    assert answer.tool_calls[0]["arguments"] == {"city": "Beijing", "date": "tomorrow"}
    steps = answer.details["steps"]
    assert steps[1]["depends_on"] == [steps[0]["id"]]
    # The reminder's context holds the weather call and its result, GLM-style.
    (call,) = model.calls
    roles = [m["role"] for m in call["messages"]]
    assert roles[-3:] == ["user", "assistant", "tool"]
    assert call["messages"][-2]["tool_calls"][0]["name"] == "weather"
    assert "light rain" in call["messages"][-1]["content"]
    assert answer.text == (
        "Beijing tomorrow: light rain, 3-9 C\nTake an umbrella: light rain in Beijing tomorrow."
    )
    assert "".join(streamed) == answer.text


def test_independent_steps_run_at_once(tmp_path: Path) -> None:
    tools = [
        {
            "name": "a",
            "kind": "python",
            "entry_point": "tool_functions:meet_a",
            "intents": ["lights_on"],
            "timeout_s": 5,
        },
        {
            "name": "b",
            "kind": "python",
            "entry_point": "tool_functions:meet_b",
            "intents": ["lights_off"],
            "timeout_s": 5,
        },
    ]
    templates = tmp_path / "t.yaml"
    templates.write_text(
        "language: en\nintents:\n"
        "  lights_on:\n    data:\n      - sentences: ['lights on']\n"
        "  lights_off:\n    data:\n      - sentences: ['lights off']\n"
    )
    orch = build(tmp_path, ScriptedModel(), tools, templates=[str(templates)], languages=["en"])
    try:
        answer = ask(orch, "lights on and lights off")
    finally:
        close(orch)
    # Each tool waits at a barrier for the other: only concurrent steps both get through.
    assert [c.get("result") for c in answer.tool_calls] == ["a", "b"], answer.tool_calls


def test_a_hanging_tool_fails_its_step_and_the_answer_still_comes(tmp_path: Path) -> None:
    tools = [{**TOOLS[0], "entry_point": "tool_functions:hangs", "timeout_s": 60}]
    model = ScriptedModel("\nHere is your reminder anyway.")
    orch = build(tmp_path, model, tools, step_timeout_s=0.5)
    try:
        answer = ask(orch, "weather in Oslo and write a reminder", timeout=5)
    finally:
        close(orch)
    assert answer.details["steps"][0]["status"] == "error"
    assert answer.tool_calls[0]["error"] == "no answer within 0.5 s"
    assert answer.text == "weather failed: no answer within 0.5 s\nHere is your reminder anyway."
    # The failure is an observation the reminder step saw.
    assert "error" in model.calls[0]["messages"][-1]["content"]


@pytest.mark.parametrize(
    ("function", "message"),
    [("hangs", "no answer within"), ("huge", "over the cap"), ("raises", "sensor bus is down")],
)
def test_misbehaving_tools_become_observations_within_the_deadline(
    tmp_path: Path, function: str, message: str
) -> None:
    tools = [
        {
            **TOOLS[0],
            "entry_point": f"tool_functions:{function}",
            "timeout_s": 0.5,
            "parameters": {},
        }
    ]
    tools[0]["answer"] = {}
    orch = build(tmp_path, ScriptedModel(), tools)
    started = time.monotonic()
    try:
        answer = ask(orch, "weather in Oslo", timeout=3)
    finally:
        close(orch)
    assert time.monotonic() - started < 3
    assert message in answer.tool_calls[0]["error"]
    assert message in answer.text


def test_grounding_covers_every_user_turn_of_the_session(tmp_path: Path) -> None:
    # "Which city?" "Macau": the answer to a question completes the request before it.
    model = ScriptedModel("\nWhich city?", "\nok")
    orch = build(tmp_path, model)
    try:
        ask(orch, "bounce the weather for the day after tomorrow", session="s", ident="a")
        ask(orch, "Macau", session="s", ident="b")
    finally:
        close(orch)
    grounding = model.calls[-1]["grounding"]
    assert grounding.text == "bounce the weather for the day after tomorrow\nMacau"
    assert grounding.names == {}  # no tool here resolves names


def test_grounded_device_names_are_the_known_ones(tmp_path: Path) -> None:
    # A grounded argument that resolves device names is held to the names the home knows
    # (config and registry) when the message mentions one.
    device_state = {
        "name": "device_state",
        "kind": "python",
        "entry_point": "tool_functions:echo",
        "parameters": {"name": {"grounded": True, "resolve": "devices"}},
    }
    model = ScriptedModel("\nIt is on.")
    orch = build(tmp_path, model, tools=[*TOOLS, device_state])
    orch.set_devices({"lamp-1": (("desk lamp", "台灯"), "light")})
    try:
        ask(orch, "could you look at the desk lamp for me")
    finally:
        close(orch)
    names = model.calls[0]["grounding"].names
    assert set(names) == {"device_state"}
    assert {"lamp-1", "desk lamp", "台灯"} <= set(names["device_state"]["name"])
    # orchestrator.grounded_names = false: the message's words only.
    model = ScriptedModel("\nIt is on.")
    orch = build(tmp_path / "off", model, tools=[*TOOLS, device_state], grounded_names=False)
    orch.set_devices({"lamp-1": (("desk lamp", "台灯"), "light")})
    try:
        ask(orch, "could you look at the desk lamp for me")
    finally:
        close(orch)
    assert model.calls[0]["grounding"].names == {}


def test_the_model_tool_loop_calls_then_answers(tmp_path: Path) -> None:
    model = ScriptedModel('echo\n{"text": "ping"}', "\nThe echo said ping.")
    orch = build(tmp_path, model)
    streamed: list[str] = []
    try:
        answer = ask(orch, "could you bounce a word off the echo tool", stream=streamed)
    finally:
        close(orch)
    assert answer.text == "The echo said ping."
    assert answer.tool_calls[0]["result"] == {"echo": "ping"}
    # The tool list went into the model's system block; the observation came back to it.
    assert {t["name"] for t in model.calls[0]["tools"]} == {"weather", "echo"}
    # Its calls are held to the schemas, grounded in the user's words.
    assert model.calls[0]["grounding"].text == "could you bounce a word off the echo tool"
    # The observation restates the call's arguments, then the result's fields.
    assert model.calls[1]["messages"][-1] == {
        "role": "tool",
        "content": '{"text": "ping", "echo": "ping"}',
    }
    # The call itself was never streamed to the device, only the answer.
    assert "".join(streamed) == "The echo said ping."


@pytest.mark.parametrize("after", ["answer", "model"])
def test_a_failed_call_the_model_made_is_told_or_read(tmp_path: Path, after: str) -> None:
    tools = [{**TOOLS[1], "entry_point": "tool_functions:raises"}]
    model = ScriptedModel('echo\n{"text": "ping"}', "\nThe echo is on.")
    orch = build(tmp_path, model, tools, after_tool_error=after)
    streamed: list[str] = []
    try:
        answer = ask(orch, "could you bounce a word off the echo tool", stream=streamed)
    finally:
        close(orch)
    assert "sensor bus is down" in answer.tool_calls[0]["error"]
    if after == "answer":
        # The model writes nothing after the failure: it would invent a result.
        assert len(model.calls) == 1
        assert answer.text.startswith("echo failed: ") and "sensor bus is down" in answer.text
        assert "".join(streamed) == answer.text
    else:
        assert len(model.calls) == 2
        assert "sensor bus is down" in model.calls[1]["messages"][-1]["content"]
        assert answer.text == "The echo is on."


def test_the_tool_loop_is_bounded(tmp_path: Path) -> None:
    model = ScriptedModel('echo\n{"text": "again"}')
    orch = build(tmp_path, model, max_tool_steps=3)
    try:
        answer = ask(orch, "loop forever please")
    finally:
        close(orch)
    assert len(answer.tool_calls) == 3
    assert "stopped after 3 tool calls" in answer.text


@pytest.mark.parametrize(
    "output",
    ['echo\n{"text": ', 'nope_tool\n{"x": 1}', "\n", "garbage \x00 text"],
)
def test_bad_model_output_never_crashes(tmp_path: Path, output: str) -> None:
    model = ScriptedModel(output, "\nfine")
    orch = build(tmp_path, model, max_tool_steps=2)
    try:
        answer = ask(orch, "something the rules do not know")
    finally:
        close(orch)
    assert answer.finish_reason == "stop"
    assert answer.tool_calls == ()


def test_clarification_across_two_messages(tmp_path: Path) -> None:
    orch = build(tmp_path, ScriptedModel())
    try:
        first = ask(orch, "查询明天的天气", session="s")
        assert first.text == "请问要查询哪个城市的天气？"
        assert first.details["clarification"]["missing"] == "city"
        # Another device's session knows nothing of the question.
        other = ask(orch, "杭州", session="s", device="d2")
        assert other.tool_calls == ()
        second = ask(orch, "杭州", session="s")
    finally:
        close(orch)
    assert second.tool_calls[0]["arguments"] == {"city": "杭州", "date": "tomorrow"}
    assert second.text == "杭州tomorrow：light rain，3～9°C"


def test_a_device_without_a_session_can_answer_a_question(tmp_path: Path) -> None:
    orch = build(tmp_path, ScriptedModel())
    try:
        assert ask(orch, "what is the weather tomorrow").details["clarification"]
        answered = ask(orch, "Oslo")
    finally:
        close(orch)
    assert answered.tool_calls[0]["arguments"] == {"city": "Oslo", "date": "tomorrow"}


def test_sessions_remember_turns_and_never_mix_devices(tmp_path: Path) -> None:
    model = ScriptedModel("\nHello Ada.", "\nHello Bob.", "\nYou are Ada.")
    orch = build(tmp_path, model)
    try:
        ask(orch, "I am Ada", route="direct", device="lamp-1", session="s")
        ask(orch, "I am Bob", route="direct", device="lamp-2", session="s")
        ask(orch, "who am I?", route="direct", device="lamp-1", session="s")
    finally:
        close(orch)
    contents = [m["content"] for m in model.calls[2]["messages"]]
    assert contents == ["I am Ada", "Hello Ada.", "who am I?"]


def test_notes_through_the_orchestrator(tmp_path: Path) -> None:
    orch = build(tmp_path, ScriptedModel())
    try:
        assert ask(orch, "remember that the gate code is 4711").text == (
            "Noted: the gate code is 4711"
        )
        assert "4711" in ask(orch, "what did I note about the gate").text
        assert "4711" not in ask(orch, "what did I note about the gate", device="d2").text
    finally:
        close(orch)


def test_cache_hits_misses_and_feedback_eviction(tmp_path: Path) -> None:
    model = ScriptedModel("\nfirst answer", "\nsecond answer")
    orch = build(tmp_path, model)
    try:
        one = ask(orch, "tell me something", ident="a1")
        two = ask(orch, "  Tell me SOMETHING ", ident="a2")
        assert two.text == one.text == "first answer"
        assert two.details.get("cached") is True and len(model.calls) == 1
        outcome = asyncio.run(orch.feedback({"id": "a2", "rating": 1, "comment": "wrong"}, "d1"))
        assert outcome == {"id": "a2", "recorded": True, "known": True, "evicted": True}
        three = ask(orch, "tell me something", ident="a3")
        assert three.text == "second answer" and "cached" not in three.details
        # Answers that used a tool live only as long as the tool allows (echo: 0, never).
        tool_model = ScriptedModel('echo\n{"text": "x"}', "\ndone", 'echo\n{"text": "x"}', "\ndone")
        orch.generator = tool_model
        orch.runner.generate = tool_model
        ask(orch, "use the echo", ident="b1")
        ask(orch, "use the echo", ident="b2")
        assert len(tool_model.calls) == 4
    finally:
        close(orch)


def test_sampling_without_a_seed_is_never_cached(tmp_path: Path) -> None:
    model = ScriptedModel("\none", "\ntwo")
    orch = build(tmp_path, model)
    try:
        for ident in ("x1", "x2"):
            request = Ask(
                id=ident,
                device="d",
                messages=[{"role": "user", "content": "hi"}],
                params={"temperature": 0.8},
                deadline=time.monotonic() + 5,
            )
            asyncio.run(orch.answer(request, "direct"))
    finally:
        close(orch)
    assert len(model.calls) == 2


def test_feedback_is_stored_and_exported(tmp_path: Path) -> None:
    orch = build(tmp_path, ScriptedModel("\nan answer"))
    try:
        ask(orch, "tell me something", ident="q1")
        asyncio.run(orch.feedback({"id": "q1", "rating": 5, "comment": "great"}, "d1"))
        asyncio.run(orch.feedback({"id": "unknown", "rating": 2}, "d1"))
        with pytest.raises(Exception, match="feedback rating"):
            asyncio.run(orch.feedback({"id": "q1", "rating": 9}, "d1"))
        with pytest.raises(Exception, match="feedback id"):
            asyncio.run(orch.feedback({"rating": 3}, "d1"))
        assert orch.feedback_store is not None
        out = tmp_path / "pairs.jsonl"
        with out.open("w") as handle:
            assert orch.feedback_store.export(handle) == 1
    finally:
        close(orch)
    (line,) = out.read_text().splitlines()
    row = json.loads(line)
    assert (row["request"], row["answer"], row["rating"], row["comment"]) == (
        "tell me something",
        "an answer",
        5,
        "great",
    )


def test_a_cached_answer_is_not_served_to_a_device_its_tools_are_denied_to(
    tmp_path: Path,
) -> None:
    orch = build(tmp_path, ScriptedModel())

    async def deny_kids(name: str, args: Any) -> str | None:
        return "not for kids" if current["device"] == "kid" else None

    current = {"device": "hall"}

    def asked(device: str) -> Answer:
        current["device"] = device
        request = Ask(
            id=device,
            device=device,
            messages=[{"role": "user", "content": "weather in Oslo"}],
            params={},
            deadline=time.monotonic() + 5,
            guard=deny_kids,
        )
        return asyncio.run(orch.answer(request, "orchestrate"))

    try:
        assert asked("hall").tool_calls[0]["result"]["city"] == "Oslo"
        assert asked("hall2").details.get("cached") is True
        kid = asked("kid")
    finally:
        close(orch)
    assert "cached" not in kid.details
    assert kid.tool_calls[0]["error"] == "weather: denied: not for kids"


def test_feedback_is_per_device(tmp_path: Path) -> None:
    model = ScriptedModel("\nfor alice", "\nfor bob")
    orch = build(tmp_path, model)
    try:
        ask(orch, "tell me something", device="alice", ident="01")
        ask(orch, "tell me another thing", device="bob", ident="01")
        # mallory names alice's answer id: nothing known, nothing evicted.
        stolen = asyncio.run(orch.feedback({"id": "01", "rating": 1}, "mallory"))
        assert (stolen["known"], stolen["evicted"]) == (False, False)
        assert ask(orch, "tell me something", device="carol").details.get("cached") is True
        mine = asyncio.run(orch.feedback({"id": "01", "rating": 5}, "alice"))
        assert mine["known"] is True
        assert orch.feedback_store is not None
        rows = list(orch.feedback_store.rows())
    finally:
        close(orch)
    assert [(r["device"], r["request"]) for r in rows] == [
        ("mallory", None),
        ("alice", "tell me something"),
    ]


def test_a_model_writing_bad_calls_is_stopped_too(tmp_path: Path) -> None:
    model = ScriptedModel('nope_tool\n{"x": 1}')
    orch = build(tmp_path, model, max_tool_steps=2)
    try:
        answer = ask(orch, "do something odd")
    finally:
        close(orch)
    assert len(model.calls) == 3
    assert "stopped after 2 tool calls" in answer.text


class SamplingModel(ScriptedModel):
    """Samples by default, as glm-tiny's generation_config.json does."""

    def deterministic(self, params: Mapping[str, Any]) -> bool:
        return params.get("seed") is not None


def test_sampled_answers_are_never_cached_but_pure_tool_answers_are(tmp_path: Path) -> None:
    model = SamplingModel("\none", "\ntwo", "\nthree")
    orch = build(tmp_path, model)
    try:
        first = ask(orch, "tell me something")
        second = ask(orch, "tell me something")
        assert (first.text, second.text) == ("one", "two")
        # No model step: the answer is the tool's, whatever the model would sample.
        ask(orch, "weather in Oslo")
        assert ask(orch, "weather in Oslo").details.get("cached") is True
    finally:
        close(orch)


def test_a_choice_must_be_a_number_or_a_whole_label(tmp_path: Path) -> None:
    templates = tmp_path / "t.yaml"
    templates.write_text(
        "language: en\nintents:\n"
        "  lights_on:\n    data:\n      - sentences: ['lights please']\n"
        "  lights_off:\n    data:\n      - sentences: ['lights please']\n"
        "edge_runtime:\n  labels:\n    lights_on: 'lights on'\n    lights_off: 'lights off'\n"
    )
    from edge_runtime.orchestrator.intent import IntentParser

    parser = IntentParser.build(
        languages=["en"], handled={"lights_on", "lights_off"}, required={}, templates=[templates]
    )
    asked = parser.parse("lights please")
    assert asked.clarification is not None
    for reply in ("?", "no", "o", "٣", "9" * 5000, "3"):
        assert parser.parse(reply, asked.clarification).intents == (), reply
    assert [i.name for i in parser.parse("option 2", asked.clarification).intents] == [
        asked.clarification.options[1].name
    ]
