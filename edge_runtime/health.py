"""Whether this node serves: ready, degraded (with reasons) or not ready."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A check returns None when all is well, else the reason it is not.
Check = Callable[[], str | None]


@dataclass
class Health:
    """Readiness set by the daemon, plus checks that can degrade it (a failed filter, no broker)."""

    ready: bool = False
    stopping: bool = False
    reason: str = "starting"
    checks: list[Check] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """``{"status": "ready" | "degraded" | "not_ready", "reasons": [...]}``."""
        if self.stopping:
            return {"status": "not_ready", "reasons": ["stopping"]}
        if not self.ready:
            return {"status": "not_ready", "reasons": [self.reason]}
        reasons = [r for r in (check() for check in self.checks) if r is not None]
        return {"status": "degraded" if reasons else "ready", "reasons": reasons}
