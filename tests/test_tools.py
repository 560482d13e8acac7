"""The tool gateway: argument schemas, the kinds of tool, allow-lists, timeouts and size caps."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from weather import weather_service

from edge_runtime.config import ToolSettings
from edge_runtime.errors import ToolConfigError
from edge_runtime.orchestrator.tools import ToolGateway
from edge_runtime.state import StateStore


def tool(**fields: Any) -> ToolSettings:
    return ToolSettings.model_validate(fields)


WEATHER = {
    "name": "weather",
    "kind": "http",
    "parameters": {
        "city": {"description": "city"},
        "date": {"enum": ["today", "tomorrow"], "default": "today"},
    },
}


def call(gateway: ToolGateway, name: str, args: dict[str, Any], **kw: Any) -> Any:
    async def main() -> Any:
        try:
            return await gateway.call(name, args, **kw)
        finally:
            await gateway.close()

    return asyncio.run(main())


def test_http_tool_calls_the_real_service() -> None:
    with weather_service() as port:
        spec = tool(**WEATHER, url=f"http://127.0.0.1:{port}/weather?city={{city}}&date={{date}}")
        gateway = ToolGateway.build([spec], http_allow=[f"http://127.0.0.1:{port}/"])
        done = call(gateway, "weather", {"city": "São Paulo & Co", "date": "tomorrow"})
    assert done.ok, done.error
    # Arguments are URL-quoted: the city arrives whole, "&" included.
    assert done.output["city"] == "São Paulo & Co"
    assert done.output["date"] == "tomorrow"
    assert isinstance(done.output["high_c"], int)


def test_defaults_fill_in_and_bad_arguments_never_reach_the_tool() -> None:
    spec = tool(**WEATHER, url="http://127.0.0.1:9/weather?city={city}&date={date}")
    gateway = ToolGateway.build([spec], http_allow=["http://127.0.0.1:9/"])
    weather = gateway.tools["weather"]
    assert weather.validate({"city": "Oslo"}) == {"city": "Oslo", "date": "today"}
    for bad, message in [
        ({}, "city: Field required"),
        ({"city": "Oslo", "date": "next week"}, "date"),
        ({"city": "Oslo", "units": "F"}, "units: Extra inputs"),
        ({"city": "x" * 300}, "city: String should have at most 256"),
        ({"city": ["Oslo"]}, "city: Input should be a valid string"),
    ]:
        done = call(ToolGateway.build([spec], http_allow=["http://127.0.0.1:9/"]), "weather", bad)
        assert not done.ok
        assert message in (done.error or ""), done.error


def test_the_schema_the_model_sees() -> None:
    spec = tool(**WEATHER, description="Forecast", url="http://h/w?c={city}")
    schema = ToolGateway.build([spec], http_allow=["http://h/"]).schemas()[0]
    assert schema["name"] == "weather" and schema["description"] == "Forecast"
    props = schema["parameters"]["properties"]
    assert props["city"]["type"] == "string"
    assert props["date"]["enum"] == ["today", "tomorrow"]
    assert schema["parameters"]["required"] == ["city"]


def test_the_schema_text_is_the_declaration_whatever_the_order_of_options() -> None:
    spec = tool(
        name="dim",
        kind="mqtt_publish",
        topic="lights/{name}/set",
        payload="{level}",
        description="Dim a light",
        parameters={
            "name": {"grounded": True, "max_length": 32, "description": "light"},
            "level": {"type": "integer", "maximum": 100, "minimum": 0},
            "fade": {"type": "number", "required": False},
        },
    )
    schema = ToolGateway.build([spec]).schemas()[0]
    assert json.dumps(schema) == json.dumps(
        {
            "name": "dim",
            "description": "Dim a light",
            "parameters": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "description": "light",
                        "maxLength": 32,
                        "x-grounded": True,
                    },
                    "level": {"type": "integer", "minimum": 0, "maximum": 100},
                    "fade": {"type": "number"},
                },
                "required": ["name", "level"],
                "additionalProperties": False,
            },
        }
    )


def test_tools_kept_to_the_rules_are_not_offered_to_the_model() -> None:
    spec = tool(**WEATHER, url="http://h/w?c={city}", offer_to_model=False)
    gateway = ToolGateway.build([spec], http_allow=["http://h/"])
    assert gateway.schemas() == [] and "weather" in gateway.tools


def test_http_urls_must_stay_under_the_allow_list() -> None:
    with pytest.raises(ToolConfigError, match="http_allow"):
        ToolGateway.build(
            [tool(**WEATHER, url="http://evil.example/w?c={city}")],
            http_allow=["http://127.0.0.1:8081/"],
        )
    # An argument may not choose the host.
    with pytest.raises(ToolConfigError, match="http_allow"):
        ToolGateway.build([tool(**WEATHER, url="http://{city}/w")], http_allow=["http://"])


class _Misbehaving(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/hang"):
            time.sleep(1.5)
        if self.path.startswith("/big"):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(160):  # 10 MiB
                    self.wfile.write(chunk)
            except OSError:
                pass
            return
        if self.path.startswith("/fail"):
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(302)
        self.send_header("location", "http://evil.example/")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def misbehaving() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    # Not daemon threads: server_close() waits for handlers, so no socket outlives the test.
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("hang", "0.5 s"),
        ("big", "answer is over 65536 bytes"),
        ("fail", "answered HTTP 503"),
        ("redirect", "answered HTTP 302"),
    ],
)
def test_http_failures_are_tool_errors(misbehaving: int, path: str, message: str) -> None:
    spec = tool(
        name="t",
        kind="http",
        url=f"http://127.0.0.1:{misbehaving}/{path}",
        timeout_s=0.5,
        max_output_bytes=65536,
    )
    gateway = ToolGateway.build([spec], http_allow=[f"http://127.0.0.1:{misbehaving}/"])
    done = call(gateway, "t", {})
    assert not done.ok
    assert message in (done.error or "")


def test_mqtt_state_reads_the_latest_value() -> None:
    now = [100.0]
    state = StateStore(clock=lambda: now[0])
    spec = tool(
        name="temp",
        kind="mqtt_state",
        topic="sensors/{area}/temperature",
        max_age_s=60,
        parameters={"area": {}},
    )
    gateway = ToolGateway.build([spec], state=state)
    assert "no reading on sensors/kitchen/temperature" in (
        call(gateway, "temp", {"area": "kitchen"}).error or ""
    )
    state.update("sensors/kitchen/temperature", b'{"celsius": 21.5}')
    now[0] += 5
    done = call(ToolGateway.build([spec], state=state), "temp", {"area": "kitchen"})
    assert done.output == {
        "topic": "sensors/kitchen/temperature",
        "value": {"celsius": 21.5},
        "age_s": 5.0,
    }
    now[0] += 120
    stale = call(ToolGateway.build([spec], state=state), "temp", {"area": "kitchen"})
    assert "125 s old" in (stale.error or "")
    # An argument may not reach another topic.
    sneaky = call(ToolGateway.build([spec], state=state), "temp", {"area": "+/../#"})
    assert "may not contain" in (sneaky.error or "")


def test_names_resolve_to_ids_and_the_model_sees_what_it_asked_for() -> None:
    state = StateStore()
    state.update("sensors/living_room/humidity", b"48")
    spec = tool(
        name="sensor_reading",
        kind="mqtt_state",
        topic="sensors/{area}/{sensor}",
        observe={"value": "value"},
        parameters={"area": {"resolve": "areas"}, "sensor": {"enum": ["humidity"]}},
    )
    gateway = ToolGateway.build([spec], state=state)
    gateway.set_names("areas", {"living_room": ["living room", "客厅"]})
    done = call(gateway, "sensor_reading", {"area": "客厅", "sensor": "humidity"})
    assert done.ok, done.error
    assert done.arguments == {"area": "living_room", "sensor": "humidity"}
    # The call's arguments as the user said them, then the fields ``observe`` picks.
    assert json.dumps(gateway.observation(done), ensure_ascii=False) == json.dumps(
        {"area": "客厅", "sensor": "humidity", "value": 48}, ensure_ascii=False
    )
    unknown = call(
        ToolGateway.build([spec], state=state),
        "sensor_reading",
        {"area": "attic", "sensor": "humidity"},
    )
    assert "no reading on sensors/attic/humidity" in (unknown.error or "")
    assert gateway.observation(unknown) == {"error": unknown.error}


Sent = list[tuple[str, bytes, bool]]


def publisher() -> tuple[Sent, Callable[[str, bytes, bool], Awaitable[None]]]:
    """What a publish function was given, and the function."""
    sent: Sent = []

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        sent.append((topic, payload, retain))

    return sent, publish


def set_device(**name: Any) -> ToolSettings:
    return tool(
        name="set_device",
        kind="mqtt_publish",
        topic="devices/{name}/set",
        payload="{state}",
        parameters={"name": {"resolve": "devices", **name}, "state": {"enum": ["on", "off"]}},
    )


def test_mqtt_publish_sends_the_command_and_says_so() -> None:
    sent, publish = publisher()
    spec = set_device()
    gateway = ToolGateway.build([spec], publish=publish)
    gateway.set_names("devices", {"lamp-1": ["desk lamp"]})
    done = call(gateway, "set_device", {"name": "Desk Lamp", "state": "off"})
    assert done.ok and done.output == {"ok": True}
    assert sent == [("devices/lamp-1/set", b"off", False)]
    sneaky = call(
        ToolGateway.build([spec], publish=publish), "set_device", {"name": "#", "state": "on"}
    )
    assert "may not contain" in (sneaky.error or "") and len(sent) == 1
    offline = call(ToolGateway.build([spec]), "set_device", {"name": "x", "state": "on"})
    assert offline.error == "set_device: MQTT is off"


def test_known_only_sends_nothing_to_a_device_nobody_registered() -> None:
    sent, publish = publisher()
    gateway = ToolGateway.build([set_device(known_only=True)], publish=publish)
    gateway.set_names("devices", {"lamp-1": ["desk lamp"]})
    stray = call(gateway, "set_device", {"name": "play some", "state": "on"})
    assert stray.error == "set_device: no device is called 'play some'" and not sent
    known = call(gateway, "set_device", {"name": "desk lamp", "state": "on"})
    assert known.ok and sent == [("devices/lamp-1/set", b"on", False)]
    with pytest.raises(ValueError, match="known_only needs resolve"):
        tool(name="t", kind="mqtt_publish", topic="x/{a}", parameters={"a": {"known_only": True}})


def test_note_tools_keep_the_note_for_the_calling_device() -> None:
    kept: list[tuple[str, str]] = []

    async def keep(device: str, text: str) -> None:
        kept.append((device, text))

    spec = tool(name="add_note", kind="note", parameters={"text": {"max_length": 64}})
    done = call(
        ToolGateway.build([spec], keep_note=keep), "add_note", {"text": "buy milk"}, device="d1"
    )
    assert done.output == {"saved": True} and kept == [("d1", "buy milk")]
    with pytest.raises(ValueError, match="one string parameter"):
        tool(name="bad", kind="note", parameters={"a": {}, "b": {}})


@pytest.fixture
def plants(tmp_path: Path) -> Path:
    path = tmp_path / "plants.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE plants (name TEXT, room TEXT, water_every_days INTEGER)")
        db.executemany(
            "INSERT INTO plants VALUES (?, ?, ?)",
            [("fern", "kitchen", 3), ("cactus", "kitchen", 21), ("ivy", "bedroom", 7)],
        )
    return path


def test_sqlite_runs_its_named_query_read_only(plants: Path) -> None:
    spec = tool(
        name="plants",
        kind="sqlite",
        database=plants,
        max_rows=5,
        query="SELECT name, water_every_days FROM plants WHERE room = :room ORDER BY name",
        parameters={"room": {}},
    )
    done = call(ToolGateway.build([spec]), "plants", {"room": "kitchen"})
    assert done.output == [
        {"name": "cactus", "water_every_days": 21},
        {"name": "fern", "water_every_days": 3},
    ]
    writer = tool(name="w", kind="sqlite", database=plants, query="DELETE FROM plants")
    refused = call(ToolGateway.build([writer]), "w", {})
    assert not refused.ok and "readonly" in (refused.error or "").replace("-", "")
    with sqlite3.connect(plants) as db:
        assert db.execute("SELECT count(*) FROM plants").fetchone()[0] == 3


def test_sqlite_queries_are_checked_when_loaded(plants: Path) -> None:
    with pytest.raises(ToolConfigError, match="undeclared parameters room"):
        ToolGateway.build(
            [
                tool(
                    name="p",
                    kind="sqlite",
                    database=plants,
                    query="SELECT * FROM plants WHERE room = :room",
                )
            ]
        )
    with pytest.raises(ToolConfigError, match="one statement"):
        ToolGateway.build(
            [tool(name="p", kind="sqlite", database=plants, query="SELECT 1; DROP TABLE plants")]
        )


def test_a_runaway_query_stops_at_its_timeout(plants: Path) -> None:
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    )
    spec = tool(name="slow", kind="sqlite", database=plants, query=endless, timeout_s=0.3)
    done = call(ToolGateway.build([spec]), "slow", {})
    assert not done.ok and ("timeout" in (done.error or "") or "0.3 s" in (done.error or ""))


def test_python_tools_by_entry_point_and_by_path() -> None:
    by_name = tool(name="now", kind="python", entry_point="now")
    done = call(ToolGateway.build([by_name]), "now", {})
    assert set(done.output) == {"date", "time", "weekday", "timezone"}
    by_path = tool(
        name="echo", kind="python", entry_point="tool_functions:echo", parameters={"text": {}}
    )
    done = call(ToolGateway.build([by_path]), "echo", {"text": "hi"})
    assert done.output == {"echo": "hi"}
    with pytest.raises(ToolConfigError, match="no entry point 'nope'"):
        ToolGateway.build([tool(name="x", kind="python", entry_point="nope")])
    with pytest.raises(ToolConfigError, match="does not load"):
        ToolGateway.build([tool(name="x", kind="python", entry_point="no_such_module:f")])


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("hangs", "no answer within 0.3 s"),
        ("huge", "over the cap of 4096"),
        ("raises", "RuntimeError: sensor bus is down"),
        ("not_json", "output is not JSON"),
        ("async_hangs", "no answer within 0.3 s"),
    ],
)
def test_misbehaving_python_tools_are_tool_errors(function: str, message: str) -> None:
    spec = tool(
        name="bad",
        kind="python",
        entry_point=f"tool_functions:{function}",
        timeout_s=0.3,
        max_output_bytes=4096,
    )
    done = call(ToolGateway.build([spec]), "bad", {})
    assert not done.ok
    assert message in (done.error or ""), done.error


def test_unknown_tools_and_denials() -> None:
    spec = tool(
        name="echo", kind="python", entry_point="tool_functions:echo", parameters={"text": {}}
    )
    assert "unknown tool 'nope'" in (call(ToolGateway.build([spec]), "nope", {}).error or "")
    seen: list[tuple[str, dict[str, Any]]] = []

    async def guard(name: str, args: Any) -> str | None:
        seen.append((name, dict(args)))
        return "not on weekends"

    done = call(ToolGateway.build([spec]), "echo", {"text": "hi"}, guard=guard)
    assert done.error == "echo: denied: not on weekends"
    assert seen == [("echo", {"text": "hi"})]


def test_dot_segments_cannot_climb_out_of_the_allowed_path() -> None:
    spec = tool(
        name="page", kind="http", url="http://127.0.0.1:9/api/{page}", parameters={"page": {}}
    )
    for value in ("..", ".", " .. "):
        done = call(
            ToolGateway.build([spec], http_allow=["http://127.0.0.1:9/api/"]),
            "page",
            {"page": value},
        )
        assert "may not be" in (done.error or ""), done.error


class _Compressed(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        import gzip

        body = gzip.compress(b"[" + b"0," * 2_000_000 + b"0]")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_compressed_answers_are_refused_not_inflated() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Compressed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        spec = tool(name="z", kind="http", url=f"http://127.0.0.1:{port}/z")
        done = call(ToolGateway.build([spec], http_allow=[f"http://127.0.0.1:{port}/"]), "z", {})
    finally:
        server.shutdown()
        server.server_close()
    assert "gzip-encoded" in (done.error or ""), done.error


def test_a_hung_tool_uses_up_only_its_own_threads() -> None:
    hung = tool(name="hung", kind="python", entry_point="tool_functions:hangs", timeout_s=0.2)
    echo = tool(
        name="echo", kind="python", entry_point="tool_functions:echo", parameters={"text": {}}
    )
    gateway = ToolGateway.build([hung, echo])

    async def main() -> list[Any]:
        try:
            results = [await gateway.call("hung", {}) for _ in range(3)]
            results.append(await gateway.call("echo", {"text": "still here"}))
            return results
        finally:
            await gateway.close()

    first, second, third, echoed = asyncio.run(main())
    assert "no answer within" in (first.error or "")
    assert "no answer within" in (second.error or "")
    # Both of its threads are still stuck: the third call is refused at once.
    assert "busy: 2 earlier calls are still running" in (third.error or "")
    assert echoed.output == {"echo": "still here"}


def test_errors_nobody_expected_are_still_tool_errors() -> None:
    spec = tool(
        name="echo", kind="python", entry_point="tool_functions:echo", parameters={"text": {}}
    )

    async def broken_guard(name: str, args: Any) -> str | None:
        raise KeyError("policy table")

    done = call(ToolGateway.build([spec]), "echo", {"text": "x"}, guard=broken_guard)
    assert done.error == "echo: KeyError: 'policy table'"
    deep = tool(name="deep", kind="python", entry_point="tool_functions:deep")
    assert "output is not JSON" in (call(ToolGateway.build([deep]), "deep", {}).error or "")
