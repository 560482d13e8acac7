"""The daemon: the only place the parts are wired, in data-path order, and stopped in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from contextlib import AsyncExitStack

from edge_runtime.config import Settings
from edge_runtime.filters.service import FilterService
from edge_runtime.model.runtime import load_model
from edge_runtime.orchestrator.llm import ModelGenerator
from edge_runtime.orchestrator.service import Orchestrator
from edge_runtime.pipeline import Pipeline, PipelineSettings, answer_payload
from edge_runtime.state import StateStore
from edge_runtime.transports.coap import CoapTransport
from edge_runtime.transports.mqtt import MqttTransport

log = logging.getLogger("edge_runtime.daemon")

# How often filter timers, queue notices and HTTP answers are delivered.
FILTER_POLL_S = 0.02


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


async def serve(settings: Settings, *, threads: int) -> int:
    """Run until SIGTERM or SIGINT; requests under way are finished first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with AsyncExitStack() as stack:
        model = load_model(
            settings.model.path,
            threads=threads,
            verify=settings.model.verify,
            context_length=settings.model.context_length,
            context_overflow=settings.model.context_overflow,
            allow_spinning=settings.runtime.allow_spinning,
            optimization=settings.runtime.graph_optimization,
        )
        stack.callback(model.close)
        filters = FilterService(settings.filter_host)
        filters.load(settings.filters)
        stack.callback(filters.close)
        state = StateStore(settings.mqtt.max_state_entries)
        orchestrator = Orchestrator.build(settings, generator=ModelGenerator(model), state=state)
        stack.push_async_callback(orchestrator.close)
        pipeline = Pipeline(pipeline_settings(settings), orchestrator=orchestrator, filters=filters)
        stack.callback(pipeline.close)
        poller = asyncio.create_task(_poll_filters(pipeline), name="filter-poll")
        stack.push_async_callback(_cancel, poller)
        if settings.mqtt.enabled:
            await stack.enter_async_context(
                MqttTransport(settings.mqtt, pipeline.handle, answer_payload, state=state)
            )
        if settings.coap.enabled:
            await stack.enter_async_context(
                CoapTransport(
                    pipeline.handle,
                    answer_payload,
                    host=settings.coap.host,
                    port=settings.coap.port,
                    max_payload_bytes=settings.limits.max_payload_bytes,
                )
            )
        log.info(
            "serving: model %s, %d filter(s), mqtt %s",
            settings.model.path,
            len(settings.filters),
            f"{settings.mqtt.host}:{settings.mqtt.port}" if settings.mqtt.enabled else "off",
        )
        await stop.wait()
        log.info("stopping: finishing requests under way")
    return 0


async def _poll_filters(pipeline: Pipeline) -> None:
    while True:
        await pipeline.poll_filters()
        await asyncio.sleep(FILTER_POLL_S)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
