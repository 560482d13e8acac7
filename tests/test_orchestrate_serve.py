"""The design seed end to end: `serve` with the default config, a real weather service, devices
on MQTT (mosquitto_rr, mosquitto_pub) and CoAP (coap-client-notls), and feedback both ways.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
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


def retain(broker: int, topic: str, value: str) -> None:
    """A device's reading, retained on the broker as a sensor publishes it."""
    subprocess.run(
        ["mosquitto_pub", "-p", str(broker), "-t", topic, "-m", value, "-r", "-q", "1"],
        check=True,
        timeout=30,
    )


@contextmanager
def serving(tmp_path: Path, broker: int, coap_port: int) -> Iterator[Path]:
    """`serve` with the default config beside a weather service; yields the config's path."""
    with weather_service() as weather_port:
        config = config_for(tmp_path, broker, coap_port)
        config.write_text(config.read_text().replace("127.0.0.1:8081", f"127.0.0.1:{weather_port}"))
        log = (tmp_path / "daemon.log").open("w")
        daemon = subprocess.Popen([str(EXE), "serve", "--config", str(config)], stderr=log)
        try:
            wait_online(broker)
            yield config
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=30)
            log.close()
        assert code == 0, (tmp_path / "daemon.log").read_text()


def test_the_design_seed_over_mqtt_and_coap(tmp_path: Path, broker: int) -> None:
    coap_port = free_udp_port()
    with serving(tmp_path, broker, coap_port) as config:
        retain(broker, "sensors/kitchen/temperature", "21.5")
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


def test_the_default_model_answers_what_no_rule_matches(tmp_path: Path, broker: int) -> None:
    # No intent template matches these: the shipped model picks the tool and its arguments,
    # reads the observation and answers from it, in the request's language.
    with serving(tmp_path, broker, free_udp_port()):
        retain(broker, "sensors/bedroom/humidity", "48")
        for correlation, prompt, reply in [
            (
                "h-en",
                "what is the humidity in the bedroom",
                "The humidity in the bedroom is 48",
            ),
            ("h-zh", "卧室的湿度是多少", "卧室的湿度是48"),
        ]:
            answer = mqtt_rr(broker, "edge/req/sensor-1", {"prompt": prompt}, correlation)
            assert answer["intents"] == [], answer
            (call,) = answer["tool_calls"]
            # "bedroom" and "卧室" are both the area `bedroom` of the config.
            assert call["name"] == "sensor_reading", answer
            assert call["arguments"] == {"area": "bedroom", "sensor": "humidity"}
            assert call["result"]["value"] == 48
            assert answer["text"].startswith(reply), answer["text"]

        weather = mqtt_rr(
            broker,
            "edge/req/sensor-2",
            {"prompt": "what will the weather be like in Berlin tomorrow"},
            "w-en",
        )
        assert weather["intents"] == [], weather
        (call,) = weather["tool_calls"]
        assert (call["name"], call["arguments"]) == (
            "weather",
            {"city": "Berlin", "date": "tomorrow"},
        )
        low, high = call["result"]["low_c"], call["result"]["high_c"]
        assert f"{low} to {high} °C" in weather["text"], weather["text"]

        # A device with no reading: the answer says the call failed; the model does not
        # get to guess.
        unknown = mqtt_rr(broker, "edge/req/sensor-2", {"prompt": "is the desk lamp on"}, "d-en")
        (call,) = unknown["tool_calls"]
        assert call["name"] == "device_state" and "no reading" in call["error"]
        assert unknown["text"].startswith("device_state failed: no reading"), unknown

        refused = mqtt_rr(
            broker, "edge/req/sensor-2", {"prompt": "write a poem about the sea"}, "r-en"
        )
        assert refused["tool_calls"] == [] and refused["text"].startswith("Sorry"), refused
