"""The GLM-4 chat format, special tokens and streaming detokenization."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from edge_runtime.errors import ModelFormatError
from edge_runtime.model.tokenizer import ChatTokenizer


@pytest.fixture(scope="module")
def tok(tiny_dir: Path) -> ChatTokenizer:
    return ChatTokenizer.from_directory(tiny_dir)


def test_renders_glm4_prompt(tok: ChatTokenizer) -> None:
    text = tok.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "厨房的温度是多少？"},
        ]
    )
    assert text == (
        "[gMASK]<sop><|system|>\nBe brief.<|user|>\nhi<|assistant|>\nhello"
        "<|user|>\n厨房的温度是多少？<|assistant|>"
    )


def test_renders_tools_calls_and_observations(tok: ChatTokenizer) -> None:
    weather = {
        "name": "weather",
        "description": "Forecast for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    text = tok.render(
        [
            {"role": "user", "content": "Weather in 北京?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "北京"}}}],
            },
            {"role": "tool", "content": '{"temp": 3}'},
        ],
        tools=[{"type": "function", "function": weather}],
    )
    assert text.startswith("[gMASK]<sop><|system|>\n")
    assert (
        "# 可用工具\n\n## weather\n\n" + json.dumps(weather, indent=4, ensure_ascii=False) in text
    )
    assert text.endswith(
        '<|user|>\nWeather in 北京?<|assistant|>weather\n{"city": "北京"}'
        '<|observation|>\n{"temp": 3}<|assistant|>'
    )


def test_prefix_is_not_doubled(tok: ChatTokenizer, tiny_dir: Path) -> None:
    gmask = tok.token_id("[gMASK]")
    ids = tok.encode_chat([{"role": "user", "content": "hello"}]).ids
    assert ids[:2] == [gmask, tok.token_id("<sop>")]
    assert ids.count(gmask) == 1
    # The tokenizer's own post-processor would add the prefix a second time.
    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    doubled = raw.encode(tok.render([{"role": "user", "content": "hello"}])).ids
    assert doubled.count(gmask) == 2


def test_special_tokens_are_single_tokens(tok: ChatTokenizer) -> None:
    for token in ("<|user|>", "<|assistant|>", "<|observation|>", "<|system|>"):
        assert tok.encode(token) == [tok.token_id(token)]


def test_missing_chat_template_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_dir / "tokenizer.json", tmp_path)
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="tokenizer_config.json: no chat_template"):
        ChatTokenizer.from_directory(tmp_path)


def test_template_cannot_escape_the_sandbox(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_dir / "tokenizer.json", tmp_path)
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = ChatTokenizer.from_directory(tmp_path)
    with pytest.raises(ModelFormatError, match="chat template failed"):
        tok.render([{"role": "user", "content": "x"}])


@settings(max_examples=60, deadline=None)
@given(
    st.text(
        alphabet=st.characters(
            codec="utf-8", exclude_categories=("Cs",), exclude_characters="\ufffd"
        ),
        max_size=40,
    )
)
def test_stream_decoder_never_splits_characters(tok: ChatTokenizer, text: str) -> None:
    ids = tok.encode(text)
    decoder = tok.stream_decoder()
    pieces = [decoder.step(i) for i in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == tok.decode(ids)


def test_message_content_is_normalised(tok: ChatTokenizer) -> None:
    from edge_runtime.errors import RequestError

    parts = [{"type": "text", "text": "turn on "}, {"type": "text", "text": "the fan"}]
    assert tok.render([{"role": "user", "content": parts}]).endswith("turn on the fan<|assistant|>")
    assert tok.render([{"role": "assistant", "content": None}, {"role": "user", "content": "x"}])
    with pytest.raises(RequestError, match="message 0: content must be text"):
        tok.render([{"role": "user", "content": 5}])
    with pytest.raises(RequestError, match="only text content parts"):
        tok.render([{"role": "user", "content": [{"type": "image_url"}]}])
    with pytest.raises(RequestError, match="needs a role"):
        tok.render([{"content": "x"}])
