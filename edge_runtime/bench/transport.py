"""`bench transport`: echo requests over MQTT 5 and CoAP, edge-runtime beside bare responders."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.bench.machine import describe_machine
from edge_runtime.bench.peers import free_udp_port, start_broker
from edge_runtime.bench.report import markdown_table, times
from edge_runtime.device import probe


@dataclass(frozen=True, slots=True)
class TransportBenchArgs:
    """What `bench transport` measures."""

    json: bool = False
    requests: int = 600
    concurrency: tuple[int, ...] = (1, 8, 32)
    # The direct route runs the model: fewer requests, 16 tokens each.
    direct_requests: int = 48
    model_dir: Path = Path("models/glm-tiny")


def _load(port: int, requests: int, concurrency: int, route: str = "echo") -> dict[str, float]:
    """Send ``requests`` echo requests with ``concurrency`` in flight; latency per request."""
    reply_topic = f"bench/replies/{uuid.uuid4().hex}"
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    done = threading.Event()
    slots = threading.Semaphore(concurrency)
    lock = threading.Lock()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props: Any = message.properties
        key = props.CorrelationData
        with lock:
            started = sent.pop(key, None)
            if started is not None:
                latencies.append(time.perf_counter() - started)
                if len(latencies) == requests:
                    done.set()
        slots.release()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    _nodelay(client)
    client.loop_start()
    client.subscribe(reply_topic, qos=1)
    subscribed.wait(10)
    body = json.dumps(
        {"prompt": "What is the temperature in the kitchen?", "route": route}
    ).encode()
    started_all = time.perf_counter()
    for index in range(requests):
        slots.acquire()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        key = index.to_bytes(4, "big")
        props.CorrelationData = key
        with lock:
            sent[key] = time.perf_counter()
        client.publish(f"edge/req/dev-{index % 16}", body, qos=1, properties=props)
    finished = done.wait(120)
    elapsed = time.perf_counter() - started_all
    client.loop_stop()
    client.disconnect()
    if not finished:
        raise RuntimeError(f"only {len(latencies)} of {requests} answers arrived")
    latencies.sort()
    return {
        "rps": round(requests / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


def _coap_load(port: int, requests: int, concurrency: int) -> dict[str, float]:
    """Confirmable POSTs to /infer with ``concurrency`` in flight; latency per request."""
    import asyncio

    import aiocoap

    async def main() -> dict[str, float]:
        context = await aiocoap.Context.create_client_context()
        slots = asyncio.Semaphore(concurrency)
        latencies: list[float] = []
        body = json.dumps({"prompt": "ping", "route": "echo"}).encode()

        async def one() -> None:
            async with slots:
                message = aiocoap.Message(
                    code=aiocoap.POST,
                    uri=f"coap://[::1]:{port}/infer",
                    payload=body,
                    content_format=50,
                )
                started = time.perf_counter()
                response = await context.request(message).response
                latencies.append(time.perf_counter() - started)
                if not response.code.is_successful():
                    raise RuntimeError(f"CoAP answer {response.code}")

        started_all = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        elapsed = time.perf_counter() - started_all
        await context.shutdown()
        latencies.sort()
        return {
            "rps": round(requests / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
        }

    return asyncio.run(main())


def _serve(kind: str, port: int, model: Path | None = None) -> subprocess.Popen[str]:
    extra = ["--model", str(model)] if model is not None else []
    command = [sys.executable, "-m", "edge_runtime.bench.transport_server"]
    server = subprocess.Popen(
        [*command, "--kind", kind, "--port", str(port), *extra], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    if server.stdout.readline().strip() != "READY":
        raise RuntimeError(f"the {kind} server did not start")
    return server


def _stop(server: subprocess.Popen[str]) -> None:
    server.terminate()
    server.wait(timeout=20)
    if server.stdout is not None:
        server.stdout.close()


def run(args: TransportBenchArgs, out: TextIO) -> dict[str, Any]:
    """Measure both servers at each concurrency; print a table unless ``args.json``."""
    rows: dict[str, dict[str, Any]] = {}
    coap_rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-bench-transport-") as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            for kind in ("bare", "ours"):
                server = _serve(kind, port)
                try:
                    _load(port, 50, 4)  # warm-up
                    rows[kind] = {str(c): _load(port, args.requests, c) for c in args.concurrency}
                finally:
                    _stop(server)
            server = _serve("ours-direct", port, args.model_dir)
            try:
                _load(port, 4, 1, route="direct")  # warm-up
                direct = {
                    str(c): _load(port, args.direct_requests, c, route="direct")
                    for c in args.concurrency
                }
            finally:
                _stop(server)
            for kind in ("coap-bare", "coap-ours"):
                udp = free_udp_port()
                server = _serve(kind, udp)
                try:
                    _coap_load(udp, 50, 4)  # warm-up
                    coap_rows[kind.removeprefix("coap-")] = {
                        str(c): _coap_load(udp, args.requests, c) for c in args.concurrency
                    }
                finally:
                    _stop(server)
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    ratios = {
        str(c): {
            "p50": round(rows["ours"][str(c)]["p50_ms"] / rows["bare"][str(c)]["p50_ms"], 2),
            "rps": round(rows["ours"][str(c)]["rps"] / rows["bare"][str(c)]["rps"], 2),
        }
        for c in args.concurrency
    }
    coap_ratios = {
        str(c): {
            "p50": round(
                coap_rows["ours"][str(c)]["p50_ms"] / coap_rows["bare"][str(c)]["p50_ms"], 2
            ),
            "rps": round(coap_rows["ours"][str(c)]["rps"] / coap_rows["bare"][str(c)]["rps"], 2),
        }
        for c in args.concurrency
    }
    result = {
        "machine": describe_machine(probe(), 1),
        "mqtt_echo": rows,
        "ratio_ours_to_bare": ratios,
        "coap_echo": coap_rows,
        "mqtt_direct": direct,
        "coap_ratio_ours_to_bare": coap_ratios,
    }
    if not args.json:
        out.write(render(result) + "\n")
    return result


def render(result: dict[str, Any]) -> str:
    """The report as Markdown tables, one per transport."""
    headers = [
        "in flight",
        "bare req/s",
        "bare p50 ms",
        "bare p99 ms",
        "ours req/s",
        "ours p50 ms",
        "ours p99 ms",
        "p50 ours/bare",
    ]
    lines: list[str] = []
    for title, key, ratio_key in (
        ("MQTT 5 QoS 1, echo route, one mosquitto on loopback", "mqtt_echo", "ratio_ours_to_bare"),
        (
            "CoAP confirmable POST /infer over UDP on loopback, echo route",
            "coap_echo",
            "coap_ratio_ours_to_bare",
        ),
    ):
        body = []
        for concurrency, ratio in result[ratio_key].items():
            bare = result[key]["bare"][concurrency]
            ours = result[key]["ours"][concurrency]
            body.append(
                [
                    concurrency,
                    f"{bare['rps']:.0f}",
                    f"{bare['p50_ms']:.2f}",
                    f"{bare['p99_ms']:.2f}",
                    f"{ours['rps']:.0f}",
                    f"{ours['p50_ms']:.2f}",
                    f"{ours['p99_ms']:.2f}",
                    times(ratio["p50"]),
                ]
            )
        lines += [title, "", *markdown_table(headers, body, left=1), ""]
    direct_rows = [
        [c, f"{row['rps']:.1f}", f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}"]
        for c, row in result["mqtt_direct"].items()
    ]
    lines += [
        "MQTT 5 QoS 1, direct route: the tiny model, 16 new tokens per answer",
        "",
        *markdown_table(["in flight", "req/s", "p50 ms", "p99 ms"], direct_rows, left=1),
    ]
    return "\n".join(lines).rstrip()


def _nodelay(client: mqtt.Client) -> None:
    """Nagle off, as edge-runtime's transport does, so both sides are measured alike."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
