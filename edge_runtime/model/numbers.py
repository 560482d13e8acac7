"""Grounded numbers: an answer may only state numbers that occur in its conversation.

A reading the model did not copy right is worse than no answer: "the kitchen is 12.5 °C" when the
sensor said 21.5 sends nobody to check. While the model writes a plain answer, every number it
starts (digits not glued to a word: "CO2" and "PM2.5" are names, not numbers) must be a prefix of
a number from the user's turns or the tools' observations, and ends only where such a number
ends. A minus sign is part of the number: a reading of 12 cannot become -12. A dash right after a
number is not a sign ("3-5"). The automaton runs on bytes, so it works for any byte-level BPE
vocabulary; tokens without digits or dots are settled in bulk, and the mask of each state is
cached.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from edge_runtime.model.constrain import Mask, Vocabulary

# A minus sign counts where it cannot be a dash: not after a letter, digit or dot ("2026-11-29").
_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d+(?:\.\d+)?")
_DIGITS = frozenset(b"0123456789")
_DOT = ord(".")
_MINUS = ord("-")
# (mode, run): "text" after a space, punctuation or non-ASCII; "word" inside a word, where
# digits are part of a name; "sign" after a minus that may start a number; "num" inside a number,
# ``run`` being its bytes so far.
_State = tuple[str, bytes]


def numbers_in(messages: Iterable[Mapping[str, Any]]) -> frozenset[bytes]:
    """The numbers of the system, user and tool messages, as written, with their sign."""
    found: set[bytes] = set()
    for message in messages:
        if message.get("role") in ("system", "user", "tool", "observation"):
            content = message.get("content")
            found.update(n.encode() for n in _NUMBER.findall(str(content or "")))
    return frozenset(found)


class NumberConstraint:
    """Feeds the generation a mask per step: numbers only as the conversation has them."""

    def __init__(self, numbers: frozenset[bytes], vocabulary: Vocabulary):
        self.numbers = numbers
        self.prefixes = frozenset(n[:i] for n in numbers for i in range(1, len(n) + 1))
        self.vocab = vocabulary
        self.state: _State = ("text", b"")
        self._cache: dict[_State, Mask] = {}
        # Only tokens with a digit or a dot can start, extend or need to close a number.
        self._numeric = vocabulary.numeric
        self._special = vocabulary.special

    def mask(self) -> Mask | None:
        """Tokens allowed next."""
        cached = self._cache.get(self.state)
        if cached is not None:
            return cached
        mode, run = self.state
        closable = mode != "num" or self._complete(run)
        # A token without digits or dots ends a number: only where a number may end. Special
        # tokens (the end of the turn) likewise.
        allowed = ~self._numeric if closable else np.zeros(self.vocab.size, dtype=np.bool_)
        allowed &= ~self._special
        if closable:
            allowed |= self._special
        for ident in np.flatnonzero(self._numeric):
            piece = self.vocab.pieces[ident]
            if piece is not None and self._consume(self.state, piece) is not None:
                allowed[ident] = True
        self._cache[self.state] = allowed
        return allowed

    def advance(self, token: int) -> None:
        """The model picked ``token``."""
        piece = self.vocab.pieces[token] if token < self.vocab.size else None
        if piece is None:
            self.state = ("text", b"")
            return
        after = self._consume(self.state, piece)
        if after is None:
            raise ValueError(f"token {token} is not allowed here")
        self.state = after

    def _complete(self, run: bytes) -> bool:
        # A trailing dot is punctuation when the number before it is whole: "is 21."
        return run in self.numbers or (run.endswith(b".") and run[:-1] in self.numbers)

    def _consume(self, state: _State, piece: bytes) -> _State | None:
        mode, run = state
        for byte in piece:
            if byte in _DIGITS:
                if mode == "word":
                    continue
                if mode == "num":
                    run += bytes((byte,))
                else:
                    run = (b"-" if mode == "sign" else b"") + bytes((byte,))
                if run not in self.prefixes:
                    return None
                mode = "num"
                continue
            if mode == "num" and byte == _DOT and not run.endswith(b"."):
                if run + b"." in self.prefixes or run in self.numbers:
                    run += b"."
                    continue
                return None
            if mode == "num":
                if not self._complete(run):
                    return None
                run = b""
            elif mode == "word" and byte == _DOT:
                continue  # "PM2.5": the name goes on
            elif mode == "text" and byte == _MINUS:
                mode = "sign"
                continue
            mode = "word" if chr(byte).isascii() and chr(byte).isalpha() else "text"
        return mode, run
