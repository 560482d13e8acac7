"""Grounded, schema-constrained decoding of GLM-4 tool calls: a logits mask for each step.

While the model writes the assistant turn, its first line is either empty (a plain answer, from
then on unconstrained) or the name of a declared tool. After a tool name the arguments must be a
JSON object for that tool's schema, written canonically (``{"key": value, ...}`` in schema order;
optional keys may be left out): enums and booleans among their values, numbers as numbers, strings
without escapes, and strings the schema marks ``x-grounded`` only as text that occurs in the
user's message: whole words of it, or, for an argument with known names (the home's areas and
devices), one of those names as the message writes it. After the closing brace only
``<|observation|>`` may come. The automaton runs on
bytes, so it works for any byte-level BPE vocabulary; the mask of each state is cached.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

Mask = npt.NDArray[np.bool_]
# Continuations: what follows a finished piece (hashable, so states can be cached).
_Next = tuple[Any, ...]
_Config = tuple[Any, ...]
_State = frozenset[_Config]
_MAX_STRING_BYTES = 256
_MAX_NUMBER_BYTES = 24


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes-to-unicode table used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


@dataclass(frozen=True)
class Vocabulary:
    """Every token's bytes (None for special tokens), and the ids of the few that matter here."""

    pieces: tuple[bytes | None, ...]
    size: int
    observation: int
    # Tokens whose bytes never end or escape a JSON string, and keep UTF-8 whole when entered
    # with 0..3 continuation bytes still expected: allowed wholesale inside a string.
    plain: tuple[Mask, ...]
    lengths: npt.NDArray[np.int64]
    # Token ids by their first byte: a state that admits few bytes looks at few tokens.
    by_first: tuple[npt.NDArray[np.int64], ...]
    # Tokens with a double quote in them: the only ones that can end a string.
    quoted: npt.NDArray[np.int64]
    ids: Mapping[bytes, int]
    longest: int
    # Tokens with a digit or a dot (the only ones a number constraint looks at one by one), and
    # special tokens: computed once per model, not per request.
    numeric: Mask
    special: Mask

    @classmethod
    def of(cls, tokenizer: Tokenizer, size: int, observation: int) -> Vocabulary:
        """Index ``tokenizer`` for logits rows of ``size`` entries."""
        table = _byte_decoder()
        special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        pieces: list[bytes | None] = [None] * size
        for text, ident in tokenizer.get_vocab().items():
            if ident >= size or text in special:
                continue
            try:
                pieces[ident] = bytes(table[ch] for ch in text)
            except KeyError:
                pieces[ident] = None
        plain = tuple(
            np.array([_plain(p, pending) for p in pieces], dtype=np.bool_) for pending in range(4)
        )
        lengths = np.array([len(p) if p is not None else 0 for p in pieces], dtype=np.int64)
        firsts: list[list[int]] = [[] for _ in range(256)]
        for ident, piece in enumerate(pieces):
            if piece:
                firsts[piece[0]].append(ident)
        by_first = tuple(np.array(ids, dtype=np.int64) for ids in firsts)
        quoted = np.array([i for i, p in enumerate(pieces) if p and b'"' in p], dtype=np.int64)
        ids = {p: i for i, p in enumerate(pieces) if p}
        longest = max((len(p) for p in ids), default=1)
        numeric = np.array(
            [p is not None and any(48 <= b <= 57 or b == 46 for b in p) for p in pieces],
            dtype=np.bool_,
        )
        unprintable = np.array([p is None for p in pieces], dtype=np.bool_)
        return cls(
            tuple(pieces),
            size,
            observation,
            plain,
            lengths,
            by_first,
            quoted,
            ids,
            longest,
            numeric,
            unprintable,
        )


@dataclass(frozen=True)
class _Property:
    key: str
    kind: str  # "enum", "string", "grounded", "integer", "number"
    options: tuple[bytes, ...] = ()
    optional: bool = False
    max_bytes: int = _MAX_STRING_BYTES


