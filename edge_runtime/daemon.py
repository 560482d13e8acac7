"""The daemon: the only place the parts are wired, in data-path order, and stopped in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from edge_runtime.config import Settings
from edge_runtime.devices import (
    Description,
    DescriptionError,
    DeviceRegistry,
    parse_json_description,
)
from edge_runtime.errors import ConfigError, EdgeRuntimeError, ToolError
from edge_runtime.filters.service import FilterService
from edge_runtime.health import Health
from edge_runtime.logs import LEVELS, Forwarder
from edge_runtime.metrics import Metrics, MetricsServer
from edge_runtime.model.runtime import Model, load_model
from edge_runtime.orchestrator.llm import ModelGenerator
from edge_runtime.orchestrator.service import Orchestrator
from edge_runtime.pipeline import Pipeline, PipelineSettings, answer_payload
from edge_runtime.state import StateStore
from edge_runtime.systemd import Notifier
from edge_runtime.transports.coap import CoapTransport
from edge_runtime.transports.mqtt import MqttTransport

log = logging.getLogger("edge_runtime.daemon")

# Filter timers, queue notices and HTTP answers are delivered at most this often.
MIN_FILTER_POLL_S = 0.005
# Asked of systemd before loading the model: a multi-GB graph takes a while to map and check.
MODEL_LOAD_EXTENSION_S = 300.0
# Device names from the registry reach the intent parser this long after a registration.
NAMES_REFRESH_S = 0.5
# Sections a reload cannot change under a running daemon: they need a restart.
RESTART_SECTIONS = (
    "model",
    "runtime",
    "mqtt",
    "coap",
    "metrics",
    "limits",
    "state_dir",
    "filter_host",
    "log",
)

Reload = Callable[[], Settings]


def pipeline_settings(settings: Settings) -> PipelineSettings:
    """The request path's bounds from the config."""
    return PipelineSettings(
        default_route=settings.routes.default,
        timeout_seconds=settings.timeout_seconds,
        max_payload_bytes=settings.limits.max_payload_bytes,
        max_concurrent=settings.limits.max_concurrent,
        max_queue=settings.limits.max_queue,
        max_new_tokens=settings.model.max_new_tokens,
        coalesce_chars=settings.routes.coalesce_chars,
        coalesce_seconds=settings.routes.coalesce_ms / 1000,
    )


async def serve(settings: Settings, *, threads: int, reload: Reload | None = None) -> int:
    """Run until SIGTERM or SIGINT; requests under way are finished first. SIGHUP reloads."""
    notifier = Notifier()
    try:
        return await _Daemon(settings, threads, reload, notifier).run()
    finally:
        notifier.close()


