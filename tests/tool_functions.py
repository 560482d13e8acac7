"""Python tools for the tool gateway tests: good ones and badly behaved ones."""

from __future__ import annotations

import asyncio
import threading
import time


def echo(text: str) -> dict[str, str]:
    return {"echo": text}


def hangs(**_arguments: object) -> None:
    time.sleep(3)


async def async_hangs(**_arguments: object) -> None:
    await asyncio.sleep(30)


def huge(**_arguments: object) -> str:
    return "x" * (10 * 1024 * 1024)


def raises(**_arguments: object) -> None:
    raise RuntimeError("sensor bus is down")


def not_json(**_arguments: object) -> object:
    return {1, 2}


# Two tools that only finish when both run at once: run one after the other, both time out.
_BARRIER = threading.Barrier(2, timeout=3)


def meet_a() -> str:
    _BARRIER.wait()
    return "a"


def meet_b() -> str:
    _BARRIER.wait()
    return "b"


def forecast(city: str, date: str = "today") -> dict[str, object]:
    return {"city": city, "date": date, "condition": "light rain", "high_c": 9, "low_c": 3}


def deep() -> object:
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    return value
