"""The response cache: what the key covers, time to live, LRU, eviction."""

from __future__ import annotations

from typing import Any

from edge_runtime.orchestrator.cache import ResponseCache, cache_key

BASE: dict[str, Any] = {
    "route": "orchestrate",
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    "params": {"max_new_tokens": 64},
    "model": "m1",
    "filters": "f1",
}


def key(**changes: Any) -> str:
    return cache_key(**{**BASE, **changes})


def test_equivalent_requests_share_a_key() -> None:
    same = [{"role": "user", "content": "  what is the   WEATHER in paris  "}]
    assert key(messages=same) == key()
    assert key(params={"max_new_tokens": 64}) == key()


def test_everything_that_shapes_the_answer_is_in_the_key() -> None:
    different = [
        key(messages=[{"role": "user", "content": "What is the weather in Rome?"}]),
        key(messages=[{"role": "user", "content": "hi"}, *BASE["messages"]]),
        key(params={"max_new_tokens": 65}),
        key(params={"max_new_tokens": 64, "seed": 1}),
        key(model="m2"),
        key(filters="f2"),
        key(route="direct"),
    ]
    assert len({key(), *different}) == len(different) + 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_live_for_their_ttl() -> None:
    clock = Clock()
    cache = ResponseCache(10, ttl_s=60, clock=clock)
    assert cache.put("a", {"text": "A"})
    assert cache.put("live", {"text": "L"}, ttl_s=5)
    assert not cache.put("never", {"text": "N"}, ttl_s=0)
    # A tool's TTL can shorten, never lengthen, the cache's.
    assert cache.put("long", {"text": "X"}, ttl_s=3600)
    clock.now = 4
    assert cache.get("live") == {"text": "L"}
    assert cache.get("never") is None
    clock.now = 6
    assert cache.get("live") is None
    assert cache.get("a") == {"text": "A"}
    clock.now = 61
    assert cache.get("a") is None and cache.get("long") is None
    assert (cache.hits, cache.misses) == (2, 4)


def test_least_recently_used_goes_first_and_eviction() -> None:
    cache = ResponseCache(2, ttl_s=60)
    cache.put("a", {"text": "A"})
    cache.put("b", {"text": "B"})
    cache.get("a")
    cache.put("c", {"text": "C"})
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.evict("a")
    assert not cache.evict("a")
    assert cache.get("a") is None
