"""The design seed end to end: `serve` with the default config, a real weather service, devices
on MQTT (mosquitto_rr, mosquitto_pub) and CoAP (coap-client-notls), and feedback both ways.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from conftest import mqtt_rr
from test_coap import free_udp_port
from test_serve import EXE, config_for, wait_online
from weather import weather_service


def coap(
    url: str, body: dict[str, Any], *, method: str = "post", non: bool = False
) -> tuple[str, str]:
    # libcoap 4.3.1 cannot reassemble a block-wise separate response to a CON request (see the
    # README), and an answer with its plan is over one block: long answers are asked with NON.
    done = subprocess.run(
        [
            "coap-client-notls",
            *(["-N"] if non else []),
            "-B",
            "60",
            "-m",
            method,
            "-t",
            "json",
            "-e",
            json.dumps(body, ensure_ascii=False),
            "-v",
            "6",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    return done.stdout, done.stderr


def check_weather(answer: dict[str, Any], city: str) -> dict[str, Any]:
    assert "error" not in answer, answer
    assert answer["route"] == "orchestrate"
    assert [i["name"] for i in answer["intents"]] == ["weather", "compose_reminder"]
    (call,) = answer["tool_calls"]
    assert call["name"] == "weather"
    assert call["arguments"] == {"city": city, "date": "tomorrow"}
    result = call["result"]
    assert result["city"] == city and result["date"] == "tomorrow"
    steps = answer["steps"]
    assert steps[1]["kind"] == "generate" and steps[1]["depends_on"] == [steps[0]["id"]]
    assert all(step["status"] == "ok" for step in steps), steps
    return dict(result)


def test_the_design_seed_over_mqtt_and_coap(tmp_path: Path, broker: int) -> None:
    coap_port = free_udp_port()
    with weather_service() as weather_port:
        config = config_for(tmp_path, broker, coap_port)
        config.write_text(config.read_text().replace("127.0.0.1:8081", f"127.0.0.1:{weather_port}"))
        log = (tmp_path / "daemon.log").open("w")
        daemon = subprocess.Popen([str(EXE), "serve", "--config", str(config)], stderr=log)
        try:
            wait_online(broker)
            subprocess.run(
                [
                    "mosquitto_pub",
                    "-p",
                    str(broker),
                    "-t",
                    "sensors/kitchen/temperature",
                    "-m",
                    "21.5",
                    "-r",
                    "-q",
                    "1",
                ],
                check=True,
                timeout=30,
            )
            zh = mqtt_rr(
                broker,
                "edge/req/sensor-1",
                {
                    "prompt": "查询北京明天的天气并生成一段提醒文案",
                    "max_tokens": 16,
                    "temperature": 0,
                },
                "zh1",
            )
            result = check_weather(zh, "北京")
            # The answer tells the weather in the request's language, from the tool's figures.
            assert zh["text"].startswith(
                f"北京明天天气：{result['condition_zh']}，{result['low_c']}～{result['high_c']}°C"
            ), zh["text"]

            en_out, _en_err = coap(
                f"coap://[::1]:{coap_port}/infer?device=sensor-2",
                {
                    "prompt": "query tomorrow's weather in Beijing and write a reminder",
                    "max_tokens": 8,
                },
                non=True,
            )
            en = json.loads(en_out.strip().splitlines()[-1])
            result = check_weather(en, "Beijing")
            assert en["text"].startswith(
                f"Weather in Beijing tomorrow: {result['condition']}, "
                f"{result['low_c']} to {result['high_c']} °C"
            ), en["text"]

            temperature = mqtt_rr(
                broker,
                "edge/req/sensor-1",
                {"prompt": "what's the temperature in the kitchen"},
                "t1",
            )
            assert temperature["tool_calls"][0]["result"]["value"] == 21.5
            assert temperature["text"].startswith("It is 21.5 °C in the kitchen")

            # Asked again, the weather answer comes from the cache: the tool allows 600 s.
            again = mqtt_rr(
                broker,
                "edge/req/sensor-3",
                {
                    "prompt": "查询北京明天的天气并生成一段提醒文案",
                    "max_tokens": 16,
                    "temperature": 0,
                },
                "zh2",
            )
            assert again["cached"] is True and again["text"] == zh["text"]

            # Feedback: MQTT 5 with a Response Topic gets an acknowledgement; the rated answer
            # (correlation "zh2" is its id, hex-encoded) leaves the cache.
            rated = mqtt_rr(
                broker,
                "edge/feedback/sensor-3",
                {"id": b"zh2".hex(), "rating": 1, "comment": "too vague"},
                "f1",
            )
            assert (rated["route"], rated["recorded"], rated["known"], rated["evicted"]) == (
                "feedback",
                True,
                True,
                True,
            )
            fresh = mqtt_rr(
                broker,
                "edge/req/sensor-3",
                {
                    "prompt": "查询北京明天的天气并生成一段提醒文案",
                    "max_tokens": 16,
                    "temperature": 0,
                },
                "zh3",
            )
            assert "cached" not in fresh

            out, err = coap(
                f"coap://[::1]:{coap_port}/feedback?device=sensor-2", {"id": en["id"], "rating": 5}
            )
            assert "2.04" in err + out, err
            bad_out, bad_err = coap(f"coap://[::1]:{coap_port}/feedback", {"id": "x", "rating": 0})
            assert "4.00" in bad_err + bad_out
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=30)
            log.close()
        assert code == 0, (tmp_path / "daemon.log").read_text()

    exported = subprocess.run(
        [str(EXE), "feedback", "export", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(r["rating"], r["request"]) for r in rows] == [
        (1, "查询北京明天的天气并生成一段提醒文案"),
        (5, "query tomorrow's weather in Beijing and write a reminder"),
    ]
    assert rows[1]["answer"] == en["text"]
