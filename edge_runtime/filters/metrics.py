"""Metrics filters define (proxy_define_metric), exported through a Prometheus registry."""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edge_runtime.filters.abi import MetricType, WasmStatus

PREFIX = "edge_runtime_filter_"
_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
MAX_METRICS = 512
# Names the host exports per filter itself (see ChainStats).
RESERVED = frozenset({"traps", "restarts", "skipped", "recycled", "failed"})


@dataclass
class _Metric:
    filter: str
    name: str
    kind: MetricType
    value: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS) + 1))
    count: int = 0


class FilterMetrics(Collector):
    """Every filter's metrics; ids are stable across instance restarts of the same filter."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self._ids: dict[tuple[str, str, MetricType], int] = {}
        self._kinds: dict[str, tuple[MetricType, str]] = {}
        self._lock = threading.Lock()

    def define(self, filter_name: str, kind: int, name: str) -> tuple[WasmStatus, int]:
        """Id of a metric (the same id when a filter defines it again)."""
        try:
            metric_type = MetricType(kind)
        except ValueError:
            return WasmStatus.BAD_ARGUMENT, 0
        key = (filter_name, name, metric_type)
        exported = _INVALID.sub("_", name)
        with self._lock:
            if key in self._ids:
                return WasmStatus.OK, self._ids[key]
            # One Prometheus family per exported name: a name that another filter (or this
            # one) uses with another kind or spelling, or one of the host's own, is refused
            # here rather than breaking every scrape later.
            if exported in RESERVED or self._kinds.get(exported, (metric_type, name)) != (
                metric_type,
                name,
            ):
                return WasmStatus.BAD_ARGUMENT, 0
            if len(self._metrics) >= MAX_METRICS:
                return WasmStatus.INTERNAL_FAILURE, 0
            self._kinds[exported] = (metric_type, name)
            self._metrics.append(_Metric(filter_name, name, metric_type))
            # Ids start at 1: some SDKs treat 0 as "undefined".
            self._ids[key] = len(self._metrics)
            return WasmStatus.OK, len(self._metrics)

    def _get(self, metric_id: int) -> _Metric | None:
        if 1 <= metric_id <= len(self._metrics):
            return self._metrics[metric_id - 1]
        return None

    def record(self, metric_id: int, value: int) -> WasmStatus:
        """Set a gauge or counter, or observe a histogram value."""
        with self._lock:
            metric = self._get(metric_id)
            if metric is None:
                return WasmStatus.NOT_FOUND
            if metric.kind == MetricType.HISTOGRAM:
                metric.buckets[bisect.bisect_left(_BUCKETS, value)] += 1
                metric.count += 1
            metric.value = value if metric.kind != MetricType.HISTOGRAM else metric.value + value
            return WasmStatus.OK

    def increment(self, metric_id: int, delta: int) -> WasmStatus:
        """Add to a counter or gauge (counters never go down)."""
        with self._lock:
            metric = self._get(metric_id)
            if metric is None:
                return WasmStatus.NOT_FOUND
            if metric.kind == MetricType.HISTOGRAM:
                return WasmStatus.BAD_ARGUMENT
            if metric.kind == MetricType.COUNTER and delta < 0:
                return WasmStatus.BAD_ARGUMENT
            metric.value += delta
            return WasmStatus.OK

    def value(self, metric_id: int) -> int | None:
        """Current value (sum of observations for a histogram)."""
        with self._lock:
            metric = self._get(metric_id)
            return None if metric is None else metric.value

    def snapshot(self, filter_name: str | None = None) -> dict[str, int]:
        """name → value, for `filters run` and tests."""
        with self._lock:
            return {
                m.name: m.value
                for m in self._metrics
                if filter_name is None or m.filter == filter_name
            }

    def collect(self) -> Iterator[Metric]:
        """Prometheus families: one per metric name, labelled by filter."""
        with self._lock:
            metrics = list(self._metrics)
        families: dict[str, Metric] = {}
        for metric in metrics:
            name = PREFIX + _INVALID.sub("_", metric.name)
            if metric.kind == MetricType.COUNTER:
                family = families.setdefault(
                    name, CounterMetricFamily(name, "filter-defined counter", labels=["filter"])
                )
                assert isinstance(family, CounterMetricFamily)
                family.add_metric([metric.filter], metric.value)
            elif metric.kind == MetricType.GAUGE:
                family = families.setdefault(
                    name, GaugeMetricFamily(name, "filter-defined gauge", labels=["filter"])
                )
                assert isinstance(family, GaugeMetricFamily)
                family.add_metric([metric.filter], metric.value)
            else:
                family = families.setdefault(
                    name, HistogramMetricFamily(name, "filter-defined histogram", labels=["filter"])
                )
                assert isinstance(family, HistogramMetricFamily)
                cumulative, buckets = 0, []
                for bound, count in zip((*map(str, _BUCKETS), "+Inf"), metric.buckets, strict=True):
                    cumulative += count
                    buckets.append((bound, float(cumulative)))
                family.add_metric([metric.filter], buckets, float(metric.value))
        yield from families.values()


class SupervisorStats(Protocol):
    """What the stats collector reads from each filter of the live chain."""

    @property
    def name(self) -> str:
        """The filter's name."""
        ...

    @property
    def failed(self) -> str | None:
        """Why the filter was marked failed, if it was."""
        ...

    @property
    def stats(self) -> Any:
        """Counters: traps, restarts, skipped, recycled."""
        ...


class ChainStats(Collector):
    """Traps, restarts, skips, recycles and failed filters of the live chain, for Prometheus."""

    _COUNTERS = (
        ("traps", "callbacks that trapped (deadline, fuel, memory, guest fault)"),
        ("restarts", "instances replaced after a trap"),
        ("skipped", "requests that skipped a failing filter under fail = open"),
        ("recycled", "instances replaced between requests as their memory neared the cap"),
    )

    def __init__(self, filters: Callable[[], Iterable[SupervisorStats]]):
        self._filters = filters

    def collect(self) -> Iterator[Metric]:
        """One family per counter, labelled by filter, and the failed gauge."""
        filters = list(self._filters())
        for field_name, help_text in self._COUNTERS:
            family = CounterMetricFamily(
                f"edge_runtime_filter_{field_name}", help_text, labels=["filter"]
            )
            for supervisor in filters:
                family.add_metric([supervisor.name], getattr(supervisor.stats, field_name))
            yield family
        failed = GaugeMetricFamily(
            "edge_runtime_filter_failed", "1 when the filter is marked failed", labels=["filter"]
        )
        for supervisor in filters:
            failed.add_metric([supervisor.name], 1 if supervisor.failed else 0)
        yield failed
