"""Intent parsing: Home Assistant's sentences and ours, clauses, confidence, clarifications."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.errors import ConfigError
from edge_runtime.orchestrator.intent import IntentParser, Parse

HANDLED = {
    "weather",
    "compose_reminder",
    "note_add",
    "note_search",
    "HassClimateGetTemperature",
    "HassTurnOn",
}
REQUIRED = {"weather": ["city"], "HassClimateGetTemperature": ["area"], "HassTurnOn": []}
AREAS = {"kitchen": ["kitchen", "厨房"], "living_room": ["living room", "客厅"]}


@pytest.fixture(scope="module")
def parser() -> IntentParser:
    return IntentParser.build(
        languages=["en", "zh-CN"], handled=HANDLED, required=REQUIRED, areas=AREAS
    )


def names(parsed: Parse) -> list[str]:
    return [i.name for i in parsed.intents]


@pytest.mark.parametrize(
    ("text", "intent", "slots"),
    [
        ("turn on the kitchen light", "HassTurnOn", {"area": "kitchen", "domain": "light"}),
        ("打开厨房的灯", "HassTurnOn", {"area": "kitchen", "domain": "light"}),
        (
            "what's the temperature in the living room",
            "HassClimateGetTemperature",
            {"area": "living_room"},
        ),
        ("厨房的温度是多少", "HassClimateGetTemperature", {"area": "kitchen"}),
        ("query tomorrow's weather in Beijing", "weather", {"city": "Beijing", "date": "tomorrow"}),
        (
            "what is the weather in New York tomorrow",
            "weather",
            {"city": "New York", "date": "tomorrow"},
        ),
        ("查询北京明天的天气", "weather", {"city": "北京", "date": "tomorrow"}),
        ("上海后天会下雨吗", "weather", {"city": "上海", "date": "day_after_tomorrow"}),
        ("write a reminder", "compose_reminder", {}),
        ("生成一段提醒文案", "compose_reminder", {}),
        (
            "remember that the wifi password is tulip42",
            "note_add",
            {"note": "the wifi password is tulip42"},
        ),
        ("记住：车停在B2层", "note_add", {"note": "车停在B2层"}),
        ("what did I note about wifi", "note_search", {"query": "wifi"}),
    ],
)
def test_rules_and_slots(
    parser: IntentParser, text: str, intent: str, slots: dict[str, str]
) -> None:
    parsed = parser.parse(text)
    assert parsed.clarification is None
    assert names(parsed) == [intent]
    assert dict(parsed.intents[0].slots) == slots
    assert parsed.intents[0].source == "rules"


def test_language_follows_the_script(parser: IntentParser) -> None:
    assert parser.parse("打开厨房的灯").language == "zh-CN"
    assert parser.parse("turn on the kitchen light").language == "en"


@pytest.mark.parametrize(
    "text",
    [
        "查询北京明天的天气并生成一段提醒文案",
        "query tomorrow's weather in Beijing and write a reminder",
    ],
)
def test_the_design_seed_is_two_intents(parser: IntentParser, text: str) -> None:
    parsed = parser.parse(text)
    assert names(parsed) == ["weather", "compose_reminder"]
    assert parsed.intents[0].slots["date"] == "tomorrow"
    assert parsed.intents[0].slots["city"] in ("北京", "Beijing")


def test_a_conjunction_inside_a_slot_does_not_split_it(parser: IntentParser) -> None:
    parsed = parser.parse("weather in Trinidad and Tobago")
    assert names(parsed) == ["weather"]
    assert parsed.intents[0].slots["city"] == "Trinidad and Tobago"


def test_wildcards_lower_the_confidence(parser: IntentParser) -> None:
    listed = parser.parse("turn on the kitchen light").intents[0]
    open_slot = parser.parse("query tomorrow's weather in Beijing").intents[0]
    assert listed.confidence == 1.0
    assert 0.5 <= open_slot.confidence < 1.0


def test_unmatched_text_is_left_for_the_model(parser: IntentParser) -> None:
    parsed = parser.parse("tell me a joke")
    assert parsed.intents == () and parsed.unmatched == ("tell me a joke",)
    mixed = parser.parse("turn on the kitchen light and tell me a joke")
    assert names(mixed) == ["HassTurnOn"]
    assert mixed.unmatched == ("tell me a joke",)


def test_an_unknown_area_is_not_a_match(parser: IntentParser) -> None:
    # "garage" is not in the configured areas: no guess, the model gets it.
    assert parser.parse("what's the temperature in the garage").intents == ()


@pytest.mark.parametrize(
    ("first", "reply", "city", "question"),
    [
        ("what is the weather tomorrow", "Beijing", "Beijing", "Which city"),
        ("查询明天的天气", "北京", "北京", "哪个城市"),
    ],
)
def test_a_missing_slot_is_asked_for_then_completed(
    parser: IntentParser, first: str, reply: str, city: str, question: str
) -> None:
    asked = parser.parse(first)
    assert asked.intents == ()
    assert asked.clarification is not None
    assert question in asked.clarification.question
    assert asked.clarification.missing == "city"
    answered = parser.parse(reply, asked.clarification)
    assert answered.clarification is None
    assert names(answered) == ["weather"]
    assert dict(answered.intents[0].slots) == {"city": city, "date": "tomorrow"}
    assert answered.intents[0].source == "clarified"


def test_the_other_intents_wait_for_the_answer_in_order(parser: IntentParser) -> None:
    asked = parser.parse("查询明天的天气并生成一段提醒文案")
    assert asked.clarification is not None
    answered = parser.parse("北京", asked.clarification)
    assert names(answered) == ["weather", "compose_reminder"]


def test_a_new_request_replaces_an_unanswered_question(parser: IntentParser) -> None:
    asked = parser.parse("what is the weather")
    assert asked.clarification is not None
    instead = parser.parse("turn on the kitchen light", asked.clarification)
    assert names(instead) == ["HassTurnOn"]


def test_a_list_slot_answer_must_be_in_the_list(tmp_path: Path) -> None:
    parser = IntentParser.build(
        languages=["en"],
        handled={"HassClimateGetTemperature"},
        required={"HassClimateGetTemperature": ["area"]},
        areas=AREAS,
    )
    custom = tmp_path / "en.yaml"
    custom.write_text(
        "language: en\nintents:\n  HassClimateGetTemperature:\n    data:\n"
        "      - sentences: ['how warm is it']\n"
    )
    parser = IntentParser.build(
        languages=["en"],
        handled={"HassClimateGetTemperature"},
        required={"HassClimateGetTemperature": ["area"]},
        areas=AREAS,
        templates=[custom],
    )
    asked = parser.parse("how warm is it")
    assert asked.clarification is not None and asked.clarification.missing == "area"
    # Not a room we know: no guess; the answer is left for the model.
    assert parser.parse("the attic", asked.clarification).intents == ()
    answered = parser.parse("the living room", asked.clarification)
    assert dict(answered.intents[0].slots) == {"area": "living_room"}


def test_two_intents_equally_likely_ask_which_one(tmp_path: Path) -> None:
    custom = tmp_path / "en.yaml"
    custom.write_text(
        "language: en\n"
        "intents:\n"
        "  lights_on:\n    data:\n      - sentences: ['lights please']\n"
        "  lights_off:\n    data:\n      - sentences: ['lights please']\n"
        "edge_runtime:\n  labels:\n    lights_on: 'turning the lights on'\n"
        "    lights_off: 'turning the lights off'\n"
    )
    parser = IntentParser.build(
        languages=["en"], handled={"lights_on", "lights_off"}, required={}, templates=[custom]
    )
    asked = parser.parse("lights please")
    assert asked.clarification is not None
    assert {i.name for i in asked.clarification.options} == {"lights_on", "lights_off"}
    assert "turning the lights on" in asked.clarification.question
    by_number = parser.parse("2", asked.clarification)
    assert names(by_number) == [asked.clarification.options[1].name]
    by_label = parser.parse("turning the lights off", asked.clarification)
    assert names(by_label) == ["lights_off"]


def test_bad_template_files_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("language: en\nintents: [\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        IntentParser.build(languages=["en"], handled=set(), required={}, templates=[broken])
    no_intents = tmp_path / "empty.yaml"
    no_intents.write_text("language: en\n")
    with pytest.raises(ConfigError, match="need 'language' and 'intents'"):
        IntentParser.build(languages=["en"], handled=set(), required={}, templates=[no_intents])
    with pytest.raises(ConfigError, match="xx-YY"):
        IntentParser.build(languages=["xx-YY"], handled=set(), required={})


def test_a_sentence_is_not_taken_for_an_open_slot(parser: IntentParser) -> None:
    asked = parser.parse("what is the weather")
    assert asked.clarification is not None
    reply = parser.parse("could you please tell me a funny joke", asked.clarification)
    assert reply.intents == () and reply.clarification is None
    assert reply.unmatched == ("could you please tell me a funny joke",)


def test_device_names_come_with_their_domain() -> None:
    parser = IntentParser.build(
        languages=["en", "zh-CN"], handled={"HassTurnOn", "HassGetState"}, required={}
    )
    assert parser.parse("turn on the desk lamp").intents == ()
    # Registered (or configured) later: names, and the domain name-based sentences require.
    parser.set_devices({"lamp-1": (("desk lamp", "台灯"), "light"), "door": (("front door",), "")})
    for text in ("turn on the desk lamp", "打开台灯"):
        parsed = parser.parse(text)
        assert [(i.name, i.slots["name"]) for i in parsed.intents] == [("HassTurnOn", "lamp-1")]
    state = parser.parse("what is the state of the desk lamp")
    assert [(i.name, i.slots["name"]) for i in state.intents] == [("HassGetState", "lamp-1")]
    # A name without a domain matches nothing that requires one.
    assert parser.parse("turn on the front door").intents == ()
