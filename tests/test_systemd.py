"""`serve` under a service manager: sd_notify, reload, graceful stop, the unit file itself."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import mqtt_rr
from test_coap import free_udp_port
from test_serve import EXE, ROOT, config_for, wait_online

UNIT = ROOT / "packaging" / "edge-runtime.service"


class NotifySocket:
    """A fake $NOTIFY_SOCKET: collects what the daemon tells systemd."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(data.decode().split("\n"))

    def wait_for(self, line: str, *, after: int = 0, timeout: float = 90) -> int:
        """Index of the first message from ``after`` on that has ``line``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, message in enumerate(self.messages[after:], after):
                if line in message:
                    return index
            time.sleep(0.02)
        raise AssertionError(f"no {line!r} in {self.messages[after:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def make_config(tmp_path: Path, broker: int) -> Path:
    return config_for(tmp_path, broker, free_udp_port())


def launch(tmp_path: Path, config: Path, notify: NotifySocket) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    with (tmp_path / "daemon.log").open("a") as log:
        return subprocess.Popen([str(EXE), "serve", "--config", str(config)], stderr=log, env=env)


def start(
    tmp_path: Path, broker: int, notify: NotifySocket
) -> tuple[subprocess.Popen[bytes], Path]:
    config = make_config(tmp_path, broker)
    return launch(tmp_path, config, notify), config


def ask_echo(
    broker: int, text: str = "hello", correlation: str = "c", topic: str = "edge/req/diag"
) -> dict[str, Any]:
    return mqtt_rr(broker, topic, {"prompt": text}, correlation)


def stop(daemon: subprocess.Popen[bytes]) -> int:
    daemon.send_signal(signal.SIGTERM)
    return daemon.wait(timeout=60)


def test_ready_watchdog_reload_and_stop(tmp_path: Path, broker: int, notify: NotifySocket) -> None:
    daemon, _ = start(tmp_path, broker, notify)
    try:
        ready = notify.wait_for("READY=1")
        before = [line for message in notify.messages[:ready] for line in message]
        # A slow model load asks for more time, and the status says what is going on.
        assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in before)
        assert any(line.startswith("STATUS=loading model") for line in before)
        assert any(line.startswith("STATUS=serving") for line in notify.messages[ready])
        # READY means serving: a device gets an answer at once.
        wait_online(broker)
        assert ask_echo(broker)["text"] == "hello"
        first_ping = notify.wait_for("WATCHDOG=1", after=ready)
        notify.wait_for("WATCHDOG=1", after=first_ping + 1)
        daemon.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", after=ready + 1)
        stamp = [x for x in notify.messages[reloading] if x.startswith("MONOTONIC_USEC=")]
        assert stamp and int(stamp[0].split("=")[1]) > 0
        notify.wait_for("READY=1", after=reloading)
        code = stop(daemon)
        notify.wait_for("STOPPING=1", after=reloading)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert code == 0, (tmp_path / "daemon.log").read_text()


def test_a_broken_reload_keeps_the_old_config_serving(
    tmp_path: Path, broker: int, notify: NotifySocket
) -> None:
    daemon, config = start(tmp_path, broker, notify)
    good = config.read_text()
    try:
        mark = notify.wait_for("READY=1")
        wait_online(broker)
        # 1. Not TOML at all.
        config.write_text(good + "\n[model\n")
        daemon.send_signal(signal.SIGHUP)
        mark = notify.wait_for("READY=1", after=mark + 1)
        assert any("reload failed" in line for line in notify.messages[mark])
        assert ask_echo(broker, correlation="a")["text"] == "hello"
        # 2. Valid TOML, but a filter that is not WebAssembly.
        junk = tmp_path / "junk.wasm"
        junk.write_bytes(b"not wasm at all")
        config.write_text(good.replace(f"{ROOT / 'filters'}/router.wasm", str(junk)))
        daemon.send_signal(signal.SIGHUP)
        mark = notify.wait_for("READY=1", after=mark + 1)
        assert any("reload failed" in line for line in notify.messages[mark])
        # The old router still sends edge/req/diag to echo.
        assert ask_echo(broker, correlation="b")["route"] == "echo"
        # 3. A good change applies: size-guard now refuses anything over 64 bytes.
        config.write_text(good.replace('{"max_bytes": 16384}', '{"max_bytes": 64}'))
        daemon.send_signal(signal.SIGHUP)
        mark = notify.wait_for("READY=1", after=mark + 1)
        assert any("reloaded" in line for line in notify.messages[mark])
        refused = ask_echo(broker, "x" * 100, correlation="c")
        assert refused["error"]["status"] == 413  # type: ignore[index]
        # The request path's own settings apply too: a deadline no answer can meet.
        config.write_text(good.replace("timeout_seconds = 30", "timeout_seconds = 0.001"))
        daemon.send_signal(signal.SIGHUP)
        mark = notify.wait_for("READY=1", after=mark + 1)
        late = ask_echo(broker, correlation="d", topic="edge/req/s1")
        # Either it expired before the route ran (504), or the model stopped at the deadline.
        assert "error" in late or late["finish_reason"] == "cancelled", late
        if "error" in late:
            assert late["error"]["status"] == 504  # type: ignore[index]
    finally:
        code = stop(daemon)
    assert code == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "reload failed, the running configuration keeps serving" in log


class _Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(1.5)
        body = json.dumps(
            {
                "city": "Oslo",
                "date": "today",
                "date_label": "today",
                "condition": "fog",
                "low_c": 1,
                "high_c": 4,
                "precipitation": 10,
            }
        )
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_sigterm_answers_requests_in_flight_first(
    tmp_path: Path, broker: int, notify: NotifySocket
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    config = make_config(tmp_path, broker)
    config.write_text(config.read_text().replace("127.0.0.1:8081", f"127.0.0.1:{port}"))
    daemon = launch(tmp_path, config, notify)
    try:
        notify.wait_for("READY=1")
        wait_online(broker)
        # The weather service takes 1.5 s; SIGTERM arrives while the tool call is under way.
        asking = subprocess.Popen(
            [
                "mosquitto_rr",
                "-p",
                str(broker),
                "-t",
                "edge/req/s1",
                "-e",
                "r/slow",
                "-m",
                json.dumps({"prompt": "weather in Oslo"}),
                "-D",
                "publish",
                "correlation-data",
                "slow",
                "-W",
                "30",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        out, _ = asking.communicate(timeout=60)
        code = daemon.wait(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        server.shutdown()
        server.server_close()
    answer = json.loads(out)
    assert answer["text"].startswith("Weather in Oslo today: fog"), answer
    assert code == 0


def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's installed command.
    unit = tmp_path / "edge-runtime.service"
    unit.write_text(
        UNIT.read_text()
        .replace("/opt/edge-runtime/venv/bin/edge-runtime", str(EXE))
        .replace("WorkingDirectory=/opt/edge-runtime", f"WorkingDirectory={ROOT}")
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    # systemd-analyze exits 0 on unknown keys and bad values: any output is a failure.
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


def test_the_unit_exposure_is_low() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0


def test_a_taken_metrics_port_is_a_clear_error(tmp_path: Path, broker: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config_for(tmp_path, broker, free_udp_port(), port)
        done = subprocess.run(
            [str(EXE), "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    assert f"metrics.port: cannot serve metrics on 127.0.0.1:{port}" in done.stderr
