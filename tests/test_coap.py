"""The CoAP transport against libcoap's coap-client-notls (it exits 0 on errors)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from edge_runtime.model.runtime import Model
from edge_runtime.pipeline import Pipeline, PipelineSettings, answer_payload
from edge_runtime.transports.coap import CoapTransport


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


async def client(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "coap-client-notls",
        "-B",
        "20",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    return out.decode("utf-8", "replace")


def exchange(model: Model, *calls: tuple[str, ...]) -> list[str]:
    port = free_udp_port()

    async def main() -> list[str]:
        # Short answers: libcoap 4.3 hangs on a Block2 answer that came as a separate response.
        pipeline = Pipeline(PipelineSettings(max_payload_bytes=2048, max_new_tokens=8), model=model)
        try:
            async with CoapTransport(
                pipeline.handle, answer_payload, host="::1", port=port, max_payload_bytes=2048
            ):
                return [
                    await client(*[a.replace("PORT", str(port)) for a in call]) for call in calls
                ]
        finally:
            pipeline.close()

    return asyncio.run(main())


def test_infer_health_and_discovery(tiny_model: Model) -> None:
    echo, direct, health, core = exchange(
        tiny_model,
        (
            "-m",
            "post",
            "-t",
            "json",
            "-e",
            json.dumps({"prompt": "hi", "route": "echo"}),
            "coap://[::1]:PORT/infer",
        ),
        (
            "-m",
            "post",
            "-t",
            "json",
            "-e",
            json.dumps({"prompt": "hello", "max_tokens": 8}),
            "coap://[::1]:PORT/infer",
        ),
        ("coap://[::1]:PORT/health",),
        ("coap://[::1]:PORT/.well-known/core",),
    )
    assert json.loads(echo.strip().splitlines()[-1])["text"] == "hi"
    assert json.loads(direct.strip().splitlines()[-1])["route"] == "direct"
    assert json.loads(health)["status"] == "ready"
    assert "</infer>" in core
    assert 'rt="edge-runtime.infer"' in core


def test_errors_are_coap_codes(tiny_model: Model) -> None:
    bad, large, fmt, good = exchange(
        tiny_model,
        ("-m", "post", "-t", "json", "-e", '{"prompt": ', "coap://[::1]:PORT/infer"),
        (
            "-m",
            "post",
            "-t",
            "json",
            "-e",
            json.dumps({"prompt": "x" * 3000}),
            "coap://[::1]:PORT/infer",
        ),
        ("-m", "post", "-t", "41", "-e", "<a/>", "coap://[::1]:PORT/infer"),
        ("-m", "post", "-t", "text", "-e", "still here", "-A", "json", "coap://[::1]:PORT/infer"),
    )
    assert "4.00" in bad and "malformed JSON" in bad
    assert "4.13" in large
    assert "4.15" in fmt
    assert json.loads(good.strip().splitlines()[-1])["usage"]["prompt_tokens"] > 0


def test_ask_over_coap(tiny_model: Model) -> None:
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "edge-runtime")
    port = free_udp_port()

    async def main() -> tuple[str, str]:
        pipeline = Pipeline(PipelineSettings(max_new_tokens=8), model=tiny_model)
        try:
            async with CoapTransport(pipeline.handle, answer_payload, host="::1", port=port):
                results = []
                for text in ("hello", "x" * 70_000):
                    process = await asyncio.create_subprocess_exec(
                        exe,
                        "ask",
                        "--coap",
                        f"coap://[::1]:{port}",
                        "--timeout",
                        "20",
                        text,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                    )
                    out, err = await asyncio.wait_for(process.communicate(), 40)
                    results.append(f"{process.returncode}|{out.decode()}|{err.decode()}")
                return results[0], results[1]
        finally:
            pipeline.close()

    good, too_large = asyncio.run(main())
    code, out, _ = good.split("|", 2)
    assert code == "0"
    assert out.strip()
    code, _, err = too_large.split("|", 2)
    assert code == "1"
    assert "4.13" in err


def test_jobs_stream_deltas_to_observers(tiny_model: Model) -> None:
    port = free_udp_port()
    # Seed 2 makes the tiny model write all 600 tokens: observation starts well before the end.
    body = {"prompt": "What is the temperature in the kitchen?", "temperature": 0.8, "seed": 2}

    async def main() -> tuple[str, str]:
        settings = PipelineSettings(max_new_tokens=600, coalesce_chars=16)
        pipeline = Pipeline(settings, model=tiny_model)
        try:
            async with CoapTransport(pipeline.handle, answer_payload, host="::1", port=port):
                created = await client(
                    "-m",
                    "post",
                    "-t",
                    "json",
                    "-e",
                    json.dumps(body),
                    f"coap://[::1]:{port}/jobs",
                )
                job = json.loads(created.strip().splitlines()[-1])
                observed = await client("-s", "8", "-w", f"coap://[::1]:{port}{job['location']}")
                return created, observed
        finally:
            pipeline.close()

    created, observed = asyncio.run(main())
    assert json.loads(created.strip().splitlines()[-1])["location"].startswith("/jobs/")
    states = [json.loads(line) for line in observed.splitlines() if line.startswith("{")]
    assert states[-1]["type"] == "final"
    assert [s["type"] for s in states].count("final") == 1
    seqs = [s["seq"] for s in states]
    assert seqs == sorted(seqs)
    assert states[-1]["usage"]["completion_tokens"] == 600
    # Deltas arrive before the final state, each notification within one CoAP block.
    assert any(s["type"] == "delta" for s in states)
    assert all(len(json.dumps(s).encode()) <= 1024 for s in states)


def test_unknown_paths_and_filters_over_coap(tiny_model: Model, tmp_path: Path) -> None:
    from edge_runtime.config import FilterHostSettings, FilterSettings
    from edge_runtime.filters.service import FilterService

    filters = FilterService(FilterHostSettings(cache_dir=tmp_path / "cache"))
    shipped = Path(__file__).resolve().parent.parent / "filters"
    router = '{"default": "direct", "rules": [{"path_prefix": "/infer", "route": "echo"}]}'
    filters.load(
        [
            FilterSettings(
                name="size-guard", module=shipped / "size-guard.wasm", config='{"max_bytes": 64}'
            ),
            FilterSettings(name="redact", module=shipped / "redact.wasm", config="{}"),
            FilterSettings(name="router", module=shipped / "router.wasm", config=router),
        ]
    )
    port = free_udp_port()

    async def main() -> tuple[str, str, str]:
        pipeline = Pipeline(PipelineSettings(max_new_tokens=4), model=tiny_model, filters=filters)
        try:
            async with CoapTransport(pipeline.handle, answer_payload, host="::1", port=port):
                missing = await client(f"coap://[::1]:{port}/nope")
                guarded = await client(
                    "-m",
                    "post",
                    "-t",
                    "json",
                    "-e",
                    json.dumps({"prompt": "y" * 100}),
                    f"coap://[::1]:{port}/infer",
                )
                rewritten = await client(
                    "-m",
                    "post",
                    "-t",
                    "json",
                    "-e",
                    json.dumps({"prompt": "mail jane@x.org"}),
                    f"coap://[::1]:{port}/infer",
                )
                return missing, guarded, rewritten
        finally:
            pipeline.close()

    try:
        missing, guarded, rewritten = asyncio.run(main())
    finally:
        filters.close()
    assert "4.04" in missing
    # The size-guard filter rejected it: its 413 comes out as CoAP 4.13.
    assert "4.13" in guarded
    # redact rewrote the body and router chose the echo route.
    answer = json.loads(rewritten.strip().splitlines()[-1])
    assert (answer["route"], answer["text"]) == ("echo", "mail [email]")
