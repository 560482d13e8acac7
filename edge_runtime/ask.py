"""`ask`: a small client that sends one request and prints the answer as it streams."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from typing import Any, TextIO
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.errors import RequestError


def ask_mqtt(
    url: str,
    text: str,
    *,
    out: TextIO,
    err: TextIO,
    stream: bool = False,
    session: str | None = None,
    device: str = "ask",
    prefix: str = "edge",
    timeout_s: float = 60.0,
) -> int:
    """Ask over MQTT 5; 0 when an answer came, 1 for an error answer or no answer in time."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise RequestError(f"{url}: only mqtt://host:port URLs are supported")
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    reply_topic = f"{prefix}/ask/{uuid.uuid4().hex}"
    correlation = uuid.uuid4().bytes
    inbox: queue.Queue[dict[str, Any]] = queue.Queue()
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if getattr(message.properties, "CorrelationData", None) != correlation:
            return
        try:
            inbox.put(json.loads(message.payload))
        except ValueError:
            inbox.put({"error": {"status": 502, "message": "unreadable answer"}})

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        err.write(f"cannot reach the broker at {host}:{port}: {exc}\n")
        return 1
    client.loop_start()
    try:
        client.subscribe(reply_topic, qos=1)
        if not subscribed.wait(10):
            err.write("the broker did not confirm the subscription\n")
            return 1
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = reply_topic
        properties.CorrelationData = correlation
        properties.ContentType = "application/json"
        body: dict[str, Any] = {"prompt": text, "stream": stream}
        if session:
            body["session"] = session
        client.publish(f"{prefix}/req/{device}", json.dumps(body), qos=1, properties=properties)
        while True:
            try:
                message = inbox.get(timeout=timeout_s)
            except queue.Empty:
                err.write(f"no answer within {timeout_s:.0f} s\n")
                return 1
            if "error" in message:
                error = message["error"]
                err.write(f"error {error.get('status')}: {error.get('message')}\n")
                return 1
            if message.get("type") == "delta":
                out.write(str(message.get("text", "")))
                out.flush()
                continue
            if message.get("type") != "final":
                out.write(str(message.get("text", "")))
            out.write("\n")
            return 0
    finally:
        client.loop_stop()
        client.disconnect()


def ask_coap(url: str, text: str, *, out: TextIO, err: TextIO, timeout_s: float = 60.0) -> int:
    """Ask over CoAP (POST /infer); 0 when an answer came, 1 otherwise."""
    import asyncio

    import aiocoap

    parts = urlsplit(url if "://" in url else f"coap://{url}")
    if parts.scheme != "coap":
        raise RequestError(f"{url}: only coap:// URLs are supported")
    target = url.rstrip("/") if parts.path.endswith("/infer") else url.rstrip("/") + "/infer"

    async def main() -> int:
        context = await aiocoap.Context.create_client_context()
        try:
            message = aiocoap.Message(
                code=aiocoap.POST,
                uri=target,
                payload=json.dumps({"prompt": text}).encode(),
                content_format=50,
            )
            try:
                response = await asyncio.wait_for(context.request(message).response, timeout_s)
            except TimeoutError:
                err.write(f"no answer within {timeout_s:.0f} s\n")
                return 1
            except OSError as exc:
                err.write(f"cannot reach {target}: {exc}\n")
                return 1
            try:
                answer = json.loads(response.payload)
            except ValueError:
                answer = {}
            if not response.code.is_successful():
                error = answer.get("error", {}) if isinstance(answer, dict) else {}
                err.write(f"error {response.code}: {error.get('message', '')}\n")
                return 1
            out.write(str(answer.get("text", "")) + "\n")
            return 0
        finally:
            await context.shutdown()

    return asyncio.run(main())
