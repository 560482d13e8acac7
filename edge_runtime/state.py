"""The latest value of each subscribed device topic: written by MQTT, read by tools."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Reading:
    """One topic's latest payload and when it arrived (on the store's clock)."""

    topic: str
    value: Any
    received: float


class StateStore:
    """A bounded map of topic to latest reading; the least recently updated topic goes first."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self._clock = clock
        self._readings: OrderedDict[str, Reading] = OrderedDict()

    def __len__(self) -> int:
        return len(self._readings)

    def update(self, topic: str, payload: bytes) -> None:
        """Record a payload: JSON when it parses, else text; an empty payload clears the topic."""
        if not payload:
            # A retained message is cleared with an empty payload: the reading is gone too.
            self._readings.pop(topic, None)
            return
        value: Any
        try:
            value = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            value = payload.decode("utf-8", "replace")
        self._readings.pop(topic, None)
        self._readings[topic] = Reading(topic, value, self._clock())
        while len(self._readings) > self.max_entries:
            self._readings.popitem(last=False)

    def get(self, topic: str) -> Reading | None:
        """The latest reading of ``topic``, if any arrived."""
        return self._readings.get(topic)

    def age(self, reading: Reading) -> float:
        """Seconds since ``reading`` arrived."""
        return self._clock() - reading.received
