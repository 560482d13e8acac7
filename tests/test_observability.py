"""What an operator sees of a running box: /metrics, /health (HTTP and CoAP), logs on stderr and
on MQTT, and the device registry filled by MQTT birth messages and CoAP /rd."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import free_port, mosquitto_config, mqtt_rr, start_mosquitto
from prometheus_client.parser import text_string_to_metric_families
from test_coap import free_udp_port
from test_serve import EXE, config_for, wait_online


def coap_post(url: str, content_format: int, body: str) -> str:
    """POST with libcoap's client; its output, with the response code (-v 6 prints it)."""
    done = subprocess.run(
        [
            "coap-client-notls",
            "-B",
            "10",
            "-m",
            "post",
            "-t",
            str(content_format),
            "-e",
            body,
            "-v",
            "6",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout + done.stderr


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_metrics_health_logs_and_devices(tmp_path: Path) -> None:
    broker = free_port()
    mosquitto = start_mosquitto(mosquitto_config(tmp_path, broker, "persistence false\n"), broker)
    coap_port, metrics_port = free_udp_port(), free_port()
    config = config_for(tmp_path, broker, coap_port, metrics_port)
    # The weather tool points at a port where nothing listens: its calls fail.
    config.write_text(
        config.read_text()
        .replace('level = "info"', 'level = "info"\nmqtt_level = "info"')
        .replace("127.0.0.1:8081", f"127.0.0.1:{free_port()}")
    )
    idle: socket.socket | None = None
    stderr = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(EXE), "serve", "--config", str(config), "--log-format", "json"], stderr=stderr
    )
    try:
        wait_online(broker)
        deadline = time.monotonic() + 30
        while health(metrics_port)[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health(metrics_port) == (200, {"status": "ready", "reasons": []})
        coap_health = subprocess.run(
            ["coap-client-notls", "-B", "10", f"coap://[::1]:{coap_port}/health"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert json.loads(coap_health.stdout.strip().splitlines()[-1])["status"] == "ready"

        before = scrape(metrics_port)
        echo_key = (
            "edge_runtime_requests_total",
            (("route", "echo"), ("status", "200"), ("transport", "mqtt")),
        )
        assert mqtt_rr(broker, "edge/req/diag", {"prompt": "hi"}, "e1")["text"] == "hi"
        direct = mqtt_rr(
            broker, "edge/req/s1", {"prompt": "hello", "route": "direct", "max_tokens": 8}, "d1"
        )
        after = scrape(metrics_port)
        assert after[echo_key] == before.get(echo_key, 0) + 1
        assert after[("edge_runtime_tokens_generated_total", ())] >= (
            before.get(("edge_runtime_tokens_generated_total", ()), 0)
            + direct["usage"]["completion_tokens"]
        )
        ttft = ("edge_runtime_time_to_first_token_seconds_count", ())
        assert after[ttft] == before.get(ttft, 0) + 1
        assert after[("edge_runtime_filter_phase_seconds_count", (("phase", "request"),))] >= 2
        assert after[("edge_runtime_mqtt_connected", ())] == 1
        assert after[("edge_runtime_filter_failed", (("filter", "router"),))] == 0
        assert ("edge_runtime_cache_lookups_total", (("result", "miss"),)) in after
        # No weather service listens in this test: the tool fails, and says so in the log.
        failed = mqtt_rr(broker, "edge/req/s1", {"prompt": "weather in Oslo"}, "w1")
        assert failed["tool_calls"][0]["error"].startswith("weather: ")
        tools = scrape(metrics_port)
        key = ("edge_runtime_tool_calls_total", (("outcome", "error"), ("tool", "weather")))
        assert tools[key] == 1

        # Devices announce themselves: a retained MQTT birth message, and CoAP /rd.
        subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(broker),
                "-t",
                "edge/devices/lamp-1",
                "-r",
                "-q",
                "1",
                "-m",
                json.dumps({"kind": "lamp", "capabilities": ["on_off", "dim"]}),
            ],
            check=True,
            timeout=30,
        )
        rd = f"coap://[::1]:{coap_port}/rd"
        links = '</temp>;rt="temperature",</hum>;rt="humidity"'
        assert "2.01" in coap_post(f"{rd}?ep=therm-1&et=thermometer", 40, links)
        assert "4.00" in coap_post(f"{rd}?ep=x", 50, "[1, 2")
        assert "4.00" in coap_post(f"{rd}?ep=y", 40, '<<<>>;;;"')
        # A client that connects to the metrics port and says nothing holds nothing up.
        idle = socket.create_connection(("127.0.0.1", metrics_port))
        # (it stays open through the checks below and the stop at the end)
        deadline = time.monotonic() + 10
        while True:
            listed = subprocess.run(
                [str(EXE), "devices", "--json", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            devices = {d["id"]: d for d in json.loads(listed.stdout or "[]")}
            if {"lamp-1", "therm-1"} <= set(devices) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (devices["lamp-1"]["kind"], devices["lamp-1"]["capabilities"]) == (
            "lamp",
            ["on_off", "dim"],
        )
        assert (devices["therm-1"]["kind"], devices["therm-1"]["capabilities"]) == (
            "thermometer",
            ["temperature", "humidity"],
        )
        assert (devices["lamp-1"]["source"], devices["therm-1"]["source"]) == ("mqtt", "coap")

        # A device that gave names can be asked about by name (HassGetState, device_state).
        subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(broker),
                "-t",
                "edge/devices/lamp-2",
                "-r",
                "-q",
                "1",
                "-m",
                json.dumps({"kind": "light", "names": ["porch light", "门廊灯"]}),
            ],
            check=True,
            timeout=30,
        )
        subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(broker),
                "-t",
                "sensors/lamp-2/state",
                "-r",
                "-q",
                "1",
                "-m",
                "on",
            ],
            check=True,
            timeout=30,
        )
        # The name list is refreshed half a second after a registration.
        deadline = time.monotonic() + 10
        for attempt in range(100):
            # A new correlation each time: a repeated one is answered from the redelivery cache.
            asked = mqtt_rr(
                broker,
                "edge/req/s1",
                {"prompt": "what is the state of the porch light"},
                f"n{attempt}",
            )
            # Until the names arrive, the model answers (and may call some tool itself).
            if asked.get("intents") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert asked["tool_calls"][0]["name"] == "device_state"
        assert asked["tool_calls"][0]["arguments"] == {"name": "lamp-2"}
        assert asked["text"] == "The lamp-2 is on."

        # Live logs: follow the box on MQTT while it reloads.
        follow = subprocess.Popen(
            ["mosquitto_sub", "-p", str(broker), "-t", "edge/logs/box-1", "-C", "2", "-W", "30"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        daemon.send_signal(signal.SIGHUP)
        records = [json.loads(line) for line in follow.communicate(timeout=60)[0].splitlines()]
        assert any("reloaded" in r["message"] for r in records), records
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)

        # The broker goes away: the node is degraded, and says why.
        mosquitto.terminate()
        mosquitto.wait(timeout=10)
        deadline = time.monotonic() + 20
        while health(metrics_port)[1]["status"] != "degraded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert health(metrics_port)[1]["reasons"] == ["MQTT broker unreachable"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        stderr.close()
        if idle is not None:
            idle.close()
        if mosquitto.poll() is None:
            mosquitto.terminate()
            mosquitto.wait(timeout=10)
    assert code == 0
    lines = (tmp_path / "daemon.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {r["level"] for r in records} >= {"info"}
    # Records logged while answering carry the request's id (the correlation data, hex).
    tool_warnings = [r for r in records if r["logger"] == "edge_runtime.tools"]
    weather = [r for r in tool_warnings if r["request_id"] == b"w1".hex()]
    assert [r["level"] for r in weather] == ["warning"]
    assert "tool weather failed" in weather[0]["message"]
    # Every tool warning was logged while answering some request, and says which.
    assert all(r.get("request_id") for r in tool_warnings)
