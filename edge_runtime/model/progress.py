"""A plain progress display for long offline steps (export, quantization, benchmarks)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """Numbered steps with their durations, written to a terminal or a log."""

    def __init__(self, total: int, out: TextIO | None = None):
        self.total = total
        self._out = out if out is not None else sys.stderr
        self._index = 0

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Announce a step, then report how long it took (or that it failed)."""
        self._index += 1
        self._write(f"[{self._index}/{self.total}] {title} ...")
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self._write(f"[{self._index}/{self.total}] {title}: failed")
            raise
        self._write(
            f"[{self._index}/{self.total}] {title}: done in {time.perf_counter() - started:.1f} s"
        )

    def note(self, text: str) -> None:
        """A line of detail inside the current step."""
        self._write(f"      {text}")

    def _write(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()
