"""The synthetic assistant dataset: deterministic, complete, split cleanly, and in the format the
runtime's chat template and tool-call grammar expect."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest

from edge_runtime.model import dataset
from edge_runtime.model.constrain import ToolCallConstraint, ToolGrammar, Vocabulary
from edge_runtime.model.runtime import Model

TRAIN = dataset.generate("train", 1600, seed=0)


def text_of(sample: dataset.Sample) -> str:
    return json.dumps(sample.messages, ensure_ascii=False)


def test_the_same_seed_gives_the_same_data() -> None:
    again = dataset.generate("train", 1600, seed=0)
    assert [s.as_dict() for s in again] == [s.as_dict() for s in TRAIN]
    other = dataset.generate("train", 1600, seed=1)
    assert [s.as_dict() for s in other] != [s.as_dict() for s in TRAIN]


def test_every_category_in_both_languages() -> None:
    seen = Counter((s.category, s.language) for s in TRAIN)
    for category in dataset.CATEGORIES:
        for language in ("en", "zh"):
            assert seen[(category, language)] >= 50, (category, language)


def test_vocabularies_are_large() -> None:
    vocab = dataset.vocabulary()
    assert len(vocab["cities"]) >= 200
    assert len(vocab["areas"]) >= 30
    assert len(vocab["devices"]) >= 12 and len(vocab["sensors"]) >= 8


def test_held_out_values_never_reach_training() -> None:
    held = dataset.generate("heldout_value", 400, seed=0)
    names = {
        str(value)
        for sample in held
        for key, value in sample.expected.get("arguments", {}).items()
        if key in ("city", "area", "name")
    }
    assert len(names) >= 20
    corpus = "\n".join(text_of(s) for s in dataset.generate("train", 6000, seed=0))
    assert not [name for name in names if name in corpus]


def test_some_training_names_are_made_up_and_only_there() -> None:
    invented = [s for s in TRAIN if s.invented]
    assert 0.2 * len(TRAIN) < len(invented) < 0.5 * len(TRAIN)
    known = {
        item[lang]
        for kind in ("cities", "areas", "devices")
        for item in dataset.vocabulary()[kind]
        for lang in ("en", "zh")
    }
    said = [
        str(value)
        for sample in invented
        for key, value in sample.expected.get("arguments", {}).items()
        if key in ("city", "area", "name")
    ]
    names = set(said)
    assert len(names) > 0.9 * len(said)  # hardly a name comes twice
    assert not [name for name in names if any(k.casefold() in name.casefold() for k in known)]
    # Not even a character that only held-out names have.
    train, held = dataset._partition(0)

    def characters(values: Any) -> set[str]:
        return {
            c
            for kind in (values.cities, values.areas, values.devices)
            for item in kind
            for c in item["zh"]
        }

    rare = characters(held) - characters(train)
    assert rare and not [name for name in names if rare & set(name)]
    for split in ("heldout_template", "heldout_value", "paraphrase"):
        assert not [s for s in dataset.generate(split, 200, seed=0) if s.invented]


def test_held_out_templates_are_not_trained_on() -> None:
    for category, language in dataset.TEMPLATES:
        held = set(dataset._templates(category, language, "heldout_template"))
        trained = set(dataset._templates(category, language, "train"))
        assert held and trained and not held & trained, (category, language)


def first_requests(samples: list[dataset.Sample]) -> list[str]:
    return [s.messages[0]["content"] for s in samples]


def test_training_phrasings_never_make_a_held_out_request() -> None:
    # Training's extra templates, in any of its wrappers, hold no held-out template, and no
    # training request is a paraphrase.
    for (category, language), _ in dataset.TEMPLATES.items():
        openings, endings = dataset.WRAPPERS[language]
        trained = [
            opening + template.replace("{verb}", "{state}") + ending
            for template in dataset._templates(category, language, "train")
            for opening in ["", *openings]
            for ending in ["", *endings]
        ]
        for held in dataset._templates(category, language, "heldout_template"):
            assert not [t for t in trained if held.casefold() in t.casefold()], held

    def bare(text: str) -> str:
        return re.sub(r"[\W_]+", " ", text.casefold()).strip()

    said = {bare(t) for t in first_requests(dataset.generate("train", 6000, seed=0))}
    assert not [t for t in first_requests(dataset.generate("paraphrase", 400)) if bare(t) in said]


def test_training_asks_in_many_ways() -> None:
    trained = dataset.generate("train", 6000, seed=0)
    for category in ("weather", "sensor", "device_state", "command"):
        for language in ("en", "zh"):
            texts = first_requests(
                [s for s in trained if (s.category, s.language) == (category, language)]
            )
            # Slot values aside, far more phrasings than TEMPLATES has.
            assert len(texts) > 200 and len(set(texts)) > 0.8 * len(texts), (category, language)
    sensors = {
        s.expected["arguments"]["sensor"]
        for s in trained
        if s.category == "sensor" and "how warm is the" in s.messages[0]["content"]
    }
    assert sensors == {"temperature"}
    commands = [s for s in trained if s.category == "command" and s.language == "en"]
    assert {
        s.expected["arguments"]["state"] for s in commands if "shut off" in s.messages[0]["content"]
    } == {"off"}


def test_paraphrases_come_once_each() -> None:
    found = dataset.generate("paraphrase", 400, seed=0)
    texts = [s.messages[0]["content"] for s in found]
    assert len(texts) == len(set(texts)) == sum(len(p) for p in dataset.PARAPHRASES.values())
    # Their out-of-domain requests are not the ones training refuses.
    refused = {s.messages[0]["content"] for s in found if s.category == "refuse"}
    assert len(refused) >= 10
    assert not refused & {text for texts in dataset.REFUSALS.values() for text in texts}


def test_training_refuses_many_requests_none_of_them_held_out() -> None:
    found = dataset.generate("train", 6000, seed=0)
    refused = {s.messages[0]["content"] for s in found if s.category == "refuse"}
    listed = {text for texts in dataset.REFUSALS.values() for text in texts}
    # Mostly composed requests: refusing is learned as a kind of request, not a list of them.
    assert len(refused - listed) > 150
    held_out = {
        text
        for texts in dataset.PARAPHRASES.values()
        for text, kind, _ in texts
        if kind == "refuse"
    }
    topics = ("pizza", "wall", "email", "calorie", "jazz", "quantum", "披萨", "柏林", "邮件")
    topics += ("卡路里", "爵士", "量子")
    assert not refused & held_out
    assert not [text for text in refused if any(topic in text for topic in topics)]
    # The template split refuses the listed requests only.
    template = dataset.generate("heldout_template", 600, seed=0)
    assert {s.messages[0]["content"] for s in template if s.category == "refuse"} <= listed


def valid_arguments(tool: dict[str, Any], arguments: dict[str, Any], heard: str) -> bool:
    schema = tool["parameters"]
    props = schema["properties"]
    if set(arguments) - set(props) or set(schema["required"]) - set(arguments):
        return False
    for key, value in arguments.items():
        spec = props[key]
        if "enum" in spec and value not in spec["enum"]:
            return False
        if spec.get("x-grounded") and str(value) not in heard:
            return False
    return True


@pytest.mark.parametrize("split", dataset.SPLITS)
def test_calls_fit_the_tools_and_answers_use_the_observation(split: str) -> None:
    tools = {t["name"]: t for t in dataset.tool_schemas()}
    for sample in dataset.generate(split, 400, seed=0):  # type: ignore[arg-type]
        expected = sample.expected
        final = sample.messages[-1]
        if expected.get("refuse"):
            assert final["role"] == "assistant" and "tool_calls" not in final
            continue
        heard = " ".join(m["content"] for m in sample.messages if m["role"] == "user")
        assert valid_arguments(tools[expected["tool"]], expected["arguments"], heard), sample
        for value in expected["values"]:
            assert value in final["content"], (value, final)


def test_conversations_render_with_the_chat_template(tiny_model: Model) -> None:
    tools = dataset.tool_schemas()
    for sample in TRAIN[:64]:
        text = tiny_model.tokenizer.render(
            sample.messages, tools=tools, add_generation_prompt=False
        )
        assert text.startswith("[gMASK]<sop><|system|>")
        if "tool" in sample.expected:
            assert "<|observation|>" in text


def test_the_grammar_accepts_every_call_the_data_teaches(tiny_model: Model) -> None:
    observation = tiny_model.tokenizer.token_id("<|observation|>")
    assert observation is not None
    vocab = Vocabulary.of(tiny_model.tokenizer.backend, tiny_model.config.vocab_size, observation)
    tools = dataset.tool_schemas()
    for split in dataset.SPLITS:
        for sample in dataset.generate(split, 80, seed=0):
            if "tool" not in sample.expected:
                continue
            heard = [m["content"] for m in sample.messages if m["role"] == "user"][-1]
            call = (
                sample.expected["tool"]
                + "\n"
                + json.dumps(sample.expected["arguments"], ensure_ascii=False)
            )
            constraint = ToolCallConstraint(ToolGrammar.of(tools, heard), vocab)
            for token in tiny_model.tokenizer.encode(call):
                mask = constraint.mask()
                assert mask is None or mask[token], (split, call)
                constraint.advance(token)
            mask = constraint.mask()
            assert mask is not None and mask[observation] and int(mask.sum()) == 1, call
