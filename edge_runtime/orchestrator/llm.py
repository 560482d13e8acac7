"""The orchestrator's view of the model: one chat generation, streamed, bounded by a deadline."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_runtime.messages import FinishReason, Timing, Usage
from edge_runtime.model.constrain import Grounding
from edge_runtime.model.runtime import Model

DeltaSink = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Generated:
    """A finished (or cut short) generation."""

    text: str
    finish_reason: FinishReason
    usage: Usage | None = None
    timing: Timing | None = None


class Generator(Protocol):
    """Answers a conversation; the orchestrator's only way to the model."""

    @property
    def identity(self) -> str:
        """What identifies the model's answers (its hash), for cache keys."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes."""
        ...

    def deterministic(self, params: Mapping[str, Any]) -> bool:
        """Whether a generation with ``params`` is greedy or seeded (so it can be reused)."""
        ...

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
        """Generate the assistant's next turn; with ``grounding``, tool calls are held to the
        tools' schemas and grounded strings to its text (and known names)."""
        ...


class ModelGenerator:
    """A Generator over a loaded Model, run on the model's own thread."""

    def __init__(self, model: Model, clock: Callable[[], float] = time.monotonic):
        self.model = model
        self._clock = clock
        manifest = model.directory / "manifest.json"
        source = manifest if manifest.is_file() else model.graph
        digest = hashlib.sha256(source.read_bytes() if source.stat().st_size < 1 << 20 else b"")
        digest.update(str(model.graph.stat().st_size).encode())
        self._identity = digest.hexdigest()[:16]

    @property
    def identity(self) -> str:
        """A hash of the model's manifest: a new export changes it."""
        return self._identity

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes with this model's tokenizer."""
        return len(self.model.tokenizer.encode(text))

    def deterministic(self, params: Mapping[str, Any]) -> bool:
        """Greedy, or seeded: what the model's defaults and ``params`` make of it together."""
        resolved = self.model.default_params(**_overrides(params))
        return not resolved.sampling.do_sample or resolved.seed is not None

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
        """Generate; at the deadline the generation stops and what was written is kept."""
        overrides = _overrides(params)
        generation = self.model.chat(
            list(messages),
            self.model.default_params(**overrides),
            tools=tools,
            grounding=grounding,
        )
        text: list[str] = []
        remaining = None if deadline is None else max(0.0, deadline - self._clock())
        try:
            async with asyncio.timeout(remaining):
                async for delta in self.model.stream(generation):
                    text.append(delta)
                    if on_delta is not None:
                        await on_delta(delta)
        except TimeoutError:
            # Cut by the deadline, not by max_new_tokens: "cancelled", and never cached.
            return Generated("".join(text), "cancelled")
        result = generation.result
        return Generated(result.text, result.finish_reason, result.usage, result.timing)


def trim_start(sink: DeltaSink) -> DeltaSink:
    """A sink that drops the whitespace a GLM turn starts with ("\\n" before a plain answer)."""
    started = False

    async def forward(delta: str) -> None:
        nonlocal started
        if not started:
            delta = delta.lstrip()
            if not delta:
                return
            started = True
        await sink(delta)

    return forward


def _overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Request parameters as the model's overrides: a temperature of 0 means greedy."""
    overrides = dict(params)
    if "temperature" in overrides and "do_sample" not in overrides:
        if overrides["temperature"] == 0:
            overrides["do_sample"] = False
            del overrides["temperature"]
        else:
            overrides["do_sample"] = True
    return overrides
