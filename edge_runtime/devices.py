"""The device registry: who announced itself, what it is and can do, and when it was last seen."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.storage import open_database

_MAX_DESCRIPTION = 16 * 1024
# Past this many devices new ones are refused (and logged): an id is a row and a label.
MAX_DEVICES = 10_000
MAX_ID_LENGTH = 128
# last_seen is written at most this often per device: a chatty sensor is not a disk load.
_SEEN_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Device:
    """One registered device."""

    id: str
    kind: str
    capabilities: tuple[str, ...]
    source: str
    registered: float
    last_seen: float
    online: bool

    def as_dict(self) -> dict[str, Any]:
        """The device as `edge-runtime devices --json` prints it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "capabilities": list(self.capabilities),
            "source": self.source,
            "registered": self.registered,
            "last_seen": self.last_seen,
            "online": self.online,
        }


class DescriptionError(ValueError):
    """A birth message or registration that cannot be read."""


@dataclass(frozen=True, slots=True)
class Description:
    """What a device says of itself."""

    kind: str = ""
    capabilities: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    online: bool = True


def parse_json_description(payload: bytes) -> Description:
    """``{"kind", "capabilities": [...], "names": [...]}``, or the ``offline`` a will leaves.

    ``kind`` is best given as a Home Assistant domain (light, switch, sensor, climate, ...):
    sentences that name a device match only devices of their domains.
    """
    if not payload:
        raise DescriptionError("empty")
    if len(payload) > _MAX_DESCRIPTION:
        raise DescriptionError(f"description is over {_MAX_DESCRIPTION} bytes")
    text = payload.decode("utf-8", "replace").strip()
    if text in ("offline", '"offline"'):
        return Description(online=False)
    try:
        data = json.loads(text) if text else {}
    except (ValueError, RecursionError) as exc:
        raise DescriptionError(f"not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise DescriptionError("a description is a JSON object")
    kind = data.get("kind", "")
    capabilities = data.get("capabilities", [])
    names = data.get("names", data.get("name", []))
    if isinstance(names, str):
        names = [names]
    if (
        not isinstance(kind, str)
        or not isinstance(capabilities, list)
        or not isinstance(names, list)
    ):
        raise DescriptionError("kind is a string, capabilities and names are lists")
    return Description(
        kind[:128],
        tuple(str(c)[:128] for c in capabilities[:256]),
        tuple(str(n)[:128] for n in names[:16]),
        data.get("status", "online") != "offline",
    )


class DeviceRegistry:
    """Devices in SQLite under the state directory; safe to use from several threads."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_database(
            path,
            "CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
            " capabilities TEXT NOT NULL, source TEXT NOT NULL, registered REAL NOT NULL,"
            " last_seen REAL NOT NULL, online INTEGER NOT NULL,"
            " names TEXT NOT NULL DEFAULT '[]');",
        )
        self._written: dict[str, float] = {}
        # Reads on the request path come from this copy, not from the database.
        self._known: dict[str, tuple[str, bool]] = {
            row[0]: (row[1], bool(row[2]))
            for row in self._db.execute("SELECT id, kind, online FROM devices").fetchall()
        }

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def register(
        self,
        device_id: str,
        kind: str,
        capabilities: tuple[str, ...],
        *,
        source: str,
        online: bool = True,
        names: tuple[str, ...] = (),
    ) -> bool:
        """Record (or update) a device's own description of itself; False if refused."""
        if not device_id or len(device_id) > MAX_ID_LENGTH:
            return False
        if device_id not in self._known and (not online or len(self._known) >= MAX_DEVICES):
            # An offline will of a device never seen registers nothing; nor does a full table.
            return False
        now = self._clock()
        with self._lock:
            self._db.execute(
                "INSERT INTO devices (id, kind, capabilities, source, registered, last_seen,"
                " online, names) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " kind = CASE WHEN excluded.kind = '' THEN kind ELSE excluded.kind END,"
                " capabilities = CASE WHEN excluded.kind = '' THEN capabilities"
                " ELSE excluded.capabilities END,"
                " names = CASE WHEN excluded.kind = '' THEN names ELSE excluded.names END,"
                " source = excluded.source, last_seen = excluded.last_seen,"
                " online = excluded.online",
                (
                    device_id,
                    kind,
                    json.dumps(list(capabilities)),
                    source,
                    now,
                    now,
                    int(online),
                    json.dumps(list(names), ensure_ascii=False),
                ),
            )
            row = self._db.execute(
                "SELECT kind, online FROM devices WHERE id = ?", (device_id,)
            ).fetchone()
            self._known[device_id] = (row[0], bool(row[1]))
        return True

    def forget(self, device_id: str) -> None:
        """Remove a device (its retained birth message was cleared)."""
        with self._lock:
            self._db.execute("DELETE FROM devices WHERE id = ?", (device_id,))
        self._known.pop(device_id, None)

    def seen(self, device_id: str) -> None:
        """A registered device just sent a request (written at most every few seconds)."""
        if device_id not in self._known:
            return
        now = self._clock()
        if now - self._written.get(device_id, 0.0) < _SEEN_EVERY_S:
            return
        self._written[device_id] = now
        kind, _ = self._known[device_id]
        self._known[device_id] = (kind, True)
        with self._lock:
            self._db.execute(
                "UPDATE devices SET last_seen = ?, online = 1 WHERE id = ?",
                (self._clock(), device_id),
            )

    def __len__(self) -> int:
        return len(self._known)

    def kind(self, device_id: str) -> str | None:
        """The kind a registered device gave, or None for a device that never registered."""
        found = self._known.get(device_id)
        return None if found is None else found[0]

    def registered(self, device_id: str) -> bool:
        """Whether the device announced itself and has not since gone offline."""
        found = self._known.get(device_id)
        return found is not None and found[1]

    def names(self) -> dict[str, tuple[tuple[str, ...], str]]:
        """Each online device's names (its id when it gave none) and kind, for intent slots."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, names, kind FROM devices WHERE online = 1"
            ).fetchall()
        return {row[0]: (tuple(json.loads(row[1])) or (row[0],), row[2]) for row in rows}

    def all(self) -> list[Device]:
        """Every device, most recently seen first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, capabilities, source, registered, last_seen, online"
                " FROM devices ORDER BY last_seen DESC"
            ).fetchall()
        return [
            Device(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5], bool(row[6]))
            for row in rows
        ]
