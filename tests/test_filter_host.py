"""The Proxy-Wasm host against hostile and minimal hand-written modules."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from edge_runtime.config import FilterHostSettings, FilterSettings
from edge_runtime.errors import FilterLoadError
from edge_runtime.filters.service import FilterService
from edge_runtime.filters.stream import HttpStream

WAT = Path(__file__).parent / "filters"


@pytest.fixture
def wasm_dir(tmp_path: Path) -> Path:
    for source in WAT.glob("*.wat"):
        (tmp_path / f"{source.stem}.wasm").write_bytes(wasmtime.wat2wasm(source.read_text()))
    return tmp_path


@pytest.fixture(params=[True, False], ids=["fast", "public"])
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FilterService]:
    host = FilterHostSettings(
        cache_dir=tmp_path / "cache", max_restarts=3, restart_window_s=60, fast_path=request.param
    )
    svc = FilterService(host, collect_logs=True)
    yield svc
    # The path under test is the one that ran.
    for supervisor in svc.chain.filters:
        if supervisor._instance is not None:
            assert supervisor._instance.fast is request.param
    svc.close()


def spec(wasm_dir: Path, name: str, **kw: Any) -> FilterSettings:
    # A loose deadline unless the test is about deadlines: these machines are noisy.
    kw.setdefault("deadline_ms", 500)
    return FilterSettings(name=kw.pop("as_name", name), module=wasm_dir / f"{name}.wasm", **kw)


def request(path: str = "edge/req/sensor-1", body: bytes = b'{"prompt": "hi"}') -> HttpStream:
    return HttpStream(
        request_headers=[(b":method", b"PUBLISH"), (b":path", path.encode())],
        request_body=bytearray(body),
        properties={"device.id": b"sensor-1"},
    )


def run(svc: FilterService, stream: HttpStream | None = None) -> HttpStream:
    stream = stream or request()
    chain, exchange = svc.begin(stream)
    chain.response(exchange)
    svc.end(chain, exchange)
    return stream


def test_minimal_filter_adds_a_header_and_logs(service: FilterService, wasm_dir: Path) -> None:
    service.load([spec(wasm_dir, "basic")])
    stream = run(service)
    assert (b"x-seen", b"1") in stream.request_headers
    assert stream.local_response is None
    instance = service.chain.filters[0].instance()
    assert (2, "hello from wat") in (instance.logs or [])


def test_log_level_filters_before_decoding(service: FilterService, wasm_dir: Path) -> None:
    service.load([spec(wasm_dir, "basic", log_level="warn")])
    run(service)
    assert service.chain.filters[0].instance().logs == []


@pytest.mark.parametrize(
    ("module", "kind"),
    [("loop", "deadline"), ("grow", "trap"), ("unreachable", "trap"), ("exit", "exit")],
)
def test_a_crashing_filter_fails_closed_and_the_next_request_is_served(
    service: FilterService, wasm_dir: Path, module: str, kind: str
) -> None:
    service.load([spec(wasm_dir, module, memory_max_mb=4, deadline_ms=20), spec(wasm_dir, "basic")])
    first = run(service)
    assert first.local_response is not None
    assert first.local_response.status == 500
    assert first.local_response.filter == module
    assert b"x-seen" not in dict(first.request_headers)
    supervisor = service.chain.filters[0]
    assert supervisor.stats.traps == 1
    assert supervisor.stats.last_trap == kind
    # A fresh instance serves the next request (and crashes the same way).
    second = run(service)
    assert second.local_response is not None
    assert supervisor.stats.restarts == 1


def test_fail_open_skips_the_filter(service: FilterService, wasm_dir: Path) -> None:
    service.load([spec(wasm_dir, "unreachable", fail="open"), spec(wasm_dir, "basic")])
    stream = run(service)
    assert stream.local_response is None
    assert (b"x-seen", b"1") in stream.request_headers
    assert service.chain.filters[0].stats.skipped == 1


def test_a_filter_that_keeps_crashing_is_marked_failed(
    service: FilterService, wasm_dir: Path
) -> None:
    service.load([spec(wasm_dir, "unreachable"), spec(wasm_dir, "basic")])
    for _ in range(6):
        stream = run(service)
        assert stream.local_response is not None
    supervisor = service.chain.filters[0]
    assert supervisor.failed is not None
    assert supervisor.stats.restarts == 3
    assert stream.local_response.status == 503


def test_bad_pointers_get_error_statuses(service: FilterService, wasm_dir: Path) -> None:
    service.load([spec(wasm_dir, "bad_pointers"), spec(wasm_dir, "basic")])
    stream = request()
    before = list(stream.request_headers)
    run(service, stream)
    instance = service.chain.filters[0].instance()
    count = instance.call("calls")
    assert count and count > 20
    statuses = struct.unpack(f"<{count}i", instance.memory.read(256, 4 * count))
    # INVALID_MEMORY_ACCESS from the proxy_* calls, EINVAL (28) from WASI; NOT_FOUND where
    # the call fails on its first argument (a metric that was never defined).
    assert set(statuses) <= {1, 6, 28}, list(enumerate(statuses))
    assert statuses.count(6) >= len(statuses) - 6
    assert statuses.count(28) == 5
    # Nothing was half-applied and the request went on to the next filter.
    assert stream.local_response is None
    assert stream.request_headers == [*before, (b"x-seen", b"1")]


@pytest.mark.parametrize(("config", "status"), [("zero", 6), ("out-of-range", 6)])
def test_allocator_returning_garbage(
    service: FilterService, wasm_dir: Path, config: str, status: int
) -> None:
    service.load([spec(wasm_dir, "bad_allocator", config=config)])
    stream = run(service)
    assert stream.local_response is None
    instance = service.chain.filters[0].instance()
    assert struct.unpack("<i", instance.memory.read(0, 4))[0] == status


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("no_version", "exports no proxy_abi_version_"),
        ("no_allocator", "exports neither proxy_on_memory_allocate nor malloc"),
        ("unknown_import", "imports env.proxy_set_buffer_status, which this Proxy-Wasm host"),
        ("wrong_type_import", "imports env.proxy_log with type"),
        ("start_trap", "cannot (instantiate|load)"),
        ("wrong_callback_type", "exports proxy_on_request_headers with type"),
    ],
)
def test_modules_that_cannot_load(
    service: FilterService, wasm_dir: Path, module: str, message: str
) -> None:
    with pytest.raises(FilterLoadError, match=message):
        service.load([spec(wasm_dir, module)])


def test_not_a_module(service: FilterService, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"\0asm garbage")
    with pytest.raises(FilterLoadError, match="not a valid module"):
        service.load([FilterSettings(name="bogus", module=bogus)])


def test_reload_keeps_the_old_chain_when_the_new_one_fails(
    service: FilterService, wasm_dir: Path
) -> None:
    service.load([spec(wasm_dir, "basic")])
    assert not service.reload([spec(wasm_dir, "no_version")])
    assert (b"x-seen", b"1") in run(service).request_headers
    assert service.reload([])
    assert b"x-seen" not in dict(run(service).request_headers)


def test_in_flight_request_finishes_on_its_chain(service: FilterService, wasm_dir: Path) -> None:
    service.load([spec(wasm_dir, "basic")])
    stream = request()
    chain, exchange = service.begin(stream)
    service.reload([])
    # The old chain is still open for the request that started on it.
    chain.response(exchange)
    service.end(chain, exchange)
    assert (b"x-seen", b"1") in stream.request_headers
    # The swap happens on the chain's thread; the old chain closes once nothing runs on it.
    assert service.chain is not chain
    assert all(s._instance is None for s in chain.filters)


def test_compiled_modules_are_cached_on_disk(tmp_path: Path, wasm_dir: Path) -> None:
    host = FilterHostSettings(cache_dir=tmp_path / "cache")
    first = FilterService(host)
    first.load([spec(wasm_dir, "basic")])
    first.close()
    cached = list((tmp_path / "cache").glob("*.cwasm"))
    assert len(cached) == 1
    second = FilterService(host)
    second.load([spec(wasm_dir, "basic")])
    assert (b"x-seen", b"1") in run(second).request_headers
    second.close()
    # A corrupt cache entry is discarded and rebuilt, not fatal.
    cached[0].write_bytes(b"junk")
    third = FilterService(host)
    third.load([spec(wasm_dir, "basic")])
    third.close()


def test_ticks_queues_and_metrics(service: FilterService, wasm_dir: Path) -> None:
    service.load([spec(wasm_dir, "ticker")])
    metrics = service.env.metrics
    service.poll(now_ms=0)
    service.poll(now_ms=5)
    assert metrics.snapshot("ticker")["ticks"] == 0
    service.poll(now_ms=10)
    service.poll(now_ms=25)
    assert metrics.snapshot("ticker")["ticks"] == 2
    run(service)
    run(service)
    assert metrics.snapshot("ticker")["jobs_seen"] == 0
    service.poll(now_ms=26)
    assert metrics.snapshot("ticker")["jobs_seen"] == 2


def test_filter_metrics_reach_prometheus(service: FilterService, wasm_dir: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    for collector in service.collectors():
        registry.register(collector)
    service.load([spec(wasm_dir, "ticker"), spec(wasm_dir, "unreachable", fail="open")])
    service.poll(now_ms=0)
    service.poll(now_ms=10)
    run(service)
    text = generate_latest(registry).decode()
    assert 'edge_runtime_filter_ticks_total{filter="ticker"} 1.0' in text
    assert 'edge_runtime_filter_traps_total{filter="unreachable"} 1.0' in text
    assert 'edge_runtime_filter_skipped_total{filter="unreachable"} 1.0' in text
    assert 'edge_runtime_filter_failed{filter="ticker"} 0.0' in text


def test_reload_under_traffic_loses_no_request(service: FilterService, wasm_dir: Path) -> None:
    import threading

    service.load([spec(wasm_dir, "basic")])
    outcomes: list[bool] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set() or len(outcomes) < 50:
            stream = run(service)
            outcomes.append(
                stream.local_response is None and b"x-seen" in dict(stream.request_headers)
            )

    worker = threading.Thread(target=traffic)
    worker.start()
    for index in range(8):
        assert service.reload([spec(wasm_dir, "basic", as_name=f"basic-{index}")])
    stop.set()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert len(outcomes) >= 50
    assert all(outcomes)


@pytest.fixture
def upstream() -> Iterator[str]:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"pong": true}' if self.path == "/ping" else b"no"
            self.send_response(200 if self.path == "/ping" else 404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def with_upstream(tmp_path: Path, upstream: str) -> Iterator[FilterService]:
    host = FilterHostSettings(cache_dir=tmp_path / "cache", upstreams={"auth": upstream})
    service = FilterService(host)
    yield service
    service.close()


def test_http_call_reaches_a_declared_upstream(
    with_upstream: FilterService, wasm_dir: Path
) -> None:
    import time

    service = with_upstream
    service.load([spec(wasm_dir, "http_call", config="x")])
    run(service)
    instance = service.chain.filters[0].instance()
    assert struct.unpack("<i", instance.memory.read(700, 4))[0] == 0
    deadline = time.monotonic() + 10
    while service.env.metrics.snapshot("http_call").get("responses", 0) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
        service.poll()
    assert service.env.metrics.snapshot("http_call")["body_bytes"] == len(b'{"pong": true}')
    assert struct.unpack("<I", instance.memory.read(720, 4))[0] == 200


def test_http_call_to_an_undeclared_upstream_is_refused(
    service: FilterService, wasm_dir: Path
) -> None:
    service.load([spec(wasm_dir, "http_call", config="undeclared")])
    stream = run(service)
    assert stream.local_response is None
    instance = service.chain.filters[0].instance()
    assert struct.unpack("<i", instance.memory.read(700, 4))[0] == 2  # BAD_ARGUMENT


def test_paused_request_resumes_when_its_http_call_answers(
    with_upstream: FilterService, wasm_dir: Path
) -> None:
    service = with_upstream
    service.load([spec(wasm_dir, "pauser", config="go"), spec(wasm_dir, "basic")])
    chain, exchange = service.begin(request())
    # Held by the first filter: the second has not seen the request yet.
    assert exchange.paused_at == 0
    assert b"x-seen" not in dict(exchange.stream.request_headers)
    service.end(chain, exchange)
    answered: list[bool] = []
    stream = service.run(request(), respond=lambda s: answered.append(True))
    assert stream.local_response is None
    assert answered == [True]
    headers = dict(stream.request_headers)
    assert headers[b"x-auth"] == b"ok"
    assert headers[b"x-seen"] == b"1"


def test_a_request_held_too_long_gets_the_fail_policy(
    with_upstream: FilterService, wasm_dir: Path
) -> None:
    service = with_upstream
    service.load([spec(wasm_dir, "pauser", config="hold"), spec(wasm_dir, "basic")])
    stream = service.run(request(), pause_timeout_s=0.2)
    assert stream.local_response is not None
    assert stream.local_response.status == 504
    assert b"x-seen" not in dict(stream.request_headers)
    service.load([spec(wasm_dir, "pauser", config="hold", fail="open"), spec(wasm_dir, "basic")])
    skipped = service.run(request(), pause_timeout_s=0.2)
    assert skipped.local_response is None
    assert dict(skipped.request_headers)[b"x-seen"] == b"1"


def test_fuel_stops_a_loop_before_its_deadline(service: FilterService, wasm_dir: Path) -> None:
    service.load(
        [spec(wasm_dir, "loop", fuel=200_000, deadline_ms=10_000), spec(wasm_dir, "basic")]
    )
    stream = run(service)
    assert stream.local_response is not None
    assert stream.local_response.status == 500
    assert service.chain.filters[0].stats.last_trap == "fuel"
    # The filter without fuel in the same chain runs on its own engine, unmetered.
    assert service.chain.filters[1].spec.fuel == 0


def test_a_leaking_filter_is_recycled_before_it_runs_out(
    service: FilterService, wasm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.filters import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "RECYCLE_CHECK_EVERY", 1)
    # 1 MiB is 16 pages: without recycling the 16th request would trap.
    service.load([spec(wasm_dir, "leaky", memory_max_mb=1)])
    for _ in range(60):
        assert run(service).local_response is None
    stats = service.chain.filters[0].stats
    assert stats.traps == 0
    assert stats.recycled >= 3


def test_abi_v010_module_with_its_own_arity(service: FilterService, wasm_dir: Path) -> None:
    service.load([spec(wasm_dir, "v010")])
    stream = run(service)
    assert (b"x-v010", b"1") in stream.request_headers
    assert service.chain.filters[0].instance().version.name == "V0_1_0"


def test_a_local_answer_skips_the_rest_of_the_phase(service: FilterService, wasm_dir: Path) -> None:
    service.load([spec(wasm_dir, "answer"), spec(wasm_dir, "basic")])
    for _ in range(3):
        stream = run(service)
        assert stream.local_response is not None
        assert (stream.local_response.status, stream.local_response.body) == (403, b"denied")
    assert service.chain.filters[0].stats.traps == 0


def test_metric_definitions_that_would_clash_are_refused() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from edge_runtime.filters.abi import MetricType, WasmStatus
    from edge_runtime.filters.metrics import FilterMetrics

    metrics = FilterMetrics()
    status, first = metrics.define("a", MetricType.COUNTER, "hits")
    assert status == WasmStatus.OK
    assert metrics.define("b", MetricType.COUNTER, "hits")[0] == WasmStatus.OK
    assert metrics.define("a", MetricType.COUNTER, "hits") == (WasmStatus.OK, first)
    assert metrics.define("c", MetricType.GAUGE, "hits")[0] == WasmStatus.BAD_ARGUMENT
    assert metrics.define("c", MetricType.COUNTER, "hi-ts")[0] == WasmStatus.OK
    assert metrics.define("c", MetricType.COUNTER, "hi_ts")[0] == WasmStatus.BAD_ARGUMENT
    assert metrics.define("c", MetricType.COUNTER, "traps")[0] == WasmStatus.BAD_ARGUMENT
    assert metrics.define("c", 7, "x")[0] == WasmStatus.BAD_ARGUMENT
    registry = CollectorRegistry()
    registry.register(metrics)
    assert "edge_runtime_filter_hits_total" in generate_latest(registry).decode()


def test_shared_data_cas_and_eviction() -> None:
    from edge_runtime.filters.abi import WasmStatus
    from edge_runtime.filters.shared import SharedData

    data = SharedData(max_keys=3)
    assert data.set(b"a", b"1", 0) == WasmStatus.OK
    value, cas = data.get(b"a") or (b"", 0)
    assert (value, cas) == (b"1", 1)
    assert data.set(b"a", b"2", cas + 5) == WasmStatus.CAS_MISMATCH
    assert data.set(b"a", b"2", cas) == WasmStatus.OK
    assert data.set(b"new", b"x", 7) == WasmStatus.CAS_MISMATCH
    for key in (b"b", b"c"):
        assert data.set(key, b"v", 0) == WasmStatus.OK
    data.get(b"a")  # a is now the most recently used
    assert data.set(b"d", b"v", 0) == WasmStatus.OK
    assert data.get(b"b") is None
    assert data.get(b"a") is not None


def test_a_trap_inside_a_nested_allocation_kills_only_the_instance(
    service: FilterService, wasm_dir: Path
) -> None:
    service.load([spec(wasm_dir, "reentrant", fail="open"), spec(wasm_dir, "basic")])
    for _ in range(20):
        stream = run(service)
        assert stream.local_response is None
        assert (b"x-seen", b"1") in stream.request_headers
    assert service.chain.filters[0].stats.traps >= 1


def test_the_body_cap_holds_against_oversized_replacements(
    service: FilterService, wasm_dir: Path
) -> None:
    from edge_runtime.filters.hostcalls import MAX_BODY_BYTES

    service.load([spec(wasm_dir, "body_flood", deadline_ms=5000)])
    stream = run(service)
    assert len(stream.request_body) <= MAX_BODY_BYTES


def test_poll_says_when_it_is_next_needed(service: FilterService, wasm_dir: Path) -> None:
    from edge_runtime.filters.service import IDLE_POLL_S

    service.load([spec(wasm_dir, "basic")])
    # Nothing to deliver: the poll loop may sleep.
    assert service.poll(now_ms=0) == IDLE_POLL_S
    service.reload([spec(wasm_dir, "ticker")])
    service.poll(now_ms=0)
    assert service.poll(now_ms=4) == pytest.approx(0.006)
    # A reload replaces the instance: the old one's timer must not keep the loop spinning.
    service.reload([spec(wasm_dir, "basic")])
    service.poll(now_ms=100)
    assert service.poll(now_ms=200) == IDLE_POLL_S


def test_closing_a_chain_runs_under_the_deadline(service: FilterService, wasm_dir: Path) -> None:
    import threading

    service.load([spec(wasm_dir, "done_loop", deadline_ms=50)])
    service.reload([spec(wasm_dir, "basic")])
    finished = threading.Event()

    def swap() -> None:
        # The swap retires the old chain: its on_done loops and must trap at its deadline.
        assert service.chain.filters[0].name == "basic"
        finished.set()

    threading.Thread(target=swap, daemon=True).start()
    assert finished.wait(timeout=30), "closing the old chain hung"


def test_the_chain_version_follows_config_file_contents(
    service: FilterService, wasm_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "basic.json"
    config.write_text('{"a": 1}')
    first = service.build([spec(wasm_dir, "basic", config_file=config)])
    config.write_text('{"a": 2}')
    second = service.build([spec(wasm_dir, "basic", config_file=config)])
    again = service.build([spec(wasm_dir, "basic", config_file=config)])
    for chain in (first, second, again):
        chain.close()
    # Cached answers are keyed on this: a changed config file must change it.
    assert first.version != second.version
    assert second.version == again.version
