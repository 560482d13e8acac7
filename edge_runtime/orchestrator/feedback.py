"""Feedback on answers: ratings from devices, stored in SQLite, exported as training pairs."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_runtime.errors import RequestError
from edge_runtime.storage import open_database


class Rating(BaseModel):
    """A device's verdict on one answer: ``{id, rating, comment}``; ratings run 1 to 5."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    rating: int = Field(ge=1, le=5)
    comment: str = Field("", max_length=2000)


def parse_rating(body: Any) -> Rating:
    """A Rating from a decoded body, or a RequestError naming the field at fault."""
    try:
        return Rating.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise RequestError(f"feedback {where}: {first['msg']}") from None


@dataclass(frozen=True, slots=True)
class Answered:
    """What was asked and answered, kept briefly so later feedback can name it by id."""

    device: str
    request: str
    answer: str
    cache_key: str | None


class RecentAnswers:
    """The last answers by id (bounded), so feedback finds its request and answer."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], Answered] = OrderedDict()

    def add(self, device: str, answer_id: str, answered: Answered) -> None:
        """Remember one answer given to ``device``."""
        key = (device, answer_id)
        self._entries[key] = answered
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, device: str, answer_id: str) -> Answered | None:
        """The answer ``device`` got with this id, if still remembered."""
        return self._entries.get((device, answer_id))


class FeedbackStore:
    """Ratings with the request and answer they judge, in SQLite under the state directory."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_database(
            path,
            "CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY, answer_id TEXT NOT NULL,"
            " device TEXT NOT NULL, rating INTEGER NOT NULL, comment TEXT NOT NULL,"
            " request TEXT, answer TEXT, created REAL NOT NULL);",
        )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def record(self, rating: Rating, device: str, answered: Answered | None) -> None:
        """Store one rating; the request and answer are empty when the answer is unknown here."""
        with self._lock:
            self._db.execute(
                "INSERT INTO feedback (answer_id, device, rating, comment, request, answer,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    rating.id,
                    device,
                    rating.rating,
                    rating.comment,
                    answered.request if answered else None,
                    answered.answer if answered else None,
                    self._clock(),
                ),
            )

    def rows(self, *, min_rating: int = 1, max_rating: int = 5) -> Iterator[dict[str, Any]]:
        """Every rating in a range, oldest first, with its request and answer."""
        with self._lock:
            found = self._db.execute(
                "SELECT answer_id, device, rating, comment, request, answer, created FROM feedback"
                " WHERE rating BETWEEN ? AND ? ORDER BY id",
                (min_rating, max_rating),
            ).fetchall()
        for answer_id, device, rating, comment, request, answer, created in found:
            yield {
                "id": answer_id,
                "device": device,
                "request": request,
                "answer": answer,
                "rating": rating,
                "comment": comment,
                "created": created,
            }

    def export(self, out: IO[str], *, min_rating: int = 1, max_rating: int = 5) -> int:
        """Write (request, answer, rating) pairs as JSON lines; ratings of unknown answers are
        left out, since they cannot teach anything. Returns the number of lines.
        """
        count = 0
        for row in self.rows(min_rating=min_rating, max_rating=max_rating):
            if row["request"] is None or row["answer"] is None:
                continue
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        return count
