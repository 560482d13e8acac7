"""The filter host of a daemon: engines, module cache, the live chain and its hot reload."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import wasmtime
from prometheus_client.registry import Collector

from edge_runtime.config import FilterHostSettings, FilterSettings
from edge_runtime.errors import ConfigError, FilterError, FilterTrapError
from edge_runtime.filters.abi import LogLevel
from edge_runtime.filters.chain import Exchange, FilterChain
from edge_runtime.filters.host import FilterInstance, FilterSpec
from edge_runtime.filters.hostcalls import HostEnv
from edge_runtime.filters.http import HttpCalls
from edge_runtime.filters.loader import EngineOptions, EpochTicker, ModuleCache, make_engine
from edge_runtime.filters.metrics import ChainStats
from edge_runtime.filters.stream import HttpStream
from edge_runtime.filters.supervisor import FilterSupervisor, RestartPolicy

# Polled this often with nothing to deliver; this soon while HTTP calls are out.
IDLE_POLL_S = 1.0
BUSY_POLL_S = 0.01
P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("edge_runtime.filters")

_LEVELS = {
    "trace": LogLevel.TRACE,
    "debug": LogLevel.DEBUG,
    "info": LogLevel.INFO,
    "warn": LogLevel.WARN,
    "error": LogLevel.ERROR,
    "critical": LogLevel.CRITICAL,
}


def default_cache_dir() -> Path:
    """$STATE_DIRECTORY (systemd) or ~/.cache, under edge-runtime/wasm."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "wasm-cache"
    return Path.home() / ".cache" / "edge-runtime" / "wasm"


def filter_spec(settings: FilterSettings) -> FilterSpec:
    """The runtime view of one `[[filters]]` entry (reads its config file, if any)."""
    configuration = settings.config.encode()
    if settings.config_file is not None:
        try:
            configuration = settings.config_file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {settings.config_file}: {exc.strerror}",
                key=f"filters.{settings.name}.config_file",
            ) from None
    return FilterSpec(
        name=settings.name,
        root_id=settings.root_id if settings.root_id is not None else settings.name,
        configuration=configuration,
        vm_configuration=settings.vm_config.encode(),
        log_level=_LEVELS[settings.log_level],
        deadline_ms=settings.deadline_ms,
        start_deadline_ms=settings.start_deadline_ms,
        fuel=settings.fuel,
        memory_max_bytes=settings.memory_max_mb * 1024 * 1024,
        environ=dict(settings.environ),
    )


class _Engine:
    def __init__(self, options: EngineOptions, cache_dir: Path | None):
        self.options = options
        self.engine = make_engine(options)
        self.cache = ModuleCache(self.engine, options, cache_dir)


