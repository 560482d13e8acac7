"""The response cache: LRU with a time to live per answer, keyed on everything that shapes it."""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache


def normalise(text: str) -> str:
    """Text as the cache compares it: NFKC, case-folded, whitespace collapsed, edges trimmed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.split()).strip(" .!?。！？")


def cache_key(
    *,
    route: str,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    model: str,
    filters: str,
) -> str:
    """A digest of the normalised conversation, generation parameters, model and filter chain.

    A new model or a reloaded filter chain changes the key, so neither serves stale answers.
    """
    body = {
        "route": route,
        "messages": [
            {"role": str(m.get("role", "")), "content": normalise(str(m.get("content", "")))}
            for m in messages
        ],
        "params": {k: params[k] for k in sorted(params)},
        "model": model,
        "filters": filters,
    }
    encoded = json.dumps(body, ensure_ascii=False, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True, slots=True)
class Cached:
    """A stored answer: the answer's fields, and how long it may live."""

    payload: Mapping[str, Any]
    ttl_s: float


class ResponseCache:
    """Answers by key, least recently used out first, each gone after its own TTL."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self._entries: TLRUCache[str, Cached] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, value, now: now + value.ttl_s, timer=clock
        )

    def __len__(self) -> int:
        self._entries.expire()
        return len(self._entries)

    def get(self, key: str) -> Mapping[str, Any] | None:
        """The cached answer, counting a hit or a miss."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        return found.payload

    def put(self, key: str, payload: Mapping[str, Any], ttl_s: float | None = None) -> bool:
        """Store an answer for at most the cache's TTL; a TTL of 0 stores nothing."""
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        if ttl <= 0:
            return False
        self._entries[key] = Cached(dict(payload), ttl)
        return True

    def evict(self, key: str) -> bool:
        """Drop one answer (a device rated it badly)."""
        return self._entries.pop(key, None) is not None
