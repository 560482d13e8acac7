"""Conversation memory: per-device sessions bounded in turns, tokens and time; notes in SQLite."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.orchestrator.memory import LongTermMemory, ShortTermMemory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_are_kept_per_device() -> None:
    memory = ShortTermMemory()
    memory.add("lamp-1", "s", "user", "my name is Ada")
    memory.add("lamp-2", "s", "user", "my name is Bob")
    assert memory.history("lamp-1", "s") == [{"role": "user", "content": "my name is Ada"}]
    assert memory.history("lamp-2", "s") == [{"role": "user", "content": "my name is Bob"}]
    assert memory.history("lamp-3", "s") == []


def test_turns_are_bounded() -> None:
    memory = ShortTermMemory(max_turns=3)
    for n in range(5):
        memory.add("d", "s", "user", f"turn {n}")
    assert [t["content"] for t in memory.history("d", "s")] == ["turn 2", "turn 3", "turn 4"]


def test_tokens_are_bounded_but_the_last_turn_stays() -> None:
    memory = ShortTermMemory(max_tokens=10, count_tokens=len)
    memory.add("d", "s", "user", "abcd")
    memory.add("d", "s", "assistant", "efgh")
    memory.add("d", "s", "user", "ijklmn")
    assert [t["content"] for t in memory.history("d", "s")] == ["efgh", "ijklmn"]
    memory.add("d", "s", "user", "x" * 50)
    assert [t["content"] for t in memory.history("d", "s")] == ["x" * 50]


def test_idle_sessions_expire() -> None:
    clock = Clock()
    memory = ShortTermMemory(ttl_s=60, clock=clock)
    memory.add("d", "old", "user", "hello")
    clock.now += 30
    memory.add("d", "new", "user", "hi")
    clock.now += 31
    assert memory.history("d", "old") == []
    assert memory.history("d", "new") == [{"role": "user", "content": "hi"}]
    clock.now += 61
    assert len(memory) == 0


def test_sessions_are_bounded_in_number() -> None:
    memory = ShortTermMemory(max_sessions=2)
    for name in ("a", "b", "c"):
        memory.add("d", name, "user", name)
    assert memory.history("d", "a") == []
    assert len(memory) == 2


def test_a_pending_question_belongs_to_its_session() -> None:
    memory = ShortTermMemory()
    memory.set_pending("d", "s", "which city?")
    assert memory.pending("d", "s") == "which city?"
    assert memory.pending("other", "s") is None
    memory.set_pending("d", "s", None)
    assert memory.pending("d", "s") is None


def test_notes_survive_a_restart_and_stay_with_their_device(tmp_path: Path) -> None:
    path = tmp_path / "state" / "memory.db"
    notes = LongTermMemory(path)
    notes.add("d1", "the wifi password is tulip42")
    notes.add("d1", "明天去北京开会")
    notes.add("d2", "the wifi password is daisy7")
    notes.close()
    reopened = LongTermMemory(path)
    try:
        assert [f.text for f in reopened.search("d1", "wifi password")] == [
            "the wifi password is tulip42"
        ]
        assert [f.text for f in reopened.search("d1", "北京")] == ["明天去北京开会"]
        assert [f.text for f in reopened.search("d2", "wifi")] == ["the wifi password is daisy7"]
        assert reopened.search("d1", "garage door") == []
        # No keywords: the newest notes.
        assert next(f.text for f in reopened.search("d1", "")) == "明天去北京开会"
    finally:
        reopened.close()


def test_notes_are_bounded_per_device(tmp_path: Path) -> None:
    notes = LongTermMemory(tmp_path / "m.db", max_facts_per_device=3)
    try:
        for n in range(5):
            notes.add("d", f"note {n}")
        notes.add("e", "kept")
        assert [f.text for f in notes.recent("d")] == ["note 4", "note 3", "note 2"]
        assert [f.text for f in notes.recent("e")] == ["kept"]
    finally:
        notes.close()
