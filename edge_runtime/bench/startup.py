"""`bench startup`: process start to READY=1 (cold and with the module cache), then idle RSS and
CPU over a minute; beside a bare Python process that only loads the same model."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edge_runtime.bench.machine import describe_machine
from edge_runtime.bench.peers import free_port, free_udp_port, start_broker
from edge_runtime.bench.report import markdown_table, times
from edge_runtime.device import probe

# The floor: a Python process that imports onnxruntime and opens the same graph, nothing else.
_BARE = """
import sys, time
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[2])
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print("READY", flush=True)
time.sleep(float(sys.argv[3]))
"""


@dataclass(frozen=True, slots=True)
class StartupBenchArgs:
    """What `bench startup` measures."""

    json: bool = False
    config: Path = Path("edge-runtime.toml")
    repeats: int = 3
    idle_s: float = 60.0

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.idle_s < 1:
            raise ValueError("repeats >= 1 and idle_s >= 1")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _config(args: StartupBenchArgs, directory: Path, broker: int, cache: Path) -> Path:
    """The given config on a bench broker, with its own module cache and ports."""
    text = args.config.read_text()
    base = args.config.resolve().parent
    text = text.replace('path = "models/', f'path = "{base}/models/')
    text = text.replace('module = "filters/', f'module = "{base}/filters/')
    text = text.replace("port = 1883", f"port = {broker}")
    text = text.replace('state_dir = "state"', f'state_dir = "{directory / "state"}"')
    text += f'\n[filter_host]\ncache_dir = "{cache}"\n'
    text += f'\n[coap]\nhost = "::1"\nport = {free_udp_port()}\n'
    text += f"\n[metrics]\nport = {free_port()}\n"
    path = directory / "edge-runtime.toml"
    path.write_text(text)
    return path


def _until_ready(notify: socket.socket, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode} before READY")
        try:
            if b"READY=1" in notify.recv(4096).split(b"\n"):
                return
        except TimeoutError:
            continue
    raise RuntimeError("no READY=1 within the timeout")


def _daemon_once(
    config: Path, directory: Path, idle_s: float | None
) -> tuple[float, dict[str, float] | None]:
    """Seconds from spawn to READY=1; with ``idle_s``, RSS and CPU over that idle time."""
    path = directory / f"notify-{time.monotonic_ns()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(0.05)
        env = {**os.environ, "NOTIFY_SOCKET": str(path)}
        exe = Path(sys.executable).parent / "edge-runtime"
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(exe), "serve", "--config", str(config)], env=env, stderr=subprocess.DEVNULL
        )
        try:
            _until_ready(notify, process, 120)
            ready = time.perf_counter() - started
            idle = _idle(process.pid, idle_s) if idle_s else None
        finally:
            process.terminate()
            process.wait(timeout=60)
    return ready, idle


def _idle(pid: int, seconds: float) -> dict[str, float]:
    time.sleep(1.0)  # past the start-up work still settling
    cpu = _cpu_seconds(pid)
    peak = _rss_mib(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(1.0)
        peak = max(peak, _rss_mib(pid))
    return {
        "cpu_percent": round((_cpu_seconds(pid) - cpu) / seconds * 100, 3),
        "rss_mib": round(_rss_mib(pid), 1),
        "rss_peak_mib": round(peak, 1),
    }


def _bare_once(
    graph: Path, threads: int, idle_s: float | None
) -> tuple[float, dict[str, float] | None]:
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", _BARE, str(graph), str(threads), str((idle_s or 0) + 5)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "READY":
            raise RuntimeError("the bare loader did not start")
        ready = time.perf_counter() - started
        idle = _idle(process.pid, idle_s) if idle_s else None
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    return ready, idle


def run(args: StartupBenchArgs, out: TextIO) -> dict[str, Any]:
    """Measure, and print a table unless ``args.json``."""
    from edge_runtime.device import resolve_settings
    from edge_runtime.model.manifest import read_manifest
    from edge_runtime.model.runtime import find_graph

    resolved = resolve_settings(args.config)
    model_dir = resolved.settings.model.path
    graph = find_graph(model_dir, read_manifest(model_dir))
    device = probe()
    cold: list[float] = []
    cached: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-startup-") as tmp:
        directory = Path(tmp)
        broker, port = start_broker(directory)
        try:
            for n in range(args.repeats):
                cache = directory / f"cache-{n}"
                config = _config(args, directory, port, cache)
                cold.append(_daemon_once(config, directory, None)[0])
                cached.append(_daemon_once(config, directory, None)[0])
                bare.append(_bare_once(graph, resolved.threads, None)[0])
            config = _config(args, directory, port, directory / "cache-0")
            _, idle = _daemon_once(config, directory, args.idle_s)
            _, bare_idle = _bare_once(graph, resolved.threads, args.idle_s)
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    assert idle is not None and bare_idle is not None
    result = {
        "machine": describe_machine(device, resolved.threads),
        "model": str(model_dir),
        "filters": len(resolved.settings.filters),
        "repeats": args.repeats,
        "ready_s": {
            "cold": round(statistics.median(cold), 3),
            "cached": round(statistics.median(cached), 3),
            "bare_model_load": round(statistics.median(bare), 3),
            "cold_runs": [round(x, 3) for x in cold],
            "cached_runs": [round(x, 3) for x in cached],
        },
        "idle_s": args.idle_s,
        "idle": {"serve": idle, "bare_model_load": bare_idle},
        "ratios": {
            "ready_cached_vs_bare": round(statistics.median(cached) / statistics.median(bare), 2),
            "rss_vs_bare": round(idle["rss_mib"] / bare_idle["rss_mib"], 2),
        },
    }
    if not args.json:
        out.write(render(result) + "\n")
    return result


def render(result: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    ready = result["ready_s"]
    idle = result["idle"]
    lines = markdown_table(
        ["process", "start to READY s (median)", "idle CPU %", "idle RSS MiB", "peak RSS MiB"],
        [
            ["serve, cold module cache", f"{ready['cold']:.2f}", "-", "-", "-"],
            [
                "serve, module cache warm",
                f"{ready['cached']:.2f}",
                f"{idle['serve']['cpu_percent']:.2f}",
                f"{idle['serve']['rss_mib']:.0f}",
                f"{idle['serve']['rss_peak_mib']:.0f}",
            ],
            [
                "baseline: python + onnxruntime session only",
                f"{ready['bare_model_load']:.2f}",
                f"{idle['bare_model_load']['cpu_percent']:.2f}",
                f"{idle['bare_model_load']['rss_mib']:.0f}",
                f"{idle['bare_model_load']['rss_peak_mib']:.0f}",
            ],
        ],
        left=1,
    )
    ratios = result["ratios"]
    lines += [
        "",
        f"READY with the cache vs the bare model load: {times(ratios['ready_cached_vs_bare'])}; "
        f"idle RSS vs bare: {times(ratios['rss_vs_bare'])} "
        f"(idle over {result['idle_s']:.0f} s)",
    ]
    return "\n".join(lines)
