"""sd_notify over $NOTIFY_SOCKET: readiness, status, watchdog, reloading and stopping (stdlib)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("edge_runtime.systemd")


class Notifier:
    """Talks to the service manager; every call does nothing when not run by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        watchdog = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID, when set, names the process the watchdog is for (not a child of it).
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(watchdog) / 1e6 if watchdog.isdigit() and mine else 0.0

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._socket is not None

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def send(self, *lines: str) -> None:
        """One datagram of KEY=VALUE lines; a failure is logged, never raised."""
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        """Transports are bound and the model is warm."""
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        """What the daemon is doing, for `systemctl status`."""
        self.send(f"STATUS={text}")

    def reloading(self) -> None:
        """A reload started; READY=1 ends it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self) -> None:
        """Shutdown started."""
        self.send("STOPPING=1", "STATUS=stopping: finishing requests under way")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start (or stop) time: a large model loads slowly."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    async def keep_alive(self) -> None:
        """Ping the watchdog from the event loop at half its interval, so a blocked loop shows."""
        if not self.watchdog_s or self._socket is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)
