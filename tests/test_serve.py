"""`edge-runtime serve` as systemd runs it, with `ask` and the mosquitto clients as devices."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port
from test_coap import free_udp_port

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "edge-runtime"


def config_for(tmp_path: Path, port: int, coap_port: int, metrics_port: int | None = None) -> Path:
    text = (ROOT / "edge-runtime.toml").read_text()
    text = text.replace("port = 1883", f"port = {port}")
    text = text.replace('path = "models/', f'path = "{ROOT / "models"}/')
    text = text.replace('module = "filters/', f'module = "{ROOT / "filters"}/')
    text += f'\n[filter_host]\ncache_dir = "{tmp_path / "cache"}"\n'
    text += f'\n[coap]\nhost = "::1"\nport = {coap_port}\n'
    text += f"\n[metrics]\nport = {metrics_port or free_port()}\n"
    path = tmp_path / "edge-runtime.toml"
    path.write_text(text.replace("[mqtt]", '[mqtt]\nnode_id = "box-1"'))
    return path


def wait_online(port: int) -> None:
    done = subprocess.run(
        ["mosquitto_sub", "-p", str(port), "-t", "edge/status/box-1", "-C", "1", "-W", "60"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.strip() == "online", done.stderr


def test_serve_answers_and_stops_cleanly(tmp_path: Path, broker: int) -> None:
    coap_port = free_udp_port()
    config = config_for(tmp_path, broker, coap_port)
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([str(EXE), "serve", "--config", str(config)], stderr=log)
    try:
        wait_online(broker)
        asked = subprocess.run(
            [
                str(EXE),
                "ask",
                "--mqtt",
                f"mqtt://127.0.0.1:{broker}",
                "--stream",
                "--timeout",
                "30",
                "Turn on the kitchen light",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.strip()
        echoed = subprocess.run(
            [
                "mosquitto_rr",
                "-p",
                str(broker),
                "-t",
                "edge/req/diag",
                "-e",
                "r/x",
                "-m",
                json.dumps({"prompt": "mail jane@example.com"}),
                "-D",
                "publish",
                "correlation-data",
                "c1",
                "-W",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        answer = json.loads(echoed.stdout)
        # router sent diag requests to echo; redact rewrote the address on the way in.
        assert (answer["route"], answer["text"]) == ("echo", "mail [email]")
        oversize = subprocess.run(
            [
                "mosquitto_rr",
                "-p",
                str(broker),
                "-t",
                "edge/req/sensor-1",
                "-e",
                "r/y",
                "-m",
                json.dumps({"prompt": "x" * 20000}),
                "-D",
                "publish",
                "correlation-data",
                "c2",
                "-W",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert json.loads(oversize.stdout)["error"]["status"] == 413
        coap = subprocess.run(
            [
                "coap-client-notls",
                "-B",
                "30",
                "-m",
                "post",
                "-t",
                "json",
                "-e",
                json.dumps({"prompt": "ping", "max_tokens": 4}),
                f"coap://[::1]:{coap_port}/infer",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert coap.stdout.strip(), coap.stderr
        coap_answer = json.loads(coap.stdout.strip().splitlines()[-1])
        # The router's default decides the route; a short answer fits one CoAP message.
        assert coap_answer["route"] == "orchestrate"
        assert coap_answer["usage"]["completion_tokens"] <= 4
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()
    status = subprocess.run(
        ["mosquitto_sub", "-p", str(broker), "-t", "edge/status/box-1", "-C", "1", "-W", "10"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.stdout.strip() == "offline"


def test_two_daemons_share_one_workload(tmp_path: Path, broker: int) -> None:
    daemons = []
    for node in ("box-1", "box-2"):
        directory = tmp_path / node
        directory.mkdir()
        config = config_for(directory, broker, free_udp_port())
        config.write_text(config.read_text().replace('node_id = "box-1"', f'node_id = "{node}"'))
        log = (directory / "daemon.log").open("w")
        daemons.append(
            (subprocess.Popen([str(EXE), "serve", "--config", str(config)], stderr=log), log)
        )
    try:
        for node in ("box-1", "box-2"):
            done = subprocess.run(
                [
                    "mosquitto_sub",
                    "-p",
                    str(broker),
                    "-t",
                    f"edge/status/{node}",
                    "-C",
                    "1",
                    "-W",
                    "60",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.stdout.strip() == "online"
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-V",
                "5",
                "-p",
                str(broker),
                "-t",
                "r/shared",
                "-C",
                "20",
                "-W",
                "60",
                "-F",
                "%P|%p",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        for index in range(20):
            subprocess.run(
                [
                    "mosquitto_pub",
                    "-V",
                    "5",
                    "-p",
                    str(broker),
                    "-q",
                    "1",
                    "-t",
                    "edge/req/diag",
                    "-m",
                    json.dumps({"prompt": f"n{index}"}),
                    "-D",
                    "publish",
                    "response-topic",
                    "r/shared",
                    "-D",
                    "publish",
                    "correlation-data",
                    f"c{index}",
                ],
                check=True,
                timeout=30,
            )
        out, _ = sub.communicate(timeout=90)
    finally:
        for daemon, log in daemons:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            log.close()
    answers = [line.split("|", 1) for line in out.splitlines()]
    assert sorted(json.loads(body)["text"] for _, body in answers) == sorted(
        f"n{i}" for i in range(20)
    )
    nodes = {props for props, _ in answers}
    assert {"node:box-1", "node:box-2"} <= nodes
