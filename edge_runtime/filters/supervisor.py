"""One filter's life: a fresh instance after every trap, restarts rate-limited, then failed."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import wasmtime

from edge_runtime.errors import FilterError, FilterLoadError, FilterTrapError
from edge_runtime.filters.host import FilterInstance, FilterSpec
from edge_runtime.filters.hostcalls import HostEnv

log = logging.getLogger("edge_runtime.filters")


@dataclass(frozen=True)
class RestartPolicy:
    """How many restarts a filter gets in a window before it is marked failed."""

    max_restarts: int = 5
    window_s: float = 60.0


@dataclass
class FilterStats:
    """Counters the metrics endpoint and `doctor` report."""

    traps: int = 0
    restarts: int = 0
    skipped: int = 0
    # Why the last trap happened: deadline, fuel, exit, trap (memory, unreachable, ...).
    last_trap: str | None = None
    # Instances replaced between requests because their memory neared the cap.
    recycled: int = 0


# Guest memory only grows; a filter that leaks reaches its cap and traps mid-request. Replacing
# it between requests once it passes this share of the cap loses nothing.
RECYCLE_AT = 0.75
RECYCLE_CHECK_EVERY = 64


def recycle_check_every() -> int:
    """How many requests pass between memory checks (a module setting tests can lower)."""
    return RECYCLE_CHECK_EVERY


class FilterSupervisor:
    """Owns the live instance of one filter and replaces it when it traps."""

    def __init__(
        self,
        spec: FilterSpec,
        module: wasmtime.Module,
        engine: wasmtime.Engine,
        env: HostEnv,
        *,
        tick_ms: float,
        fail_open: bool = False,
        policy: RestartPolicy | None = None,
        collect_logs: bool = False,
        fast: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.spec = spec
        self.fail_open = fail_open
        self.stats = FilterStats()
        self.failed: str | None = None
        self._module = module
        self._engine = engine
        self._env = env
        self._tick_ms = tick_ms
        self._policy = policy or RestartPolicy()
        self._collect_logs = collect_logs
        self._fast = fast
        self._clock = clock
        self._restarts: deque[float] = deque()
        self._uses = 0
        self._instance: FilterInstance | None = None

    @property
    def name(self) -> str:
        """The filter's name from config."""
        return self.spec.name

    def start(self) -> FilterInstance:
        """Create and start the first instance; a filter that cannot start is a load error."""
        self._instance = self._new_instance()
        return self._instance

    def _new_instance(self) -> FilterInstance:
        instance = FilterInstance(
            self._engine,
            self._module,
            self.spec,
            self._env,
            tick_ms=self._tick_ms,
            collect_logs=self._collect_logs,
            fast=self._fast,
        )
        instance.start()
        return instance

    def instance(self) -> FilterInstance:
        """The live instance, replacing a dead one within the restart budget."""
        if self.failed is not None:
            raise FilterLoadError(self.name, f"failed: {self.failed}")
        current = self._instance
        if current is not None and current.dead is None:
            self._uses += 1
            if self._uses % recycle_check_every() == 0 and self._near_cap(current):
                return self._recycle(current)
            return current
        now = self._clock()
        while self._restarts and now - self._restarts[0] > self._policy.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self._policy.max_restarts:
            self.failed = (
                f"{len(self._restarts)} restarts in {self._policy.window_s:.0f} s; "
                "not restarted again until reload"
            )
            log.error("filter %s marked failed: %s", self.name, self.failed)
            raise FilterLoadError(self.name, f"failed: {self.failed}")
        self._restarts.append(now)
        self.stats.restarts += 1
        if current is not None:
            current.close()
        try:
            self._instance = self._new_instance()
        except FilterError as exc:
            # Counted against the restart budget like a trap: a start-up that timed out on a
            # busy box gets another chance; one that keeps failing ends up marked failed.
            self._instance = None
            log.error("filter %s: restart failed: %s", self.name, exc)
            raise
        log.warning("filter %s restarted (%d in window)", self.name, len(self._restarts))
        return self._instance

    def _near_cap(self, instance: FilterInstance) -> bool:
        # Only an idle instance (no stream context but the root) is replaced: requests still
        # under way on it finish there.
        if len(instance.contexts) > 1:
            return False
        return instance.memory.size() > RECYCLE_AT * self.spec.memory_max_bytes

    def _recycle(self, old: FilterInstance) -> FilterInstance:
        try:
            fresh = self._new_instance()
        except FilterError as exc:
            # Keep the old one serving; its cap will say when it really cannot go on.
            log.warning("filter %s: could not recycle a nearly full instance: %s", self.name, exc)
            return old
        kib = old.memory.size() // 1024
        old.close()
        self._instance = fresh
        self.stats.recycled += 1
        log.info("filter %s: instance recycled at %d KiB of guest memory", self.name, kib)
        return fresh

    def live(self) -> FilterInstance | None:
        """The current instance if it is alive (never starts one)."""
        current = self._instance
        return current if current is not None and current.dead is None else None

    def trapped(self, exc: FilterTrapError) -> None:
        """Record a trap; the next call to instance() starts a fresh one."""
        self.stats.traps += 1
        self.stats.last_trap = exc.kind
        log.error("%s", exc)

    def close(self) -> None:
        """Finish the live instance."""
        if self._instance is not None:
            self._instance.close()
            self._instance = None
