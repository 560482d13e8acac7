"""A model's tokenizer: tokenizer.json, the chat template and streaming detokenization."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from edge_runtime.errors import ModelFileError, ModelFormatError, RequestError

Message = Mapping[str, Any]

# GLM-4's special tokens; `[gMASK]<sop>` opens every prompt and the model ends a turn by
# emitting <|user|> or <|observation|> (or <|endoftext|>).
GLM_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)
GLM_TURN_END_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
TEMPLATE_FILE = "chat_template.jinja"


class _TemplateRaisedError(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise _TemplateRaisedError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    # Hugging Face templates expect plain json.dumps (no HTML escaping, unicode kept).
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now(UTC).strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    # Chat templates ship with model files: render them sandboxed, as transformers does.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True, slots=True)
class Encoded:
    """A rendered prompt and its token ids."""

    text: str
    ids: list[int]


class ChatTokenizer:
    """tokenizer.json plus the chat template from tokenizer_config.json."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str, config: Mapping[str, Any]):
        self._tokenizer = tokenizer
        self._config = dict(config)
        try:
            self._template = _environment().from_string(chat_template)
        except TemplateError as exc:
            raise ModelFormatError(f"tokenizer_config.json: chat_template: {exc}") from None

    @classmethod
    def from_directory(cls, directory: Path) -> ChatTokenizer:
        """Load ``tokenizer.json`` and ``tokenizer_config.json`` from a model directory."""
        tok_path = directory / "tokenizer.json"
        cfg_path = directory / "tokenizer_config.json"
        for path in (tok_path, cfg_path):
            if not path.is_file():
                raise ModelFileError(path, "missing")
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ModelFileError(tok_path, f"not a tokenizers file: {exc}") from None
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(cfg_path, f"unreadable: {exc}") from None
        if not isinstance(config, dict):
            raise ModelFileError(cfg_path, "not a JSON object")
        template = _pick_template(config.get("chat_template"))
        separate = directory / TEMPLATE_FILE
        if template is None and separate.is_file():
            # transformers 4.4x+ save_pretrained writes the template beside the config.
            template = separate.read_text(encoding="utf-8")
        if template is None:
            raise ModelFormatError(
                f"{cfg_path}: no chat_template; a chat model needs one to format its prompts"
            )
        return cls(tokenizer, template, config)

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary, added tokens included."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers` tokenizer (its vocabulary, for grammars)."""
        return self._tokenizer

    def token_id(self, token: str) -> int | None:
        """Id of a token (special tokens included), or None if unknown."""
        value = self._tokenizer.token_to_id(token)
        return None if value is None else int(value)

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Render a conversation with the model's chat template."""
        try:
            return self._template.render(
                messages=[_normalise(index, m) for index, m in enumerate(messages)],
                tools=list(tools) if tools else None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._config.get("bos_token", ""),
                eos_token=self._config.get("eos_token", ""),
            )
        except _TemplateRaisedError as exc:
            raise ModelFormatError(f"chat template refused the conversation: {exc}") from None
        except TemplateError as exc:
            raise ModelFormatError(f"chat template failed: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise RequestError(f"the conversation does not fit the chat template: {exc}") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of already formatted text.

        The template writes `[gMASK]<sop>` itself; the tokenizer's post-processor would add
        them a second time, so special tokens are never added here.
        """
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_chat(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Encoded:
        """Render and encode a conversation, ready for the assistant's turn."""
        text = self.render(messages, tools=tools, add_generation_prompt=True)
        return Encoded(text=text, ids=self.encode(text))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of token ids."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def stream_decoder(self) -> StreamDecoder:
        """A decoder that turns ids into text deltas one token at a time."""
        return StreamDecoder(self._tokenizer)


class StreamDecoder:
    """Incremental detokenization that never emits part of a UTF-8 sequence.

    Byte-level BPE splits multibyte characters across tokens; tokenizers' DecodeStream holds a
    token back until the bytes decode, and keeps the word-boundary context between calls.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self._ids: list[int] = []
        self._sent = 0

    def step(self, token_id: int) -> str:
        """Text that ``token_id`` completes ("" while a character is still partial)."""
        self._ids.append(token_id)
        piece = self._stream.step(self._tokenizer, token_id) or ""
        self._sent += len(piece)
        return piece

    def flush(self) -> str:
        """At the end of a generation: what is still held back, as the full decode renders it.

        Bytes that never completed a character come out as U+FFFD, exactly as they do when
        the whole sequence is decoded at once.
        """
        full = str(self._tokenizer.decode(self._ids, skip_special_tokens=True))
        tail = full[self._sent :]
        self._sent = len(full)
        return tail


def _normalise(index: int, message: Any) -> dict[str, Any]:
    """A message as the template expects it: a role and text content (parts joined)."""
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise RequestError(f"message {index}: needs a role")
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        # OpenAI-style content parts: this model reads text only.
        texts = [
            p.get("text") for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        ]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            raise RequestError(f"message {index}: only text content parts are supported")
        content = "".join(texts)  # type: ignore[arg-type]
    elif not isinstance(content, str):
        raise RequestError(f"message {index}: content must be text")
    return {**message, "content": content}


def _pick_template(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    # Some tokenizer configs carry a list of named templates.
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default") or next(iter(named.values()), None)
        return chosen if isinstance(chosen, str) else None
    return None
