"""Prometheus metrics of one daemon, and the local HTTP endpoint that serves them and /health."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_runtime.messages import Response

log = logging.getLogger("edge_runtime.metrics")
# The *_created series double every family for a timestamp nobody on a box needs.
disable_created_metrics()  # type: ignore[no-untyped-call]

# (label values, value) pairs a callback reports; read at scrape time.
Samples = Iterable[tuple[tuple[str, ...], float]]
HealthReport = Callable[[], dict[str, Any]]
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Callback(Collector):
    """A counter or gauge family whose samples a function reports when Prometheus scrapes."""

    def __init__(
        self,
        name: str,
        documentation: str,
        kind: str,
        labels: Iterable[str],
        samples: Callable[[], Samples],
    ):
        self._name = name
        self._doc = documentation
        self._kind = kind
        self._labels = list(labels)
        self._samples = samples

    def collect(self) -> Iterator[Metric]:
        """The family, with the samples as they are now."""
        family: CounterMetricFamily | GaugeMetricFamily
        if self._kind == "counter":
            family = CounterMetricFamily(self._name, self._doc, labels=self._labels)
        else:
            family = GaugeMetricFamily(self._name, self._doc, labels=self._labels)
        for labels, value in self._samples():
            family.add_metric(list(labels), value)
        yield family


class Metrics:
    """The daemon's own metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edge_runtime_requests",
            "requests answered, by transport, route and status",
            ["transport", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "edge_runtime_request_duration_seconds",
            "time from a request's arrival to its answer",
            ["transport", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "edge_runtime_time_to_first_token_seconds",
            "time from the prompt to the first generated token",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.decode_rate = Histogram(
            "edge_runtime_decode_tokens_per_second",
            "decode speed of each generation",
            buckets=(5, 10, 25, 50, 100, 200, 400, 800, 1600),
            registry=r,
        )
        self.tokens = Counter(
            "edge_runtime_tokens_generated", "tokens the model generated", registry=r
        )
        self.filter_phase = Histogram(
            "edge_runtime_filter_phase_seconds",
            "time the filter chain took per request, by phase",
            ["phase"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=r,
        )
        self.reloads = Counter(
            "edge_runtime_reloads", "configuration reloads, by outcome", ["outcome"], registry=r
        )

    def add(self, collector: Collector) -> None:
        """Register a collector (filters' metrics, callbacks)."""
        self.registry.register(collector)

    def callback(
        self,
        name: str,
        documentation: str,
        kind: str,
        labels: Iterable[str],
        samples: Callable[[], Samples],
    ) -> None:
        """Register a family read from ``samples`` at each scrape."""
        self.add(Callback(name, documentation, kind, labels, samples))

    def observe(self, transport: str, response: Response, seconds: float) -> None:
        """Count one answered request, and its generation figures if it had any."""
        route = response.route or "-"
        self.requests.labels(transport, route, str(int(response.status))).inc()
        self.latency.labels(transport, route).observe(seconds)
        usage, timing = response.usage, response.timing
        if usage is not None and usage.completion_tokens:
            self.tokens.inc(usage.completion_tokens)
        if timing is not None and usage is not None and usage.completion_tokens:
            self.time_to_first_token.observe(timing.time_to_first_token_s)
            rate = timing.decode_tokens_per_s(usage.completion_tokens)
            if rate > 0:
                self.decode_rate.observe(rate)

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))


class _QuietHandler(WSGIRequestHandler):
    # A client that connects and says nothing is dropped, not waited on.
    timeout = 5

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not news."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # One slow client never holds up the next scrape, nor the daemon's stop.
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away is not worth a traceback on stderr."""
        log.debug("metrics client %s dropped", client_address, exc_info=True)


class MetricsServer:
    """GET /metrics (Prometheus text) and GET /health (JSON) on a local port, in a thread."""

    def __init__(self, metrics: Metrics, health: HealthReport, host: str, port: int):
        self._metrics = metrics
        self._health = health
        self._server: WSGIServer = make_server(
            host, port, self._app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = self._metrics.render()
            start("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
            return [body]
        if path == "/health":
            report = self._health()
            status = "503 Service Unavailable" if report["status"] == "not_ready" else "200 OK"
            start(status, [("Content-Type", "application/json")])
            return [json.dumps(report).encode()]
        start("404 Not Found", [("Content-Type", "text/plain")])
        return [b"/metrics or /health\n"]
