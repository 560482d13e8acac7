"""The example weather service, run as a subprocess on a free port for tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import free_port

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "weather_service.py"


@contextmanager
def weather_service() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert "weather service on" in process.stdout.readline()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
