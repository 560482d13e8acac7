"""Shared fixtures: the committed glm-tiny model and freshly exported checkpoints."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.model.runtime import Model, load_model

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "glm-tiny"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


@pytest.fixture(scope="session")
def tiny_model() -> Iterator[Model]:
    with load_model(TINY, threads=1) as model:
        yield model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mosquitto(config: Path, port: int) -> subprocess.Popen[bytes]:
    """Run mosquitto with ``config`` and wait until it accepts connections on ``port``."""
    process = subprocess.Popen(["mosquitto", "-c", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)


def mosquitto_config(directory: Path, port: int, extra: str = "") -> Path:
    """A loopback listener for the tests (root must be allowed to read the test's files)."""
    config = directory / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n{extra}")
    return config


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    extra = f"persistence false\nlog_dest file {tmp_path / 'mosquitto.log'}\n"
    process = start_mosquitto(mosquitto_config(tmp_path, port, extra), port)
    yield port
    process.terminate()
    process.wait(timeout=10)


def mqtt_rr(broker: int, topic: str, body: dict[str, Any], correlation: str) -> dict[str, Any]:
    """One MQTT 5 request with mosquitto_rr (a real device client); the decoded answer."""
    done = subprocess.run(
        [
            "mosquitto_rr",
            "-p",
            str(broker),
            "-t",
            topic,
            "-e",
            f"answers/{correlation}",
            "-m",
            json.dumps(body, ensure_ascii=False),
            "-D",
            "publish",
            "correlation-data",
            correlation,
            "-W",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer
