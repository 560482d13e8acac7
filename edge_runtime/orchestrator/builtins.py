"""Python tools that ship with edge-runtime, registered as entry points (edge_runtime.tools)."""

from __future__ import annotations

import datetime as dt


def now() -> dict[str, str]:
    """The box's local date and time."""
    current = dt.datetime.now().astimezone()
    return {
        "date": current.date().isoformat(),
        "time": current.strftime("%H:%M"),
        "weekday": current.strftime("%A"),
        "timezone": current.tzname() or "",
    }
