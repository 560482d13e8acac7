"""`bench orchestrator`: a rule-matched tool request, a cache hit and a model miss, with baselines.

The orchestrator's own overhead is each request's time minus the time spent inside the tool's
HTTP call or inside the model, measured on the same request.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from edge_runtime.bench.machine import describe_machine
from edge_runtime.bench.report import markdown_table, times
from edge_runtime.config import Settings
from edge_runtime.device import probe
from edge_runtime.model.constrain import Grounding
from edge_runtime.model.runtime import load_model
from edge_runtime.orchestrator.llm import DeltaSink, Generated, Generator, ModelGenerator
from edge_runtime.orchestrator.service import Ask, Orchestrator


@dataclass(frozen=True, slots=True)
class OrchestratorBenchArgs:
    """What `bench orchestrator` measures."""

    json: bool = False
    model: Path = Path("models/glm-tiny")
    weather_service: Path = Path("examples/weather_service.py")
    requests: int = 200
    model_requests: int = 30
    new_tokens: int = 16
    warmup: int = 20

    def __post_init__(self) -> None:
        if self.requests < 20 or self.model_requests < 5:
            raise ValueError("requests must be >= 20 and model_requests >= 5")


class _TimedGenerator:
    """A Generator that adds up the time spent inside the model."""

    def __init__(self, inner: Generator):
        self.inner = inner
        self.spent = 0.0
        self.calls = 0

    @property
    def identity(self) -> str:
        return self.inner.identity

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def deterministic(self, params: Mapping[str, Any]) -> bool:
        return self.inner.deterministic(params)

    async def __call__(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        params: Mapping[str, Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
        on_delta: DeltaSink | None = None,
        deadline: float | None = None,
        grounding: str | Grounding | None = None,
    ) -> Generated:
        started = time.perf_counter()
        self.calls += 1
        try:
            return await self.inner(
                messages,
                params=params,
                tools=tools,
                on_delta=on_delta,
                deadline=deadline,
                grounding=grounding,
            )
        finally:
            self.spent += time.perf_counter() - started


def _settings(port: int, state_dir: Path, caching: bool) -> Settings:
    return Settings.model_validate(
        {
            "enable_caching": caching,
            "state_dir": str(state_dir),
            "orchestrator": {
                "http_allow": [f"http://127.0.0.1:{port}/"],
                "languages": ["en", "zh-CN"],
            },
            "tools": [
                {
                    "name": "weather",
                    "kind": "http",
                    "intents": ["weather"],
                    "url": f"http://127.0.0.1:{port}/weather?city={{city}}&date={{date}}",
                    "cache_ttl_s": 600,
                    "parameters": {
                        "city": {},
                        "date": {
                            "enum": ["today", "tomorrow", "day_after_tomorrow"],
                            "default": "today",
                        },
                    },
                    "answer": {"en": "{city}: {condition}, {low_c} to {high_c} °C"},
                }
            ],
        }
    )


def _summary(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "n": len(ordered),
    }


async def _measure(
    count: int,
    warmup: int,
    one: Callable[[int], Awaitable[float]],
) -> tuple[list[float], list[float]]:
    """Totals and own-overheads of ``count`` requests after ``warmup`` unmeasured ones."""
    for n in range(warmup):
        await one(-1 - n)
    totals: list[float] = []
    overheads: list[float] = []
    for n in range(count):
        started = time.perf_counter()
        inside = await one(n)
        total = time.perf_counter() - started
        totals.append(total)
        overheads.append(total - inside)
    return totals, overheads


async def _run(args: OrchestratorBenchArgs, port: int, state_dir: Path) -> dict[str, Any]:
    model = load_model(args.model, threads=probe().effective_threads)
    generator = _TimedGenerator(ModelGenerator(model))
    results: dict[str, Any] = {}
    try:
        for caching in (False, True):
            orch = Orchestrator.build(
                _settings(port, state_dir / str(caching), caching), generator=generator
            )
            # The agent step shows the model the tool list: the baseline's prompt has it too.
            schemas = orch.tools.schemas()
            tool = orch.tools.tools["weather"]
            original = tool.run
            in_tool = [0.0]

            async def timed_run(
                arguments: dict[str, Any],
                timeout: float,
                device: str = "",
                original: Any = original,
                in_tool: list[float] = in_tool,
            ) -> Any:
                started = time.perf_counter()
                try:
                    return await original(arguments, timeout, device)
                finally:
                    in_tool[0] += time.perf_counter() - started

            tool.run = timed_run  # type: ignore[method-assign]

            async def ask(text: str, n: int, orch: Orchestrator = orch) -> None:
                await orch.answer(
                    Ask(
                        id=f"b{n}",
                        device="bench",
                        messages=[{"role": "user", "content": text}],
                        params={"max_new_tokens": args.new_tokens},
                        deadline=time.monotonic() + 60,
                    ),
                    "orchestrate",
                )

            if not caching:

                async def rule_tool(n: int, in_tool: list[float] = in_tool) -> float:
                    in_tool[0] = 0.0
                    await ask(f"query tomorrow's weather in city{n}", n)
                    return in_tool[0]

                totals, overheads = await _measure(args.requests, args.warmup, rule_tool)
                results["rule_tool"] = _summary(totals)
                results["rule_tool_overhead"] = _summary(overheads)

                async def model_miss(n: int, in_tool: list[float] = in_tool) -> float:
                    # The model's turns and the tools it called are not the orchestrator's.
                    generator.spent = 0.0
                    in_tool[0] = 0.0
                    await ask(f"tell me something about topic number {n}", n)
                    return generator.spent + in_tool[0]

                turns_before = generator.calls
                totals, overheads = await _measure(args.model_requests, 3, model_miss)
                # The agent loop may call tools and ask the model again: turns per request.
                results["model_turns_per_miss"] = round(
                    (generator.calls - turns_before) / (args.model_requests + 3), 2
                )
                results["model_miss"] = _summary(totals)
                results["model_miss_overhead"] = _summary(overheads)
            else:
                await ask("query tomorrow's weather in Beijing", 0)

                async def cache_hit(n: int) -> float:
                    await ask("query tomorrow's weather in Beijing", n)
                    return 0.0

                totals, _ = await _measure(args.requests, args.warmup, cache_hit)
                results["cache_hit"] = _summary(totals)
                assert orch.cache is not None and orch.cache.hits >= args.requests
            await orch.close()

        # Baselines: the same HTTP call with a bare client, the same generation called directly.
        async with httpx.AsyncClient() as client:

            async def bare_http(n: int) -> float:
                response = await client.get(
                    f"http://127.0.0.1:{port}/weather", params={"city": f"c{n}", "date": "today"}
                )
                response.json()
                return 0.0

            totals, _ = await _measure(args.requests, args.warmup, bare_http)
            results["bare_http"] = _summary(totals)

        async def bare_generation(n: int) -> float:
            # The same turn the agent step asks for: tool list, grounded tool-call grammar.
            message = f"tell me something about topic number {n}"
            await generator.inner(
                [{"role": "user", "content": message}],
                params={"max_new_tokens": args.new_tokens},
                tools=schemas,
                grounding=message,
            )
            return 0.0

        totals, _ = await _measure(args.model_requests, 3, bare_generation)
        results["bare_generation"] = _summary(totals)
    finally:
        model.close()
    return results


def run(args: OrchestratorBenchArgs, out: TextIO) -> dict[str, Any]:
    """Start the weather service, measure, print a table unless ``args.json``."""
    device = probe()
    with tempfile.TemporaryDirectory(prefix="edge-bench-orch-") as tmp:
        service = subprocess.Popen(
            [sys.executable, str(args.weather_service), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert service.stdout is not None
            line = service.stdout.readline()
            port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
            measured = asyncio.run(_run(args, port, Path(tmp)))
        finally:
            service.terminate()
            service.wait(timeout=10)
            if service.stdout is not None:
                service.stdout.close()
    turns = measured.pop("model_turns_per_miss")
    p50 = {k: v["p50_ms"] for k, v in measured.items()}
    result = {
        "machine": describe_machine(device, device.effective_threads),
        "requests": args.requests,
        "model_requests": args.model_requests,
        "new_tokens": args.new_tokens,
        "latency": measured,
        "model_turns_per_miss": turns,
        "ratios_p50": {
            "rule_tool_vs_bare_http": round(p50["rule_tool"] / p50["bare_http"], 2),
            "cache_hit_vs_rule_tool": round(p50["cache_hit"] / p50["rule_tool"], 3),
            "model_miss_vs_bare_generation": round(p50["model_miss"] / p50["bare_generation"], 2),
        },
        "overhead_p50_ms": {
            "rule_tool": p50["rule_tool_overhead"],
            "model_miss": p50["model_miss_overhead"],
            "cache_hit": p50["cache_hit"],
        },
    }
    if not args.json:
        out.write(render(result) + "\n")
    return result


def render(result: dict[str, Any]) -> str:
    """The report as a Markdown table and the ratios."""
    labels = {
        "rule_tool": "rule-matched, one http tool (cache off)",
        "rule_tool_overhead": "  of which the orchestrator (minus the HTTP call)",
        "bare_http": "baseline: the same GET with a bare httpx client",
        "cache_hit": "cache hit",
        "model_miss": "cache miss to the model (agent step)",
        "model_miss_overhead": "  of which the orchestrator (minus the model)",
        "bare_generation": "baseline: the same generation (tools, grammar) called directly",
    }
    body = [
        [label, f"{row['p50_ms']:.3f}", f"{row['p90_ms']:.3f}", str(row["n"])]
        for key, label in labels.items()
        for row in (result["latency"][key],)
    ]
    lines = markdown_table(["request", "p50 ms", "p90 ms", "n"], body, left=1)
    ratios = result["ratios_p50"]
    lines += [
        "",
        f"p50 ratios: rule-matched vs bare GET {times(ratios['rule_tool_vs_bare_http'])}; "
        f"cache hit vs rule-matched {times(ratios['cache_hit_vs_rule_tool'])}; "
        f"model miss vs bare generation {times(ratios['model_miss_vs_bare_generation'])} "
        f"({result['model_turns_per_miss']} model turns per miss)",
    ]
    return "\n".join(lines)
