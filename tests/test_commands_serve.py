"""Device commands end to end: `serve` with the shipped config, a real broker, a device that
announces its names and takes commands on its own topic."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import mqtt_rr
from test_coap import free_udp_port
from test_serve import EXE, config_for, wait_online


def publish(broker: int, topic: str, payload: str) -> None:
    command = ["mosquitto_pub", "-p", str(broker), "-t", topic, "-m", payload, "-r", "-q", "1"]
    subprocess.run(command, check=True, timeout=30)


def ask(broker: int, prompt: str, correlation: str) -> dict[str, Any]:
    return mqtt_rr(broker, "edge/req/hall-panel", {"prompt": prompt}, correlation)


def test_a_command_reaches_the_device_before_the_answer_says_done(
    tmp_path: Path, broker: int
) -> None:
    config = config_for(tmp_path, broker, free_udp_port())
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([str(EXE), "serve", "--config", str(config)], stderr=log)
    commands = subprocess.Popen(
        ["mosquitto_sub", "-p", str(broker), "-t", "devices/+/set", "-v", "-C", "1", "-W", "120"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_online(broker)
        lamp = {"kind": "light", "names": ["desk lamp", "台灯"]}
        publish(broker, "edge/devices/lamp-7", json.dumps(lamp))
        deadline = time.monotonic() + 10
        for attempt in range(100):
            # The device's names reach the orchestrator shortly after its birth message.
            off = ask(broker, "turn off the desk lamp", f"c{attempt}")
            if off.get("intents") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        # HassTurnOff names the device; set_device's intent_arguments supply the state.
        assert off["intents"][0]["name"] == "HassTurnOff", off
        assert off["tool_calls"][0]["name"] == "set_device"
        assert off["tool_calls"][0]["arguments"] == {"name": "lamp-7", "state": "off"}
        assert off["tool_calls"][0]["result"] == {"ok": True}
        assert off["text"] == "Done: the lamp-7 is now off."
        assert commands.communicate(timeout=60)[0].strip() == "devices/lamp-7/set off"

        # The Chinese name resolves to the same device.
        on = ask(broker, "打开台灯", "z1")
        assert on["tool_calls"][0]["arguments"] == {"name": "lamp-7", "state": "on"}, on
    finally:
        commands.kill()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
        log.close()