def _runs_guest_code(method: Callable[P, R]) -> Callable[P, R]:
    """Keep the epoch ticking while the method runs: it calls into guest code."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        service = args[0]
        assert isinstance(service, FilterService)
        with service.guest():
            return method(*args, **kwargs)

    return wrapper


class FilterService:
    """Builds chains from config, serves the current one, swaps in a new one on reload."""

    def __init__(
        self,
        host: FilterHostSettings,
        *,
        env: HostEnv | None = None,
        collect_logs: bool = False,
    ):
        self.host = host
        self.env = env or HostEnv(http=HttpCalls(upstreams=dict(host.upstreams)))
        self._collect_logs = collect_logs
        self._cache_dir = host.cache_dir if host.cache_dir is not None else default_cache_dir()
        self._engines: dict[bool, _Engine] = {}
        self._ticker: EpochTicker | None = None
        self._chain = FilterChain([])
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}
        # Next on_tick per live instance; weak so replaced instances drop out by themselves.
        self._next_tick: weakref.WeakKeyDictionary[FilterInstance, float] = (
            weakref.WeakKeyDictionary()
        )
        self._retired: list[FilterChain] = []
        self._pending: FilterChain | None = None

    def _engine(self, fuel: bool) -> _Engine:
        # Fuel metering changes compiled code: filters that use it get their own engine.
        engine = self._engines.get(fuel)
        if engine is None:
            options = EngineOptions(fuel=fuel, tick_ms=self.host.tick_ms)
            engine = self._engines[fuel] = _Engine(options, self._cache_dir)
            if self._ticker is None:
                # One ticker for every engine, and only while guest code may run (guest()).
                self._ticker = EpochTicker(engine.engine, self.host.tick_ms, gated=True)
                self._ticker.start()
            else:
                self._ticker.add(engine.engine)
        return engine

    def module(self, path: Path, name: str, *, fuel: bool = False) -> wasmtime.Module:
        """A compiled module (through the cache)."""
        return self._engine(fuel).cache.load(path, name)

    @_runs_guest_code
    def build(self, filters: Sequence[FilterSettings]) -> FilterChain:
        """Load, instantiate and start a chain; raises the first filter that cannot start."""
        names = [f.name for f in filters]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ConfigError("two filters share a name", key=f"filters.{duplicate}")
        policy = RestartPolicy(self.host.max_restarts, self.host.restart_window_s)
        supervisors = []
        version = hashlib.sha256()
        for settings in filters:
            spec = filter_spec(settings)
            # What the filter does: its configuration as read (a config_file's contents, not
            # its path), its limits, and the module's bytes.
            version.update(repr(spec).encode())
            version.update(repr((settings.module, settings.fail)).encode())
            with contextlib.suppress(OSError):
                version.update(hashlib.sha256(Path(settings.module).read_bytes()).digest())
            engine = self._engine(spec.fuel > 0)
            supervisors.append(
                FilterSupervisor(
                    spec,
                    engine.cache.load(settings.module, settings.name),
                    engine.engine,
                    self.env,
                    tick_ms=self.host.tick_ms,
                    fail_open=settings.fail == "open",
                    policy=policy,
                    collect_logs=self._collect_logs,
                    fast=self.host.fast_path,
                )
            )
        chain = FilterChain(supervisors, version.hexdigest()[:16])
        chain.start()
        return chain

    def collectors(self) -> list[Collector]:
        """Prometheus collectors: the filters' own metrics and the host's counters per filter."""
        return [self.env.metrics, ChainStats(lambda: self._chain.filters)]

    @contextlib.contextmanager
    def guest(self) -> Iterator[None]:
        """Guest code may run inside: deadlines tick. Outside, an idle daemon does not wake."""
        # The engine is made on first use: make sure one (and so the ticker) exists.
        self._engine(False)
        ticker = self._ticker
        assert ticker is not None
        ticker.enter()
        try:
            yield
        finally:
            ticker.leave()

    def chain_filters(self) -> list[FilterSupervisor]:
        """The filters of the chain serving now (safe from any thread: a snapshot)."""
        return list(self._chain.filters)

    @property
    def chain(self) -> FilterChain:
        """The chain new requests enter (call from the chain's thread)."""
        self._apply_pending()
        return self._chain

    @_runs_guest_code
    def load(self, filters: Sequence[FilterSettings]) -> None:
        """Build a chain and serve it; unlike reload(), errors propagate (start-up fails)."""
        new = self.build(filters)
        with self._lock:
            old, self._chain = self._chain, new
            self._retire(old)

    @_runs_guest_code
    def reload(self, filters: Sequence[FilterSettings]) -> bool:
        """Build a new chain and swap it in; on any error keep serving the old one."""
        try:
            new = self.build(filters)
        except (FilterError, ConfigError) as exc:
            log.error("filter reload failed, keeping the current chain: %s", exc)
            return False
        with self._lock:
            # The swap itself happens on the chain's own thread (begin/poll): the old chain's
            # stores must never run on two threads at once.
            superseded, self._pending = self._pending, new
        if superseded is not None:
            superseded.close()
        log.info("filter chain reloaded: %s", ", ".join(f.name for f in filters) or "(empty)")
        return True

    @_runs_guest_code
    def _apply_pending(self) -> None:
        if self._pending is None:
            return
        with self._lock:
            # Only the chain's thread swaps, so nothing can take the pending chain meanwhile.
            new, self._pending = self._pending, None
            old, self._chain = self._chain, new
            self._retire(old)

    def _retire(self, chain: FilterChain) -> None:
        # In-flight requests finish on the chain they started on; close it when they are done.
        if self._in_flight.get(id(chain), 0) == 0:
            chain.close()
        else:
            self._retired.append(chain)

    @_runs_guest_code
    def begin(self, stream: HttpStream) -> tuple[FilterChain, Exchange]:
        """Run the request phase on the current chain; pair with end()."""
        self._apply_pending()
        with self._lock:
            chain = self._chain
            self._in_flight[id(chain)] = self._in_flight.get(id(chain), 0) + 1
        return chain, chain.request(stream)

    @_runs_guest_code
    def run(
        self,
        stream: HttpStream,
        *,
        respond: Callable[[HttpStream], None] | None = None,
        pause_timeout_s: float = 5.0,
    ) -> HttpStream:
        """A whole exchange on this thread: request phase, ``respond``, response phase.

        A filter that pauses the stream is waited for (polling timers, queues and HTTP calls)
        up to ``pause_timeout_s``, then its fail policy applies. The daemon does the same
        waiting without blocking its event loop.
        """
        chain, exchange = self.begin(stream)
        try:
            self._wait(chain, exchange, pause_timeout_s)
            if stream.local_response is None:
                if respond is not None:
                    respond(stream)
                chain.response(exchange)
                self._wait(chain, exchange, pause_timeout_s)
        finally:
            self.end(chain, exchange)
        return stream

    def _wait(self, chain: FilterChain, exchange: Exchange, timeout_s: float) -> None:
        while exchange.paused_at is not None:
            self.poll()
            if chain.resume(exchange):
                return
            if time.monotonic() - exchange.paused_since > timeout_s:
                chain.expire(exchange)
                continue
            time.sleep(self.host.tick_ms / 1000)

    @_runs_guest_code
    def end(self, chain: FilterChain, exchange: Exchange) -> None:
        """Finish an exchange and release its chain."""
        try:
            chain.finish(exchange)
        finally:
            with self._lock:
                self._in_flight[id(chain)] -= 1
                if self._in_flight[id(chain)] == 0 and chain in self._retired:
                    self._retired.remove(chain)
                    chain.close()

    @_runs_guest_code
    def poll(self, now_ms: float | None = None) -> float:
        """Deliver timers (on_tick), queue notifications and HTTP answers that are due.

        Runs on the thread that runs the chain. Returns how soon (seconds) it wants to be
        called again: soon while HTTP calls are out, at the next timer, else IDLE_POLL_S.
        """
        self._apply_pending()
        now = time.monotonic() * 1000 if now_ms is None else now_ms
        by_name = {s.name: s for s in self._chain.filters}
        for owner, queue_id in self.env.queues.take_ready():
            supervisor = by_name.get(owner)
            if supervisor is not None:
                self._root_call(supervisor, "proxy_on_queue_ready", queue_id)
        for result in self.env.http.take_done():
            # The answer goes to the instance that made the call, even if a reload or restart
            # has replaced it since (its paused requests are still waiting for it).
            instance = result.owner
            if not isinstance(instance, FilterInstance) or instance.dead is not None:
                continue
            instance.http_response = (result.headers, result.body)
            instance.http_call_status = (result.status, result.error.encode())
            try:
                instance.root_call(
                    "proxy_on_http_call_response",
                    result.token,
                    len(result.headers),
                    len(result.body),
                    0,
                )
            except FilterTrapError as exc:
                supervisor = by_name.get(instance.name)
                if supervisor is not None:
                    supervisor.trapped(exc)
                else:
                    log.error("%s", exc)
            finally:
                instance.http_response = None
        wait = IDLE_POLL_S
        for supervisor in self._chain.filters:
            instance = supervisor.live()
            if instance is None:
                continue
            if instance.tick_period_ms <= 0:
                # A filter that stopped its timer must not keep the poll loop spinning.
                self._next_tick.pop(instance, None)
                continue
            due = self._next_tick.get(instance)
            if due is None:
                due = self._next_tick[instance] = now + instance.tick_period_ms
            elif now >= due:
                due = self._next_tick[instance] = now + instance.tick_period_ms
                self._root_call(supervisor, "proxy_on_tick")
            # Only the live instances of the chain now serving count: entries of replaced
            # instances linger in the weak map until they are collected.
            wait = min(wait, max(0.0, (due - now) / 1000))
        if self.env.http.pending:
            wait = min(wait, BUSY_POLL_S)
        return wait

    def _root_call(self, supervisor: FilterSupervisor, name: str, *args: int) -> None:
        instance = supervisor.live()
        if instance is None:
            return
        try:
            instance.root_call(name, *args)
        except FilterTrapError as exc:
            supervisor.trapped(exc)

    @_runs_guest_code
    def close(self) -> None:
        """Finish every chain and stop the epoch tickers."""
        if self._pending is not None:
            self._pending.close()
            self._pending = None
        self._chain.close()
        for chain in self._retired:
            chain.close()
        if self._ticker is not None:
            self._ticker.stop()
