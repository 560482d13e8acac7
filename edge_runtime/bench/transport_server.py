"""The server side of `bench transport`, in its own process: our echo route or bare paho."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import aiocoap
import paho.mqtt.client as mqtt
from aiocoap import resource
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.config import MqttSettings
from edge_runtime.device import probe
from edge_runtime.model.runtime import load_model
from edge_runtime.pipeline import Pipeline, PipelineSettings, answer_payload
from edge_runtime.transports.coap import CoapTransport
from edge_runtime.transports.mqtt import MqttTransport


def bare(port: int, ready: threading.Event, stop: threading.Event) -> None:
    """The floor: a paho client that publishes each request back to its response topic."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare-echo", protocol=mqtt.MQTTv5)

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        _nodelay(c)
        c.subscribe("edge/req/+", qos=1)

    def on_subscribe(*args: Any) -> None:
        ready.set()

    def on_message(c: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props: Any = message.properties
        reply = Properties(PacketTypes.PUBLISH)
        reply.CorrelationData = props.CorrelationData
        c.publish(props.ResponseTopic, message.payload, qos=1, properties=reply)

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    stop.wait()
    client.loop_stop()


async def ours(
    port: int, ready: threading.Event, stop: threading.Event, model_dir: str | None = None
) -> None:
    """edge-runtime's MQTT transport and pipeline: the echo route, or direct with a model."""
    if model_dir is None:
        pipeline = Pipeline(
            PipelineSettings(default_route="echo", max_concurrent=64, max_queue=1024)
        )
    else:
        model = load_model(Path(model_dir), threads=probe().effective_threads)
        pipeline = Pipeline(
            PipelineSettings(default_route="direct", max_new_tokens=16, max_queue=1024),
            model=model,
        )
    settings = MqttSettings(port=port, node_id="bench-node", share_group="")
    async with MqttTransport(settings, pipeline.handle, answer_payload):
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
    pipeline.close()


async def coap_bare(port: int, ready: threading.Event, stop: threading.Event) -> None:
    """The CoAP floor: an aiocoap resource that answers every POST with its own payload."""

    class Echo(resource.Resource):  # type: ignore[misc]
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(payload=request.payload, content_format=50)

    site = resource.Site()
    site.add_resource(["infer"], Echo())
    context = await aiocoap.Context.create_server_context(
        site, bind=("::1", port), transports=["udp6"]
    )
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.05)
    await context.shutdown()


async def coap_ours(port: int, ready: threading.Event, stop: threading.Event) -> None:
    """edge-runtime's CoAP transport and pipeline on the echo route."""
    pipeline = Pipeline(PipelineSettings(default_route="echo", max_concurrent=64, max_queue=1024))
    async with CoapTransport(pipeline.handle, answer_payload, host="::1", port=port):
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
    pipeline.close()


def main() -> None:
    """Serve until SIGTERM; print READY once subscribed."""
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--kind", choices=("ours", "bare", "coap-ours", "coap-bare", "ours-direct"), required=True
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", help="model directory for ours-direct")
    args = parser.parse_args()
    ready, stop = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    if args.kind == "bare":
        thread = threading.Thread(target=bare, args=(args.port, ready, stop))
    elif args.kind == "coap-bare":
        thread = threading.Thread(target=lambda: asyncio.run(coap_bare(args.port, ready, stop)))
    elif args.kind == "coap-ours":
        thread = threading.Thread(target=lambda: asyncio.run(coap_ours(args.port, ready, stop)))
    elif args.kind == "ours-direct":
        thread = threading.Thread(
            target=lambda: asyncio.run(ours(args.port, ready, stop, args.model))
        )
    else:
        thread = threading.Thread(target=lambda: asyncio.run(ours(args.port, ready, stop)))
    thread.start()
    ready.wait(30)
    print("READY", flush=True)
    thread.join()


def _nodelay(client: mqtt.Client) -> None:
    """Nagle off, as edge-runtime's transport does, so both sides are measured alike."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


if __name__ == "__main__":
    main()
