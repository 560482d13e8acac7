"""MQTT transport: MQTT 5 request/response and the 3.1.1 topic convention, streamed answers.

paho-mqtt runs its network loop on its own thread; every callback hops to the event loop with
call_soon_threadsafe, and nothing past this module sees a paho type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
import uuid
from collections import OrderedDict
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.codec import CBOR, JSON, encode, media_type
from edge_runtime.config import MqttSettings
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.messages import Chunk, ChunkType, Request, RequestKind
from edge_runtime.state import StateStore
from edge_runtime.transports import DeviceBirth, Handler, PayloadOf

log = logging.getLogger("edge_runtime.mqtt")


class MqttTransport:
    """Subscribes to the request topics and answers each request exactly once."""

    def __init__(
        self,
        settings: MqttSettings,
        handler: Handler,
        payload_of: PayloadOf,
        *,
        state: StateStore | None = None,
        on_device: DeviceBirth | None = None,
    ):
        if not settings.node_id:
            settings = settings.model_copy(update={"node_id": socket.gethostname()})
        self.settings = settings
        self._handler = handler
        self._payload_of = payload_of
        self._state = state
        self._on_device = on_device
        self._taking_requests = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._answered: OrderedDict[str, list[tuple[str, bytes, Properties | None]]] = OrderedDict()
        self._in_progress: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_packet: int | None = None
        self._disconnected = asyncio.Event()
        self._stopping = False
        self._reconnector: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self.reconnects = 0
        # Requests whose Message Expiry passed before they were answered: dropped, counted.
        self.expired = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.node_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
            # We reconnect ourselves, with jitter, so a fleet does not return all at once.
            reconnect_on_failure=False,
        )
        if settings.username is not None:
            self.client.username_pw_set(settings.username, settings.password)
        self.client.max_queued_messages_set(settings.max_queued_messages)
        self._tls = settings.tls_ca is not None or settings.tls_cert is not None
        if settings.tls_ca is not None or settings.tls_cert is not None:
            self.client.tls_set(
                ca_certs=str(settings.tls_ca) if settings.tls_ca else None,
                certfile=str(settings.tls_cert) if settings.tls_cert else None,
                keyfile=str(settings.tls_key) if settings.tls_key else None,
            )
        self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    @property
    def status_topic(self) -> str:
        """Retained online/offline status of this node."""
        return f"{self.settings.prefix}/status/{self.settings.node_id}"

    @property
    def request_filter(self) -> str:
        """The subscription: shared when a group is configured."""
        return self._shared(f"{self.settings.prefix}/req/+")

    @property
    def feedback_filter(self) -> str:
        """Ratings of answers, on ``<prefix>/feedback/<device>``; shared like requests."""
        return self._shared(f"{self.settings.prefix}/feedback/+")

    @property
    def devices_filter(self) -> str:
        """Devices' retained birth messages, ``<prefix>/devices/<id>``; every box reads them."""
        return f"{self.settings.prefix}/devices/+"

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up."""
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes) -> None:
        """Fire-and-forget publish at QoS 0 (log records); dropped while disconnected."""
        if self._connected.is_set():
            self.client.publish(topic, payload, qos=0)

    async def command(self, topic: str, payload: bytes, retain: bool) -> None:
        """Publish at QoS 1 and return once the broker has acknowledged it (device commands).

        Raises EdgeRuntimeError while disconnected: a command is not queued for later.
        """
        if not self._connected.is_set():
            raise EdgeRuntimeError("not connected to the broker")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise EdgeRuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
        # Paho completes the message on its network thread; polling keeps this cancellable
        # by the tool's timeout.
        while not info.is_published():
            await asyncio.sleep(0.005)

    async def stop_taking_requests(self) -> None:
        """Unsubscribe from requests (a shutdown): the share group's other boxes take them."""
        self._taking_requests = False
        if self._connected.is_set():
            self.client.unsubscribe([self.request_filter, self.feedback_filter])

    def _shared(self, topic: str) -> str:
        group = self.settings.share_group
        return f"$share/{group}/{topic}" if group else topic

    async def __aenter__(self) -> MqttTransport:
        self._loop = asyncio.get_running_loop()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        # connect() resolves and opens the socket: keep it off the event loop.
        await self._loop.run_in_executor(
            None,
            lambda: self.client.connect(
                self.settings.host,
                self.settings.port,
                keepalive=self.settings.keepalive_s,
                clean_start=False,
                properties=properties,
            ),
        )
        self.client.loop_start()
        async with asyncio.timeout(self.settings.connect_timeout_s):
            await self._connected.wait()
        self._reconnector = self._loop.create_task(self._keep_connected(), name="mqtt-reconnect")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnector
        for task in list(self._tasks):
            await asyncio.wait([task], timeout=5)
        if self._connected.is_set():
            info = self.client.publish(self.status_topic, b"offline", qos=1, retain=True)
            await asyncio.get_running_loop().run_in_executor(None, info.wait_for_publish, 5)
        self.client.disconnect()
        self.client.loop_stop()

    async def _keep_connected(self) -> None:
        """Reconnect after a lost connection, with jittered exponential backoff."""
        loop = asyncio.get_running_loop()
        while True:
            await self._disconnected.wait()
            attempt = 0
            while not self._connected.is_set():
                delay = backoff(attempt, self._rng)
                log.info("reconnecting to the broker in %.1f s", delay)
                await asyncio.sleep(delay)
                attempt += 1
                # The old network thread ended with the connection; start a new one.
                await loop.run_in_executor(None, self.client.loop_stop)
                try:
                    await loop.run_in_executor(None, self.client.reconnect)
                except OSError as exc:
                    log.warning("broker still unreachable: %s", exc)
                    continue
                # reconnect() made a wake-up socket pair that loop_start() would replace
                # without closing (paho 2.2): close it first so no descriptor leaks.
                reset = getattr(self.client, "_reset_sockets", None)
                if reset is not None:
                    reset(sockpair_only=True)
                self.client.loop_start()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.connect_timeout_s):
                        await self._connected.wait()
            self.reconnects += 1

    # paho's thread ---------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        # paho ignores the broker's Maximum Packet Size; a publish over it gets us dropped.
        maximum = getattr(props, "MaximumPacketSize", None) if props else None
        self._max_packet = int(maximum) if maximum else None
        # paho leaves Nagle on: each small publish would wait for a delayed ACK (~40 ms).
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Subscribe on every connect: a durable session may have lost $share subscriptions.
        if self._taking_requests:
            client.subscribe(self.request_filter, qos=1)
            client.subscribe(self.feedback_filter, qos=1)
        if self._on_device is not None:
            client.subscribe(self.devices_filter, qos=1)
        if self._state is not None:
            # Every box keeps its own copy of device state: these are never shared.
            for topic in self.settings.state_topics:
                client.subscribe(topic, qos=1)
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._found)
        log.info(
            "connected to %s:%d as %s",
            self.settings.host,
            self.settings.port,
            self.settings.node_id,
        )

    def _packet_budget(self, topic: str, correlation: bytes | None) -> int | None:
        """Bytes left for a payload under the broker's Maximum Packet Size, if it set one."""
        if self._max_packet is None:
            return None
        # Fixed header, topic, packet id, properties (correlation, content type, seq/type).
        overhead = 5 + 2 + len(topic.encode()) + 2 + 64 + len(correlation or b"")
        return max(64, self._max_packet - overhead)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._lost)
        log.warning("disconnected from the broker: %s", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        prefix = self.settings.prefix
        if self._on_device is not None and message.topic.startswith(f"{prefix}/devices/"):
            device = message.topic[len(prefix) + len("/devices/") :]
            if device and "/" not in device:
                self._loop.call_soon_threadsafe(self._on_device, device, bytes(message.payload))
            client.ack(message.mid, message.qos)
            return
        if self._state is not None and not message.topic.startswith(
            (f"{prefix}/req/", f"{prefix}/feedback/")
        ):
            self._loop.call_soon_threadsafe(
                self._state.update, message.topic, bytes(message.payload)
            )
            client.ack(message.mid, message.qos)
            return
        self._loop.call_soon_threadsafe(self._spawn, message)

    # Event loop ------------------------------------------------------------

    def _found(self) -> None:
        self._disconnected.clear()
        self._connected.set()

    def _lost(self) -> None:
        self._connected.clear()
        if not self._stopping:
            self._disconnected.set()

    def _spawn(self, message: mqtt.MQTTMessage) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, message: mqtt.MQTTMessage) -> None:
        try:
            await self._answer(message)
        except Exception:
            log.exception("request on %s failed", message.topic)
        finally:
            # Acknowledged only once answered (or refused): a crash before this redelivers it.
            self.client.ack(message.mid, message.qos)

    async def _answer(self, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation: bytes | None = getattr(props, "CorrelationData", None) if props else None
        device = message.topic.rsplit("/", 1)[-1]
        feedback = message.topic.startswith(f"{self.settings.prefix}/feedback/")
        user = list(getattr(props, "UserProperty", []) or []) if props else []
        content_type = getattr(props, "ContentType", None) if props else None
        headers = {k.lower(): v for k, v in user}
        if content_type:
            headers["content-type"] = content_type
        try:
            kind = media_type(headers.get("content-type"))
        except EdgeRuntimeError:
            kind = JSON
        if response_topic is None and feedback:
            # A rating without a Response Topic wants no answer: record it and be done.
            await self._handler(
                _request(message, device, headers, correlation=None, tls=self._tls, kind="feedback")
            )
            return
        if response_topic is None:
            # MQTT 3.1.1 convention: answers go to <prefix>/res/<device>, the id in the body.
            response_topic = f"{self.settings.prefix}/res/{device}"
            correlation = _body_id(bytes(message.payload))
        key = f"{response_topic}\0{(correlation or b'').hex()}"
        if correlation and key in self._answered:
            for topic, body, publish_props in self._answered[key]:
                self.client.publish(topic, body, qos=1, properties=publish_props)
            return
        if correlation and key in self._in_progress:
            return
        self._in_progress.add(key)
        sent: list[tuple[str, bytes, Properties | None]] = []

        def publish(payload: dict[str, Any], chunk: Chunk | None) -> None:
            publish_props = Properties(PacketTypes.PUBLISH)
            if correlation:
                publish_props.CorrelationData = correlation
            publish_props.ContentType = CBOR if kind == CBOR else JSON
            # Which box answered: shared subscriptions spread a device's requests over several.
            publish_props.UserProperty = ("node", self.settings.node_id)
            if chunk is not None:
                publish_props.UserProperty = ("seq", str(chunk.seq))
                publish_props.UserProperty = ("type", chunk.type)
            body = encode(payload, kind)
            self.client.publish(response_topic, body, qos=1, properties=publish_props)
            sent.append((response_topic, body, publish_props))

        seq = 0
        limit = self._packet_budget(response_topic, correlation)

        async def sink(chunk: Chunk) -> None:
            # The transport numbers what it publishes: a delta too big for one packet goes
            # out as several, each under the broker's Maximum Packet Size.
            nonlocal seq
            for piece in _split(chunk.text, limit):
                publish({"seq": seq, "type": "delta", "text": piece}, Chunk(seq, "delta"))
                seq += 1

        # Message Expiry is the device's deadline: past it, the answer is useless to it.
        expiry = getattr(props, "MessageExpiryInterval", None) if props else None
        deadline = time.monotonic() + float(expiry) if expiry else None

        kind_of: RequestKind = "feedback" if feedback else "infer"
        request = _request(
            message,
            device,
            headers,
            correlation=correlation,
            tls=self._tls,
            kind=kind_of,
            deadline=deadline,
        )
        try:
            response = await self._handler(request, sink)
            if deadline is not None and time.monotonic() >= deadline and seq == 0:
                # Its Message Expiry passed while it waited: the device has given up on it.
                self.expired += 1
                log.info("dropped a request on %s: its message expiry passed", message.topic)
                return
            answer = self._payload_of(response)
            if seq > 0:
                # A stream ends with exactly one terminal chunk carrying the whole answer (its
                # text left out when that would not fit one packet: the deltas carried it).
                terminal: ChunkType = "error" if response.status >= 400 else "final"
                final = {"seq": seq, "type": terminal, **answer}
                if limit is not None and len(encode(final, kind)) > limit:
                    final.pop("text", None)
                publish(final, Chunk(seq=seq, type=terminal))
            else:
                if limit is not None and len(encode(answer, kind)) > limit:
                    answer = {
                        "error": {
                            "status": 413,
                            "message": "the answer is larger than the broker's maximum packet "
                            "size; ask for it with stream",
                        }
                    }
                publish(answer, None)
        finally:
            self._in_progress.discard(key)
        if correlation:
            self._answered[key] = sent
            while len(self._answered) > self.settings.answered_cache:
                self._answered.popitem(last=False)


def _request(
    message: mqtt.MQTTMessage,
    device: str,
    headers: dict[str, str],
    *,
    correlation: bytes | None,
    tls: bool,
    kind: RequestKind,
    deadline: float | None = None,
) -> Request:
    return Request(
        id=(correlation or b"").hex() or uuid.uuid4().hex,
        deadline=deadline,
        transport="mqtt",
        method="PUBLISH",
        path=message.topic,
        headers=(
            (":method", "PUBLISH"),
            (":path", message.topic),
            (":authority", device),
            (":scheme", "mqtts" if tls else "mqtt"),
            *headers.items(),
        ),
        body=bytes(message.payload),
        device_id=device,
        kind=kind,
    )


def _body_id(payload: bytes) -> bytes | None:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return str(value).encode() if value is not None else None


def _split(text: str, limit: int | None) -> list[str]:
    """Pieces of ``text`` whose JSON encoding stays under ``limit`` bytes (whole characters)."""
    if limit is None:
        return [text]
    # JSON escaping can grow a character to 12 bytes (a surrogate pair as \\uXXXX\\uXXXX);
    # size the pieces so even the worst case fits, after room for the envelope.
    room = max(1, (limit - 48) // 12)
    return [text[i : i + room] for i in range(0, len(text), room)] or [""]


def backoff(attempt: int, rng: random.Random, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds before reconnect ``attempt``: exponential, capped, with ±50% jitter."""
    delay: float = min(cap, base * 2.0**attempt) * rng.uniform(0.5, 1.5)
    return delay
