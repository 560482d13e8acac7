"""Conversation memory: recent turns per device and session, and notes per device in SQLite."""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.storage import open_database

_WORD = re.compile(r"[A-Za-z0-9]+|[\u3400-\u9fff]+")


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation, with its token count."""

    role: str
    content: str
    tokens: int


@dataclass
class _Session:
    turns: deque[Turn] = field(default_factory=deque)
    touched: float = 0.0
    # A question the orchestrator asked and waits on (an opaque object to this module).
    pending: Any = None


class ShortTermMemory:
    """The last turns of each (device, session): bounded in turns and tokens, expiring idle.

    Keys always include the device, so two devices using the same session name never share it.
    """

    def __init__(
        self,
        *,
        max_turns: int = 8,
        max_tokens: int = 1024,
        ttl_s: float = 1800.0,
        max_sessions: int = 4096,
        count_tokens: Callable[[str], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._count = count_tokens or (lambda text: max(1, len(text) // 4))
        self._clock = clock
        self._sessions: OrderedDict[tuple[str, str], _Session] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._sessions)

    def _get(self, device: str, session: str, *, create: bool) -> _Session | None:
        self._expire()
        key = (device, session)
        found = self._sessions.get(key)
        if found is None and create:
            found = self._sessions[key] = _Session()
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        if found is not None:
            found.touched = self._clock()
            self._sessions.move_to_end(key)
        return found

    def _expire(self) -> None:
        now = self._clock()
        while self._sessions:
            key, oldest = next(iter(self._sessions.items()))
            if now - oldest.touched <= self.ttl_s:
                break
            del self._sessions[key]

    def history(self, device: str, session: str) -> list[dict[str, str]]:
        """The kept turns, oldest first, as chat messages."""
        found = self._get(device, session, create=False)
        if found is None:
            return []
        return [{"role": t.role, "content": t.content} for t in found.turns]

    def add(self, device: str, session: str, role: str, content: str) -> None:
        """Append one turn, then drop the oldest until both bounds hold."""
        if self.max_turns == 0:
            return
        found = self._get(device, session, create=True)
        assert found is not None
        found.turns.append(Turn(role, content, self._count(content)))
        while len(found.turns) > self.max_turns or (
            len(found.turns) > 1 and sum(t.tokens for t in found.turns) > self.max_tokens
        ):
            found.turns.popleft()

    def pending(self, device: str, session: str) -> Any:
        """The question this session waits on an answer to, if any."""
        found = self._get(device, session, create=False)
        return None if found is None else found.pending

    def set_pending(self, device: str, session: str, pending: Any) -> None:
        """Remember (or, with None, forget) the question this session waits on."""
        found = self._get(device, session, create=pending is not None)
        if found is not None:
            found.pending = pending


@dataclass(frozen=True, slots=True)
class Fact:
    """A note a device asked to keep."""

    id: int
    device: str
    text: str
    created: float


class LongTermMemory:
    """Notes per device in SQLite, found again by keyword; they survive restarts."""

    def __init__(
        self,
        path: Path,
        *,
        max_facts_per_device: int = 1000,
        clock: Callable[[], float] = time.time,
    ):
        self.path = path
        self.max_facts = max_facts_per_device
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_database(
            path,
            "CREATE TABLE IF NOT EXISTS facts (id INTEGER PRIMARY KEY, device TEXT NOT NULL,"
            " text TEXT NOT NULL, created REAL NOT NULL);"
            "CREATE INDEX IF NOT EXISTS facts_device ON facts (device, id);",
        )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def add(self, device: str, text: str) -> Fact:
        """Keep a note; past the per-device bound the oldest goes."""
        now = self._clock()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO facts (device, text, created) VALUES (?, ?, ?)", (device, text, now)
            )
            self._db.execute(
                "DELETE FROM facts WHERE device = ? AND id NOT IN "
                "(SELECT id FROM facts WHERE device = ? ORDER BY id DESC LIMIT ?)",
                (device, device, self.max_facts),
            )
        return Fact(int(cursor.lastrowid or 0), device, text, now)

    def recent(self, device: str, limit: int = 10) -> list[Fact]:
        """The newest notes of a device."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device, text, created FROM facts WHERE device = ? "
                "ORDER BY id DESC LIMIT ?",
                (device, limit),
            ).fetchall()
        return [Fact(*row) for row in rows]

    def search(self, device: str, query: str, limit: int = 5) -> list[Fact]:
        """Notes of a device sharing the most keywords with ``query``, newest first on ties.

        Latin words match whole-word prefixes; Chinese, written without spaces, matches by
        character pairs, so "北京" finds "明天去北京开会".
        """
        keywords = _keywords(query)
        if not keywords:
            return self.recent(device, limit)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device, text, created FROM facts WHERE device = ?", (device,)
            ).fetchall()
        scored = []
        for row in rows:
            folded = str(row[2]).casefold()
            score = sum(1 for k in keywords if k in folded)
            if score:
                scored.append((score, row[0], Fact(*row)))
        scored.sort(key=lambda item: (-item[0], -item[1]))
        return [fact for _, _, fact in scored[:limit]]


def _keywords(text: str) -> set[str]:
    words: set[str] = set()
    for piece in _WORD.findall(text.casefold()):
        if piece.isascii():
            if len(piece) > 2:
                words.add(piece)
        elif len(piece) == 1:
            words.add(piece)
        else:
            words.update(piece[i : i + 2] for i in range(len(piece) - 1))
    return words