@dataclass(frozen=True)
class Grounding:
    """What grounded arguments may copy: the user's words, and the names the home knows.

    ``names`` maps a tool's name and an argument to the names that argument may take (areas,
    devices). When one of them occurs in ``text``, the argument is held to those mentions, as
    the message writes them (the longest where they overlap), so a name is never cut short or
    run into the next word; when none occurs (a device not registered yet), to whole words of
    ``text``, as an argument without names is.
    """

    text: str
    names: Mapping[str, Mapping[str, Sequence[str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolGrammar:
    """The declared tools' names and argument skeletons, and the text strings are grounded in."""

    names: tuple[bytes, ...]
    properties: tuple[tuple[_Property, ...], ...]
    grounding: bytes
    # Byte offsets of the grounding where a grounded string may start, and where it may end.
    starts: frozenset[int] = frozenset()
    stops: frozenset[int] = frozenset()

    @classmethod
    def of(cls, tools: Sequence[Mapping[str, Any]], grounding: str | Grounding) -> ToolGrammar:
        """From GLM tool descriptions (``{"name", "parameters": JSON schema}``)."""
        if isinstance(grounding, str):
            grounding = Grounding(grounding)
        # Quotes and backslashes cannot appear in an unescaped JSON string.
        # Nor can control characters (a newline between two turns of the conversation).
        clean = re.sub(r'["\\\x00-\x1f]', " ", grounding.text)
        starts, stops = _word_bounds(clean)
        names: list[bytes] = []
        props: list[tuple[_Property, ...]] = []
        for tool in tools:
            fn = tool.get("function", tool)
            names.append(str(fn["name"]).encode())
            known = grounding.names.get(str(fn["name"]), {})
            schema = fn.get("parameters") or {}
            required = set(schema.get("required", ()))
            found = []
            for key, spec in (schema.get("properties") or {}).items():
                prop = _property(key, spec, key not in required)
                mentioned = _mentions(clean, known.get(key, ()), starts, stops)
                if prop.kind == "grounded" and mentioned:
                    options = tuple(json.dumps(m, ensure_ascii=False).encode() for m in mentioned)
                    prop = _Property(key, "enum", options, prop.optional)
                found.append(prop)
            props.append(tuple(found))
        return cls(tuple(names), tuple(props), clean.encode(), starts, stops)


def _word_bounds(text: str) -> tuple[frozenset[int], frozenset[int]]:
    """Where copied text may start and stop: at word edges, on a letter, digit or ideograph.

    Between two letters or digits of a spaced script is inside a word ("San" is not a city of
    "Sanya"); every character of a script written without spaces (Han, kana) is its own edge.
    Copied text neither starts nor ends with a space or punctuation: "Beijing'" of "Beijing's"
    or "weather," is no name. Offsets are in UTF-8 bytes, as the grammar reads them.
    """
    starts: set[int] = set()
    stops: set[int] = set()
    offset = 0
    for index, char in enumerate(text):
        before = text[index - 1] if index else ""
        if char.isalnum() and not (_joins(before) and _joins(char)):
            starts.add(offset)
        if before.isalnum() and not (_joins(before) and _joins(char)):
            stops.add(offset)
        offset += len(char.encode())
    if text and text[-1].isalnum():
        stops.add(offset)
    return frozenset(starts), frozenset(stops)


def _mentions(
    text: str, names: Sequence[str], starts: frozenset[int], stops: frozenset[int]
) -> tuple[str, ...]:
    """The known ``names`` that ``text`` mentions as whole words, as it writes them.

    Case is ignored; where two mentions overlap, the longer wins ("台灯", not its "灯"; of
    "客厅灯" and "灯带" in "客厅灯带", "客厅灯").
    """
    spans: list[tuple[int, int, str]] = []
    for name in {n.strip() for n in names if n.strip()}:
        for match in re.finditer(re.escape(name), text, re.IGNORECASE):
            begin = len(text[: match.start()].encode())
            end = begin + len(match.group().encode())
            if begin in starts and end in stops:
                spans.append((begin, end, match.group()))
    # Longest first; a mention overlapping one already kept is part of that one.
    kept: list[tuple[int, int, str]] = []
    for begin, end, said in sorted(spans, key=lambda span: (span[0] - span[1], span[0])):
        if all(end <= b or e <= begin for b, e, _ in kept):
            kept.append((begin, end, said))
    return tuple(dict.fromkeys(said for _, _, said in sorted(kept)))


def _joins(char: str) -> bool:
    """A letter or digit of a script that separates words with spaces."""
    return char.isalnum() and not ("\u2e80" <= char <= "\u9fff")


def _property(key: str, spec: Mapping[str, Any], optional: bool) -> _Property:
    variants = spec.get("anyOf") or [spec]
    merged: dict[str, Any] = {}
    for variant in variants:
        if variant.get("type") != "null":
            merged.update(variant)
    merged.update({k: v for k, v in spec.items() if k != "anyOf"})
    if "enum" in merged:
        options = tuple(json.dumps(v, ensure_ascii=False).encode() for v in merged["enum"])
        return _Property(key, "enum", options, optional)
    kind = merged.get("type", "string")
    if kind == "boolean":
        return _Property(key, "enum", (b"true", b"false"), optional)
    if kind in ("integer", "number"):
        return _Property(key, kind, optional=optional)
    if merged.get("x-grounded"):
        return _Property(key, "grounded", optional=optional)
    limit = int(merged.get("maxLength", _MAX_STRING_BYTES))
    return _Property(key, "string", optional=optional, max_bytes=min(limit * 4, 1024))


class _Follower(Protocol):
    def mask(self) -> Mask | None: ...

    def advance(self, token: int) -> None: ...


class ToolCallConstraint:
    """Feeds the generation a mask per step and follows the tokens it picks.

    ``then`` constrains a plain answer once the turn has become one (see numbers.py).
    """

    def __init__(self, grammar: ToolGrammar, vocabulary: Vocabulary, then: _Follower | None = None):
        self.grammar = grammar
        self.vocab = vocabulary
        self.then = then
        self._cache: dict[_State, Mask] = {}
        first: set[_Config] = {("lit", b"\n", 0, ("plain",))}
        for index, name in enumerate(grammar.names):
            first.add(("lit", name + b"\n", 0, ("open", index)))
        self.state: _State = frozenset(first)

    @property
    def free(self) -> bool:
        """Whether the turn became a plain answer (no constraint any more)."""
        return ("free",) in self.state

    def mask(self) -> Mask | None:
        """Tokens allowed next; None when anything is."""
        if self.free:
            return self.then.mask() if self.then is not None else None
        cached = self._cache.get(self.state)
        if cached is not None:
            return cached
        allowed = np.zeros(self.vocab.size, dtype=np.bool_)
        if ("end",) in self.state:
            allowed[self.vocab.observation] = True
        inside_string = all(c[0] == "fstr" for c in self.state)
        room = 0
        if inside_string:
            room = min(c[3] - c[2] for c in self.state) - 3
            for config in self.state:
                _, _, used, budget, pending = config
                # Tokens near the end of the budget are checked one by one below.
                allowed |= self.vocab.plain[pending] & (self.vocab.lengths <= budget - used - 3)
        for ident in self._candidates(inside_string, room):
            piece = self.vocab.pieces[ident]
            if piece is not None and self._consume(self.state, piece):
                allowed[ident] = True
        self._cache[self.state] = allowed
        return allowed

    def _candidates(self, inside_string: bool, room: int) -> list[int]:
        """Tokens worth checking one by one in this state (most are settled in bulk)."""
        vocab = self.vocab
        if inside_string:
            # Plain tokens that fit are settled; only quotes (ending the string) and tokens
            # longer than the room left remain.
            near_end = np.flatnonzero(vocab.lengths > max(room, 0))
            return [*vocab.quoted.tolist(), *near_end.tolist()]
        if all(c[0] == "gstr" for c in self.state):
            # Grounded text: every token that is a run of the message from a place the state
            # can continue at, plus tokens with the closing quote.
            text = self.grammar.grounding
            found: set[int] = set(vocab.quoted.tolist())
            for _, _, ends in self.state:
                starts = self.grammar.starts if ends is None else ends
                for start in starts:
                    for stop in range(start + 1, min(len(text), start + vocab.longest) + 1):
                        ident = vocab.ids.get(text[start:stop])
                        if ident is not None:
                            found.add(ident)
            return sorted(found)
        out: list[int] = []
        for first in range(256):
            if self._consume(self.state, bytes((first,))):
                out.extend(vocab.by_first[first].tolist())
        return out

    def advance(self, token: int) -> None:
        """The model picked ``token``."""
        if self.free:
            if self.then is not None:
                self.then.advance(token)
            return
        piece = self.vocab.pieces[token] if token < self.vocab.size else None
        if piece is None:
            # <|observation|> ends the call; anything else special ends the turn.
            self.state = frozenset({("done",)})
            return
        after = self._consume(self.state, piece)
        if not after:
            raise ValueError(f"token {token} is not allowed here")
        self.state = after

    def _consume(self, state: _State, piece: bytes) -> _State:
        for byte in piece:
            step: set[_Config] = set()
            for config in state:
                step |= self._step(config, byte)
            if not step:
                return frozenset()
            state = frozenset(step)
        return state

    def _start(self, nxt: _Next) -> set[_Config]:
        """The configurations a continuation begins with (before it consumes anything)."""
        kind = nxt[0]
        if kind == "plain":
            return {("free",)}
        if kind == "end":
            return {("end",)}
        if kind == "open":
            return {("lit", b"{", 0, ("args", nxt[1], 0, False))}
        if kind == "args":
            _, tool, index, written = nxt
            props = self.grammar.properties[tool]
            if index == len(props):
                return {("lit", b"}", 0, ("end",))}
            prop = props[index]
            key = (b", " if written else b"") + json.dumps(prop.key).encode() + b": "
            configs: set[_Config] = {("lit", key, 0, ("value", tool, index))}
            if prop.optional:
                configs |= self._start(("args", tool, index + 1, written))
            return configs
        if kind == "value":
            _, tool, index = nxt
            prop = self.grammar.properties[tool][index]
            after = ("args", tool, index + 1, True)
            if prop.kind == "enum":
                return {("lit", option, 0, after) for option in prop.options}
            if prop.kind in ("integer", "number"):
                return {("num", prop.kind, b"", after)}
            if prop.kind == "grounded":
                return {("lit", b'"', 0, ("gstr", after))}
            return {("lit", b'"', 0, ("fstr", after, prop.max_bytes))}
        if kind == "gstr":
            return {("gstr", nxt[1], None)}
        if kind == "fstr":
            return {("fstr", nxt[1], 0, nxt[2], 0)}
        raise AssertionError(nxt)

    def _step(self, config: _Config, byte: int) -> set[_Config]:
        kind = config[0]
        if kind == "lit":
            _, text, offset, nxt = config
            if text[offset] != byte:
                return set()
            if offset + 1 == len(text):
                return self._start(nxt)
            return {("lit", text, offset + 1, nxt)}
        if kind == "free":
            return {config}
        if kind == "gstr":
            _, nxt, ends = config
            if byte == 0x22:
                # The closing quote: only after some grounded text that ends at a word's end
                # (so never in the middle of a UTF-8 sequence either).
                whole = ends and not ends.isdisjoint(self.grammar.stops)
                return self._start(nxt) if whole else set()
            text = self.grammar.grounding
            if ends is None:
                # A grounded string starts where a word of the message starts.
                found = frozenset(i + 1 for i in self.grammar.starts if text[i] == byte)
            else:
                found = frozenset(e + 1 for e in ends if e < len(text) and text[e] == byte)
            return {("gstr", nxt, found)} if found else set()
        if kind == "fstr":
            _, nxt, used, budget, pending = config
            if byte == 0x22:
                return self._start(nxt) if used and not pending else set()
            after = _utf8(pending, byte)
            # Room for this byte and the rest of its character: a string never ends cut.
            if byte == 0x5C or byte < 0x20 or after is None or used + 1 + after > budget:
                return set()
            return {("fstr", nxt, used + 1, budget, after)}
        if kind == "num":
            _, number, text, nxt = config
            grown = text + bytes([byte])
            out: set[_Config] = set()
            # A number that reaches the length bound must already be whole ("12." is not).
            fits = len(grown) < _MAX_NUMBER_BYTES or (
                len(grown) == _MAX_NUMBER_BYTES and _number_complete(grown, number)
            )
            if fits and _number_prefix(grown, number):
                out.add(("num", number, grown, nxt))
            if _number_complete(text, number):
                for follow in self._start(nxt):
                    out |= self._step(follow, byte)
            return out
        return set()


def _plain(piece: bytes | None, pending: int) -> bool:
    """Whether ``piece`` can stand inside a JSON string entered with ``pending`` bytes due."""
    if not piece:
        return False
    state: int | None = pending
    for byte in piece:
        if byte in b'"\\' or byte < 0x20 or state is None:
            return False
        state = _utf8(state, byte)
    return state is not None


def _continuation(byte: int) -> bool:
    return 0x80 <= byte <= 0xBF


def _utf8(pending: int, byte: int) -> int | None:
    """Continuation bytes still expected after ``byte``; None if it breaks UTF-8."""
    if _continuation(byte):
        return pending - 1 if pending else None
    if pending:
        return None
    if byte < 0x80:
        return 0
    if 0xC2 <= byte <= 0xDF:
        return 1
    if 0xE0 <= byte <= 0xEF:
        return 2
    if 0xF0 <= byte <= 0xF4:
        return 3
    return None


def _number_prefix(text: bytes, kind: str) -> bool:
    body = text[1:] if text.startswith(b"-") else text
    if not body:
        return True
    if kind == "integer":
        return body.isdigit() and not (len(body) > 1 and body.startswith(b"0"))
    head, dot, tail = body.partition(b".")
    if not head.isdigit() or (len(head) > 1 and head.startswith(b"0")):
        return False
    return not dot or tail.isdigit() or tail == b""


def _number_complete(text: bytes, kind: str) -> bool:
    return _number_prefix(text, kind) and text not in (b"", b"-") and not text.endswith(b".")
