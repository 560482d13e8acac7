"""The MQTT transport against a real mosquitto broker and the mosquitto command-line clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from conftest import free_port, mosquitto_config, start_mosquitto

from edge_runtime.config import MqttSettings
from edge_runtime.messages import Request, Response
from edge_runtime.model.runtime import Model
from edge_runtime.pipeline import Pipeline, PipelineSettings, answer_payload
from edge_runtime.transports.mqtt import MqttTransport


@asynccontextmanager
async def serving(
    port: int, model: Model, calls: list[Request] | None = None
) -> AsyncIterator[MqttTransport]:
    pipeline = Pipeline(PipelineSettings(coalesce_chars=4), model=model)

    async def handler(request: Request, sink) -> Response:  # type: ignore[no-untyped-def]
        if calls is not None:
            calls.append(request)
        return await pipeline.handle(request, sink)

    settings = MqttSettings(port=port, node_id="node-a", share_group="")
    try:
        async with MqttTransport(settings, handler, answer_payload) as transport:
            yield transport
    finally:
        pipeline.close()


def mqtt5_request(port: str, topic: str, body: str, reply: str, correlation: str) -> list[str]:
    """mosquitto_pub arguments for one MQTT 5 QoS 1 request with a response topic."""
    return [
        "mosquitto_pub", "-V", "5", "-p", port, "-q", "1", "-t", topic, "-m", body,
        "-D", "publish", "response-topic", reply, "-D", "publish", "correlation-data", correlation,
    ]  # fmt: skip


async def run(*argv: str, timeout: float = 20) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, err.decode()
    return out.decode()


def test_mqtt5_request_response_with_correlation(broker: int, tiny_model: Model) -> None:
    async def main() -> str:
        async with serving(broker, tiny_model):
            return await run(
                "mosquitto_rr",
                "-p",
                str(broker),
                "-t",
                "edge/req/sensor-1",
                "-e",
                "replies/a",
                "-m",
                json.dumps({"prompt": "hello", "route": "echo"}),
                "-D",
                "publish",
                "correlation-data",
                "c-1",
                "-W",
                "15",
            )

    answer = json.loads(asyncio.run(main()))
    assert answer["text"] == "hello"
    assert answer["route"] == "echo"


def test_mqtt311_topic_convention(broker: int, tiny_model: Model) -> None:
    async def main() -> str:
        async with serving(broker, tiny_model):
            sub = asyncio.create_task(
                run(
                    "mosquitto_sub",
                    "-V",
                    "311",
                    "-p",
                    str(broker),
                    "-t",
                    "edge/res/sensor-9",
                    "-C",
                    "1",
                    "-W",
                    "15",
                )
            )
            await asyncio.sleep(0.5)
            await run(
                "mosquitto_pub",
                "-V",
                "311",
                "-p",
                str(broker),
                "-q",
                "1",
                "-t",
                "edge/req/sensor-9",
                "-m",
                json.dumps({"id": "x1", "prompt": "hi", "route": "echo"}),
            )
            return await sub

    answer = json.loads(asyncio.run(main()))
    assert answer["text"] == "hi"


def test_streamed_answer_has_ordered_chunks_and_one_terminal(
    broker: int, tiny_model: Model
) -> None:
    async def main() -> list[dict[str, object]]:
        async with serving(broker, tiny_model):
            sub = await asyncio.create_subprocess_exec(
                "mosquitto_sub",
                "-p",
                str(broker),
                "-t",
                "replies/s",
                "-W",
                "20",
                stdout=asyncio.subprocess.PIPE,
            )
            await asyncio.sleep(0.5)
            body = {
                "prompt": "What is the temperature in the kitchen?",
                "stream": True,
                "max_tokens": 24,
                "temperature": 0.8,
            }
            await run(
                *mqtt5_request(
                    str(broker), "edge/req/sensor-1", json.dumps(body), "replies/s", "s-1"
                ),
            )
            chunks: list[dict[str, object]] = []
            assert sub.stdout is not None
            while not chunks or chunks[-1]["type"] not in ("final", "error"):
                line = await asyncio.wait_for(sub.stdout.readline(), 20)
                chunks.append(json.loads(line))
            sub.terminate()
            await sub.wait()
            return chunks

    chunks = asyncio.run(main())
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert [c["type"] for c in chunks].count("final") == 1
    assert chunks[-1]["type"] == "final"
    text = "".join(str(c["text"]) for c in chunks[:-1])
    assert text == chunks[-1]["text"]


def test_a_redelivered_request_gets_the_same_answer_without_a_second_run(
    broker: int, tiny_model: Model
) -> None:
    calls: list[Request] = []

    async def main() -> list[str]:
        async with serving(broker, tiny_model, calls):
            answers = []
            for _ in range(2):
                answers.append(
                    await run(
                        "mosquitto_rr",
                        "-p",
                        str(broker),
                        "-t",
                        "edge/req/sensor-1",
                        "-e",
                        "replies/d",
                        "-m",
                        json.dumps({"prompt": "tell me", "max_tokens": 8, "temperature": 1.0}),
                        "-D",
                        "publish",
                        "correlation-data",
                        "same-id",
                        "-W",
                        "15",
                    )
                )
            return answers

    first, second = asyncio.run(main())
    assert first == second
    assert len(calls) == 1


def test_bad_requests_get_error_answers_and_the_node_keeps_serving(
    broker: int, tiny_model: Model
) -> None:
    async def main() -> list[str]:
        async with serving(broker, tiny_model):
            bad = await run(
                "mosquitto_rr",
                "-p",
                str(broker),
                "-t",
                "edge/req/sensor-1",
                "-e",
                "replies/b",
                "-m",
                '{"prompt": ',
                "-D",
                "publish",
                "correlation-data",
                "b-1",
                "-W",
                "15",
            )
            good = await run(
                "mosquitto_rr",
                "-p",
                str(broker),
                "-t",
                "edge/req/sensor-1",
                "-e",
                "replies/b",
                "-m",
                json.dumps({"prompt": "ok", "route": "echo"}),
                "-D",
                "publish",
                "correlation-data",
                "b-2",
                "-W",
                "15",
            )
            return [bad, good]

    bad, good = asyncio.run(main())
    assert json.loads(bad)["error"]["status"] == 400
    assert json.loads(good)["text"] == "ok"


def test_status_topic_is_retained_online_then_offline(broker: int, tiny_model: Model) -> None:
    async def main() -> tuple[str, str]:
        async with serving(broker, tiny_model):
            online = await run(
                "mosquitto_sub",
                "-p",
                str(broker),
                "-t",
                "edge/status/node-a",
                "-C",
                "1",
                "-W",
                "10",
            )
        offline = await run(
            "mosquitto_sub", "-p", str(broker), "-t", "edge/status/node-a", "-C", "1", "-W", "10"
        )
        return online.strip(), offline.strip()

    assert asyncio.run(main()) == ("online", "offline")


def test_two_nodes_share_the_requests_and_each_is_answered_once(
    broker: int, tiny_model: Model
) -> None:
    from edge_runtime.config import MqttSettings

    served: dict[str, list[str]] = {"a": [], "b": []}

    async def main() -> list[str]:
        pipeline = Pipeline(PipelineSettings(), model=tiny_model)

        def handler_for(name: str):  # type: ignore[no-untyped-def]
            async def handler(request: Request, sink) -> Response:  # type: ignore[no-untyped-def]
                served[name].append(request.id)
                await asyncio.sleep(0.05)
                return await pipeline.handle(request, sink)

            return handler

        settings = {
            name: MqttSettings(port=broker, node_id=f"node-{name}", share_group="workers")
            for name in served
        }
        try:
            async with (
                MqttTransport(settings["a"], handler_for("a"), answer_payload),
                MqttTransport(settings["b"], handler_for("b"), answer_payload),
            ):
                sub = await asyncio.create_subprocess_exec(
                    "mosquitto_sub",
                    "-p",
                    str(broker),
                    "-t",
                    "replies/shared",
                    "-C",
                    "20",
                    "-W",
                    "30",
                    stdout=asyncio.subprocess.PIPE,
                )
                await asyncio.sleep(0.5)
                for index in range(20):
                    await run(
                        *mqtt5_request(
                            str(broker),
                            f"edge/req/dev-{index}",
                            json.dumps({"prompt": f"n{index}", "route": "echo"}),
                            "replies/shared",
                            f"k{index}",
                        ),
                    )
                out, _ = await asyncio.wait_for(sub.communicate(), 40)
                return out.decode().splitlines()
        finally:
            pipeline.close()

    answers = asyncio.run(main())
    texts = sorted(json.loads(line)["text"] for line in answers)
    assert texts == sorted(f"n{i}" for i in range(20))
    assert len(served["a"]) + len(served["b"]) == 20
    assert served["a"] and served["b"]


def test_message_expiry_becomes_the_deadline(broker: int, tiny_model: Model) -> None:
    calls: list[Request] = []

    async def main() -> str:
        async with serving(broker, tiny_model, calls):
            return await run(
                "mosquitto_rr",
                "-p",
                str(broker),
                "-t",
                "edge/req/sensor-1",
                "-e",
                "replies/e",
                "-m",
                json.dumps({"prompt": "hi", "route": "echo"}),
                "-D",
                "publish",
                "correlation-data",
                "e-1",
                "-D",
                "publish",
                "message-expiry-interval",
                "30",
                "-W",
                "15",
            )

    before = time.monotonic()
    assert json.loads(asyncio.run(main()))["text"] == "hi"
    (call,) = calls
    assert call.deadline is not None
    assert before + 20 < call.deadline < before + 31


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_mutual_tls(tmp_path: Path, tiny_model: Model) -> None:
    from edge_runtime.config import MqttSettings

    d = tmp_path
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(d / "ext.cnf"),
            "-out",
            str(d / f"{name}.crt"),
        )
    port = free_port()
    tls = (
        f"cafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}\n"
        "require_certificate true\n"
    )
    broker = start_mosquitto(mosquitto_config(d, port, tls), port)
    try:
        settings = MqttSettings(
            port=port,
            node_id="tls-node",
            share_group="",
            tls_ca=d / "ca.crt",
            tls_cert=d / "client.crt",
            tls_key=d / "client.key",
        )
        calls: list[Request] = []

        async def main() -> str:
            pipeline = Pipeline(PipelineSettings(), model=tiny_model)

            async def handler(request: Request, sink) -> Response:  # type: ignore[no-untyped-def]
                calls.append(request)
                return await pipeline.handle(request, sink)

            try:
                async with MqttTransport(settings, handler, answer_payload):
                    return await run(
                        "mosquitto_rr",
                        "-p",
                        str(port),
                        "-h",
                        "127.0.0.1",
                        "--cafile",
                        str(d / "ca.crt"),
                        "--cert",
                        str(d / "client.crt"),
                        "--key",
                        str(d / "client.key"),
                        "-t",
                        "edge/req/sensor-1",
                        "-e",
                        "replies/t",
                        "-m",
                        json.dumps({"prompt": "secure", "route": "echo"}),
                        "-D",
                        "publish",
                        "correlation-data",
                        "t-1",
                        "-W",
                        "15",
                    )
            finally:
                pipeline.close()

        assert json.loads(asyncio.run(main()))["text"] == "secure"
        assert (":scheme", "mqtts") in calls[0].headers
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def test_requests_sent_while_the_node_reconnects_are_answered(
    tmp_path: Path, tiny_model: Model
) -> None:
    port = free_port()
    (tmp_path / "data").mkdir()
    config = mosquitto_config(
        tmp_path, port, f"persistence true\npersistence_location {tmp_path / 'data'}/\n"
    )

    def start() -> subprocess.Popen[bytes]:
        return start_mosquitto(config, port)

    broker = start()

    async def main() -> list[str]:
        nonlocal broker
        async with serving(port, tiny_model) as transport:
            assert transport.client.is_connected()
            broker.terminate()
            broker.wait(timeout=10)
            await asyncio.sleep(0.5)
            broker = start()
            sub = await asyncio.create_subprocess_exec(
                "mosquitto_sub",
                "-p",
                str(port),
                "-t",
                "replies/restart",
                "-C",
                "5",
                "-W",
                "30",
                stdout=asyncio.subprocess.PIPE,
            )
            await asyncio.sleep(0.3)
            # The node may not be back yet: its persistent session keeps these for it.
            for index in range(5):
                await run(
                    *mqtt5_request(
                        str(port),
                        "edge/req/sensor-1",
                        json.dumps({"prompt": f"r{index}", "route": "echo"}),
                        "replies/restart",
                        f"r{index}",
                    ),
                )
            out, _ = await asyncio.wait_for(sub.communicate(), 40)
            assert transport.reconnects == 1
            return out.decode().splitlines()

    try:
        answers = asyncio.run(main())
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    assert sorted(json.loads(line)["text"] for line in answers) == [f"r{i}" for i in range(5)]


def test_publishes_stay_under_the_brokers_maximum_packet_size(
    tmp_path: Path, tiny_model: Model
) -> None:
    from edge_runtime.config import MqttSettings

    port = free_port()
    broker = start_mosquitto(mosquitto_config(tmp_path, port, "max_packet_size 512\n"), port)
    # Seed 2 makes the tiny model write 600 tokens: far more than one 512-byte packet.
    body = {
        "prompt": "What is the temperature in the kitchen?",
        "temperature": 0.8,
        "seed": 2,
        "max_tokens": 600,
    }

    async def main() -> tuple[list[bytes], str, str]:
        # Deltas are gathered into one big piece, which the transport must split.
        pipeline = Pipeline(
            PipelineSettings(coalesce_chars=100_000, coalesce_seconds=100), model=tiny_model
        )
        settings = MqttSettings(port=port, node_id="small-packets", share_group="")
        try:
            async with MqttTransport(settings, pipeline.handle, answer_payload):
                sub = await asyncio.create_subprocess_exec(
                    "mosquitto_sub",
                    "-p",
                    str(port),
                    "-t",
                    "replies/p",
                    "-W",
                    "30",
                    stdout=asyncio.subprocess.PIPE,
                )
                await asyncio.sleep(0.3)
                await run(
                    *mqtt5_request(
                        str(port),
                        "edge/req/s1",
                        json.dumps({**body, "stream": True}),
                        "replies/p",
                        "p-1",
                    ),
                )
                lines: list[bytes] = []
                assert sub.stdout is not None
                while not lines or json.loads(lines[-1]).get("type") not in ("final", "error"):
                    lines.append(await asyncio.wait_for(sub.stdout.readline(), 30))
                sub.terminate()
                await sub.wait()
                whole = await run(
                    "mosquitto_rr",
                    "-p",
                    str(port),
                    "-t",
                    "edge/req/s1",
                    "-e",
                    "replies/q",
                    "-m",
                    json.dumps(body),
                    "-D",
                    "publish",
                    "correlation-data",
                    "p-2",
                    "-W",
                    "30",
                )
                still = await run(
                    "mosquitto_rr",
                    "-p",
                    str(port),
                    "-t",
                    "edge/req/s1",
                    "-e",
                    "replies/q",
                    "-m",
                    json.dumps({"prompt": "ok", "route": "echo"}),
                    "-D",
                    "publish",
                    "correlation-data",
                    "p-3",
                    "-W",
                    "30",
                )
                return lines, whole, still
        finally:
            pipeline.close()

    try:
        lines, whole, still = asyncio.run(main())
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    chunks = [json.loads(line) for line in lines]
    assert all(len(line) <= 512 for line in lines)
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert len(chunks) > 3
    assert chunks[-1]["type"] == "final" and "text" not in chunks[-1]
    assert chunks[-1]["usage"]["completion_tokens"] == 600
    assert json.loads(whole)["error"]["status"] == 413
    # The node was never dropped by the broker for an oversize packet.
    assert json.loads(still)["text"] == "ok"


def test_reconnect_backoff_grows_is_capped_and_jittered() -> None:
    import random

    from edge_runtime.transports.mqtt import backoff

    rng = random.Random(7)
    delays = [backoff(n, rng) for n in range(12)]
    assert 0.25 <= delays[0] <= 0.75
    assert all(d <= 45 for d in delays)
    assert delays[8] > delays[0]
    # Two boxes that lost the broker together do not come back in step.
    other = [backoff(n, random.Random(8)) for n in range(12)]
    assert delays != other


def test_a_request_whose_expiry_passes_while_queued_is_dropped(
    broker: int, tiny_model: Model
) -> None:
    async def main() -> tuple[int, str]:
        pipeline = Pipeline(PipelineSettings(max_concurrent=1, max_queue=8), model=tiny_model)

        async def slow_then_pipeline(request: Request, sink) -> Response:  # type: ignore[no-untyped-def]
            if request.path.endswith("slow"):
                await asyncio.sleep(2.5)
            return await pipeline.handle(request, sink)

        settings = MqttSettings(port=broker, node_id="exp", share_group="")
        try:
            async with MqttTransport(settings, slow_then_pipeline, answer_payload) as transport:
                sub = await asyncio.create_subprocess_exec(
                    "mosquitto_sub",
                    "-p",
                    str(broker),
                    "-t",
                    "replies/x",
                    "-W",
                    "6",
                    stdout=asyncio.subprocess.PIPE,
                )
                await asyncio.sleep(0.3)
                await run(
                    "mosquitto_pub",
                    "-V",
                    "5",
                    "-p",
                    str(broker),
                    "-q",
                    "1",
                    "-t",
                    "edge/req/slow",
                    "-m",
                    json.dumps({"prompt": "a", "route": "echo"}),
                    "-D",
                    "publish",
                    "response-topic",
                    "replies/x",
                    "-D",
                    "publish",
                    "correlation-data",
                    "x1",
                    "-D",
                    "publish",
                    "message-expiry-interval",
                    "1",
                )
                out, _ = await sub.communicate()
                return transport.expired, out.decode()
        finally:
            pipeline.close()

    from edge_runtime.config import MqttSettings

    expired, out = asyncio.run(main())
    assert expired == 1
    assert out.strip() == ""
