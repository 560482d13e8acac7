"""Local peers the benchmarks run against: free ports and a mosquitto of their own."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """mosquitto on a free loopback port, with its config in ``directory``."""
    port = free_port()
    config = directory / "mosquitto.conf"
    # Without TCP_NODELAY every small publish waits for a delayed ACK (~40-90 ms).
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nset_tcp_nodelay true\n"
    )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([exe, "-c", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start") from None
            time.sleep(0.05)


def free_udp_port() -> int:
    """A UDP port on ::1 nothing is bound to (now)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])