class _Daemon:
    def __init__(self, settings: Settings, threads: int, reload: Reload | None, notifier: Notifier):
        self.settings = settings
        self.threads = threads
        self.reload_settings = reload
        self.notifier = notifier
        self.health = Health()
        self.metrics = Metrics()
        self.stop = asyncio.Event()
        self.reloading: asyncio.Task[None] | None = None
        self.background: set[asyncio.Task[Any]] = set()
        self.names_refresh: asyncio.TimerHandle | None = None
        self.mqtt: MqttTransport | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        settings = self.settings
        async with AsyncExitStack() as stack:
            self._spawn(self.notifier.keep_alive(), "watchdog")
            if settings.metrics.enabled:
                try:
                    server = MetricsServer(
                        self.metrics,
                        self.health.report,
                        settings.metrics.host,
                        settings.metrics.port,
                    )
                except OSError as exc:
                    where = f"{settings.metrics.host}:{settings.metrics.port}"
                    raise ConfigError(
                        f"cannot serve metrics on {where}: {exc.strerror}", key="metrics.port"
                    ) from None
                server.start()
                stack.callback(server.close)
                log.info("metrics on http://%s:%d/metrics", settings.metrics.host, server.port)
            self.notifier.status(f"loading model {settings.model.path}")
            self.notifier.extend_timeout(MODEL_LOAD_EXTENSION_S)
            model = load_model(
                settings.model.path,
                threads=self.threads,
                verify=settings.model.verify,
                context_length=settings.model.context_length,
                context_overflow=settings.model.context_overflow,
                allow_spinning=settings.runtime.allow_spinning,
                optimization=settings.runtime.graph_optimization,
                max_batch=settings.runtime.max_batch,
            )
            stack.callback(model.close)
            await _warm(model)
            self.notifier.status("starting filters")
            filters = FilterService(settings.filter_host)
            filters.load(settings.filters)
            stack.callback(filters.close)
            self.filters = filters
            self.state = StateStore(settings.mqtt.max_state_entries)
            self.generator = ModelGenerator(model)
            orchestrator = Orchestrator.build(
                settings, generator=self.generator, state=self.state, publish=self._command
            )
            devices = DeviceRegistry(settings.state_dir / "devices.db")
            stack.callback(devices.close)
            self.devices = devices
            pipeline = Pipeline(
                pipeline_settings(settings),
                orchestrator=orchestrator,
                filters=filters,
                devices=devices,
                metrics=self.metrics,
            )
            self.pipeline = pipeline
            stack.callback(pipeline.close)
            self._refresh_names()
            stack.push_async_callback(self._close_orchestrator)
            self._spawn(_poll_filters(pipeline), "filter-poll")
            # CoAP binds first: the retained `online` status then means every transport answers.
            if settings.coap.enabled:
                await stack.enter_async_context(
                    CoapTransport(
                        pipeline.handle,
                        answer_payload,
                        host=settings.coap.host,
                        port=settings.coap.port,
                        max_payload_bytes=settings.limits.max_payload_bytes,
                        health=self.health.report,
                        register=self._device_registered,
                    )
                )
            mqtt: MqttTransport | None = None
            if settings.mqtt.enabled:
                mqtt = MqttTransport(
                    settings.mqtt,
                    pipeline.handle,
                    answer_payload,
                    state=self.state,
                    on_device=self._device_birth,
                )
                await stack.enter_async_context(mqtt)
                self._forward_logs(mqtt)
            self.mqtt = mqtt
            self._observe(filters, mqtt)
            summary = (
                f"serving: model {settings.model.path.name}, {len(settings.filters)} filter(s), "
                f"mqtt {_mqtt_label(settings)}, coap {'on' if settings.coap.enabled else 'off'}"
            )
            self.health.ready = True
            self.notifier.ready(summary)
            log.info("%s", summary)
            await self.stop.wait()
            await self._drain()
            # Before the parts they use are closed (the exit stack, in reverse order).
            for task in list(self.background):
                await _cancel(task)
        return 0

    # Lifecycle ------------------------------------------------------------

    async def _drain(self) -> None:
        """Stop taking requests, let those under way finish within the grace period."""
        self.notifier.stopping()
        self.health.stopping = True
        log.info("stopping: finishing requests under way")
        if self.reloading is not None:
            await _cancel(self.reloading)
        self.pipeline.draining = True
        if self.mqtt is not None:
            # Other boxes in the share group take new requests from now on.
            await self.mqtt.stop_taking_requests()
        grace = self.settings.limits.shutdown_grace_s
        deadline = time.monotonic() + grace
        while self.pipeline.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.pipeline.busy:
            log.warning("%d request(s) still under way after %.0f s", self.pipeline.busy, grace)

    def _on_hup(self) -> None:
        if self.reloading is not None and not self.reloading.done():
            log.info("a reload is already under way")
            return
        self.reloading = asyncio.get_running_loop().create_task(self._reload(), name="reload")

    async def _reload(self) -> None:
        """Re-read the config, build the new filter chain and orchestrator, swap both in."""
        self.notifier.reloading()
        try:
            if self.reload_settings is None:
                raise EdgeRuntimeError("no configuration file to reload")
            read = await asyncio.to_thread(self.reload_settings)
            # Sections only a restart can change keep their running values from here on.
            kept = {s: getattr(self.settings, s) for s in RESTART_SECTIONS}
            new = read.model_copy(update=kept)
            # Templates, tools and databases take a while: off the event loop.
            orchestrator = await asyncio.to_thread(
                Orchestrator.build,
                new,
                generator=self.generator,
                state=self.state,
                publish=self._command,
            )
        except (EdgeRuntimeError, OSError) as exc:
            self._reload_failed(f"configuration: {exc}")
            return
        built = await asyncio.to_thread(self.filters.reload, new.filters)
        if not built:
            await orchestrator.close()
            self._reload_failed("filter chain: see the log above")
            return
        old = self.pipeline.orchestrator
        orchestrator.set_devices(self.devices.names())
        if old is not None:
            orchestrator.adopt(old)
            # Requests under way finish on the orchestrator they started with.
            self._spawn(_close_later(old, self.settings.timeout_seconds), "close-orchestrator")
        self.pipeline.orchestrator = orchestrator
        stale = [s for s in RESTART_SECTIONS if _section(read, s) != _section(self.settings, s)]
        if stale:
            log.warning("reloaded; changes to %s need a restart to apply", ", ".join(stale))
        self.settings = new
        # The route default, the deadline and the stream coalescing apply to the next request.
        self.pipeline.settings = pipeline_settings(new)
        self.metrics.reloads.labels("ok").inc()
        log.info(
            "configuration reloaded: %d filter(s), %d tool(s)", len(new.filters), len(new.tools)
        )
        self.notifier.ready("serving (reloaded)")

    def _reload_failed(self, reason: str) -> None:
        log.error("reload failed, the running configuration keeps serving: %s", reason)
        self.metrics.reloads.labels("failed").inc()
        self.notifier.ready(f"serving (reload failed: {reason})"[:200])

    async def _close_orchestrator(self) -> None:
        if self.pipeline.orchestrator is not None:
            await self.pipeline.orchestrator.close()

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # Devices ----------------------------------------------------------------

    def _device_birth(self, device_id: str, payload: bytes) -> None:
        if not payload:
            # The retained birth message was cleared: the device is gone.
            self.devices.forget(device_id)
            self._device_names()
            return
        try:
            found = parse_json_description(payload)
        except DescriptionError as exc:
            log.warning("device %s: ignored its birth message: %s", device_id[:128], exc)
            return
        registered = self.devices.register(
            device_id,
            found.kind,
            found.capabilities,
            source="mqtt",
            online=found.online,
            names=found.names,
        )
        if not registered:
            log.debug("device %s: not registered", device_id[:128])
        self._device_names()

    def _device_registered(self, device_id: str, found: Description) -> None:
        registered = self.devices.register(
            device_id,
            found.kind,
            found.capabilities,
            source="coap",
            online=found.online,
            names=found.names,
        )
        if not registered:
            log.warning("device %s: not registered", device_id)
        self._device_names()

    def _device_names(self) -> None:
        """Devices' names become the intent templates' "name" slot list, soon (a burst of
        birth messages after a broker restart rebuilds it once, not once per device)."""
        if self.names_refresh is None:
            loop = asyncio.get_running_loop()
            self.names_refresh = loop.call_later(NAMES_REFRESH_S, self._refresh_names)

    async def _command(self, topic: str, payload: bytes, retain: bool) -> None:
        """What mqtt_publish tools publish through: the broker connection, while there is one."""
        if self.mqtt is None:
            raise ToolError("MQTT is off")
        try:
            await self.mqtt.command(topic, payload, retain)
        except EdgeRuntimeError as exc:
            raise ToolError(str(exc)) from None

    def _refresh_names(self) -> None:
        self.names_refresh = None
        if self.pipeline.orchestrator is not None:
            self.pipeline.orchestrator.set_devices(self.devices.names())

    # Observability ------------------------------------------------------------

    def _observe(self, filters: FilterService, mqtt: MqttTransport | None) -> None:
        metrics = self.metrics
        for collector in filters.collectors():
            metrics.add(collector)

        def cache() -> list[tuple[tuple[str, ...], float]]:
            orch = self.pipeline.orchestrator
            found = orch.cache if orch is not None else None
            if found is None:
                return []
            return [(("hit",), found.hits), (("miss",), found.misses)]

        metrics.callback(
            "edge_runtime_cache_lookups", "response cache lookups", "counter", ["result"], cache
        )

        def tools() -> list[tuple[tuple[str, ...], float]]:
            orch = self.pipeline.orchestrator
            if orch is None:
                return []
            return [((tool, outcome), n) for (tool, outcome), n in orch.tools.outcomes.items()]

        metrics.callback(
            "edge_runtime_tool_calls",
            "tool calls by tool and outcome",
            "counter",
            ["tool", "outcome"],
            tools,
        )
        metrics.callback(
            "edge_runtime_requests_in_flight",
            "requests being answered",
            "gauge",
            [],
            lambda: [((), self.pipeline.busy)],
        )
        metrics.callback(
            "edge_runtime_requests_queued",
            "requests waiting for a free slot",
            "gauge",
            [],
            lambda: [((), self.pipeline.waiting)],
        )
        metrics.callback(
            "edge_runtime_devices",
            "registered devices",
            "gauge",
            [],
            lambda: [((), len(self.devices))],
        )
        if mqtt is not None:
            metrics.callback(
                "edge_runtime_mqtt_connected",
                "1 while connected to the broker",
                "gauge",
                [],
                lambda: [((), 1.0 if mqtt.connected else 0.0)],
            )
            metrics.callback(
                "edge_runtime_mqtt_reconnects",
                "reconnections to the broker",
                "counter",
                [],
                lambda: [((), mqtt.reconnects)],
            )
            metrics.callback(
                "edge_runtime_mqtt_expired",
                "requests dropped: their message expiry passed",
                "counter",
                [],
                lambda: [((), mqtt.expired)],
            )

            def broker() -> str | None:
                return None if mqtt.connected else "MQTT broker unreachable"

            self.health.checks.append(broker)

        def failed_filters() -> str | None:
            failed = [f.name for f in filters.chain_filters() if f.failed]
            return f"filter(s) failed: {', '.join(failed)}" if failed else None

        self.health.checks.append(failed_filters)

    def _forward_logs(self, mqtt: MqttTransport) -> None:
        level = self.settings.log.mqtt_level
        if level == "off":
            return
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def wake_up() -> None:
            loop.call_soon_threadsafe(wake.set)

        forwarder = Forwarder(LEVELS[level], wake=wake_up)
        logging.getLogger().addHandler(forwarder)
        topic = f"{self.settings.mqtt.prefix}/logs/{mqtt.settings.node_id}"

        async def publish() -> None:
            try:
                while True:
                    await wake.wait()
                    wake.clear()
                    for record in forwarder.drain():
                        mqtt.publish(topic, json.dumps(record, ensure_ascii=False).encode())
            finally:
                logging.getLogger().removeHandler(forwarder)

        self._spawn(publish(), "log-forward")


async def _warm(model: Model) -> None:
    """One token through the graph, so READY means the first device is not the one who waits."""
    loop = asyncio.get_running_loop()
    params = model.default_params(max_new_tokens=1, do_sample=False)
    generation = model.chat([{"role": "user", "content": "ready?"}], params)
    await loop.run_in_executor(model.executor, generation.run)


async def _close_later(orchestrator: Orchestrator, delay: float) -> None:
    await asyncio.sleep(delay)
    await orchestrator.close()


def _section(settings: Settings, name: str) -> Any:
    value = getattr(settings, name)
    return value.model_dump() if hasattr(value, "model_dump") else value


def _mqtt_label(settings: Settings) -> str:
    return f"{settings.mqtt.host}:{settings.mqtt.port}" if settings.mqtt.enabled else "off"


async def _poll_filters(pipeline: Pipeline) -> None:
    """Deliver filter timers and HTTP answers when due; sleep when nothing is."""
    while True:
        wait = await pipeline.poll_filters()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait, MIN_FILTER_POLL_S)):
                await pipeline.poll_soon.wait()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
