"""Runs a plan: independent steps at once, each under its own timeout, failures as observations."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_runtime.model.constrain import Grounding
from edge_runtime.orchestrator.llm import DeltaSink, Generated, Generator, trim_start
from edge_runtime.orchestrator.memory import LongTermMemory
from edge_runtime.orchestrator.planner import Plan, Step
from edge_runtime.orchestrator.toolcall import ParsedCall, PlainText, parse_output
from edge_runtime.orchestrator.tools import ToolCall, ToolGateway, ToolGuard

# Time kept back from tool steps for the model steps that read their results.
_MODEL_SHARE = 0.5
# Time kept back from model steps, before the request's deadline, to compose the answer.
_COMPOSE_RESERVE_S = 0.2
_SYSTEM = {
    "en": "You are an assistant on an edge device. Answer briefly, using the tool results given.",
    "zh": "你是一个运行在边缘设备上的助手。请简洁地回答，并使用给出的工具结果。",
}


@dataclass
class StepResult:
    """What one step produced; ``error`` set means it failed and the answer says so."""

    step: Step
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None
    generated: Generated | None = None
    duration_s: float = 0.0
    # Deltas of a model step, for streaming, closed with None.
    deltas: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)


@dataclass(frozen=True)
class Run:
    """A started plan: each step's result (filled in as it runs) and its task."""

    results: dict[str, StepResult]
    tasks: dict[str, asyncio.Task[StepResult]]

    def cancel(self) -> None:
        """Stop every step still running."""
        for task in self.tasks.values():
            task.cancel()


@dataclass
class RunContext:
    """Everything a plan's steps need besides the plan."""

    device: str
    message: str
    history: Sequence[Mapping[str, str]]
    params: Mapping[str, Any]
    deadline: float
    guard: ToolGuard | None = None


@dataclass
class PlanRunner:
    """Executes plans against the tools, the notes and the model."""

    tools: ToolGateway
    generate: Generator | None
    notes: LongTermMemory | None
    step_timeout_s: float = 10.0
    max_tool_steps: int = 4
    # Tool calls the model writes are held to the schemas, grounded strings to the message.
    grounded: bool = True
    # And room and device arguments to the known names the message mentions.
    grounded_names: bool = True
    # "answer": a failed call the model made ends the step, saying why; "model": the model
    # reads the error and goes on.
    after_tool_error: Literal["answer", "model"] = "answer"
    clock: Callable[[], float] = time.monotonic
    # Formats a tool result for the model's context and the answer; set by the orchestrator.
    describe: Callable[[ToolCall, str], str] = field(
        default=lambda call, _lang: json.dumps(call.observation(), ensure_ascii=False)
    )

    def start(self, plan: Plan, ctx: RunContext) -> Run:
        """Start every step; each waits for its dependencies itself. Tasks never raise."""
        tasks: dict[str, asyncio.Task[StepResult]] = {}
        results: dict[str, StepResult] = {s.id: StepResult(s) for s in plan.steps}
        has_model = any(s.kind in ("generate", "agent") for s in plan.steps)
        for step in plan.steps:
            deps = [tasks[d] for d in step.depends_on]
            tasks[step.id] = asyncio.ensure_future(
                self._run(results[step.id], deps, plan, ctx, has_model)
            )
        return Run(results, tasks)

    async def _run(
        self,
        result: StepResult,
        deps: Sequence[asyncio.Task[StepResult]],
        plan: Plan,
        ctx: RunContext,
        has_model: bool,
    ) -> StepResult:
        inputs = [await d for d in deps]
        started = self.clock()
        step = result.step
        try:
            remaining = ctx.deadline - started
            if step.kind in ("generate", "agent"):
                # The model stops a little before the request's deadline, so what it wrote
                # and what the other steps found still make an answer.
                limit = remaining - min(_COMPOSE_RESERVE_S, remaining * 0.1)
            else:
                # Tools give up early enough for the model steps after them to still answer.
                share = remaining * (1 - _MODEL_SHARE) if has_model else remaining
                limit = min(self.step_timeout_s, share)
            # Model steps stop themselves at the limit and keep their text; the timeout here
            # is the backstop, just after.
            backstop = limit + (_COMPOSE_RESERVE_S / 2 if step.kind in ("generate", "agent") else 0)
            async with asyncio.timeout(max(backstop, 0.0)):
                await self._step(result, inputs, plan, ctx, started + limit)
        except TimeoutError:
            result.error = f"no answer within {max(limit, 0.0):.1f} s"
        except Exception as exc:  # a step's failure is an observation, never a crash
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            if result.error is not None and step.kind == "tool" and not result.calls:
                # A tool step cut short still shows as a failed call, to the model and device.
                call = ToolCall(step.tool or "", step.arguments, error=result.error)
                result.calls.append(call)
                result.text = self.describe(call, plan.language)
            result.duration_s = self.clock() - started
            result.deltas.put_nowait(None)
        return result

    async def _step(
        self,
        result: StepResult,
        inputs: Sequence[StepResult],
        plan: Plan,
        ctx: RunContext,
        deadline: float,
    ) -> None:
        step = result.step
        if step.kind == "tool":
            assert step.tool is not None
            call = await self.tools.call(
                step.tool,
                step.arguments,
                guard=ctx.guard,
                timeout=deadline - self.clock(),
                device=ctx.device,
            )
            result.calls.append(call)
            result.error = call.error
            result.text = self.describe(call, plan.language)
        elif step.kind == "note_add":
            if self.notes is None:
                raise RuntimeError("long-term memory is off")
            note = str(step.arguments["note"])
            await asyncio.to_thread(self.notes.add, ctx.device, note)
            result.text = note
        elif step.kind == "note_search":
            if self.notes is None:
                raise RuntimeError("long-term memory is off")
            query = str(step.arguments.get("query", ""))
            found = await asyncio.to_thread(self.notes.search, ctx.device, query)
            result.text = "\n".join(f.text for f in found)
        elif step.kind == "generate":
            await self._generate(result, inputs, plan, ctx, deadline)
        else:
            await self._agent(result, plan, ctx, deadline)

    def _model(self) -> Generator:
        if self.generate is None:
            raise RuntimeError("no model is loaded")
        return self.generate

    async def _generate(
        self,
        result: StepResult,
        inputs: Sequence[StepResult],
        plan: Plan,
        ctx: RunContext,
        deadline: float,
    ) -> None:
        """A model step: its instruction, with the results it depends on as observations."""
        lang = "zh" if plan.language.startswith("zh") else "en"
        messages: list[dict[str, Any]] = [{"role": "system", "content": _SYSTEM[lang]}]
        messages.extend(dict(m) for m in ctx.history)
        messages.append({"role": "user", "content": result.step.instruction})
        for done in inputs:
            for call in done.calls:
                messages += _exchange(call.name, call.arguments, self.tools.observation(call))
            if done.step.kind in ("note_add", "note_search") and done.text:
                messages.append({"role": "tool", "content": done.text})
        generated = await self._model()(
            messages, params=ctx.params, on_delta=trim_start(result.deltas.put), deadline=deadline
        )
        result.generated = generated
        result.text = generated.text.strip()

    async def _agent(
        self, result: StepResult, plan: Plan, ctx: RunContext, deadline: float
    ) -> None:
        """The model with the tool list: call, observe, continue, at most max_tool_steps calls."""
        generate = self._model()
        schemas = self.tools.schemas()
        names = {schema["name"] for schema in schemas}
        # Grounded arguments may come from any of the user's turns: "Macau" answering "which
        # city?" completes "the weather the day after tomorrow".
        heard = "\n".join(
            [*(str(m["content"]) for m in ctx.history if m.get("role") == "user"), ctx.message]
        )
        messages: list[dict[str, Any]] = [dict(m) for m in ctx.history]
        messages.append({"role": "user", "content": ctx.message})
        attempts = 0
        while True:
            sink = _PlainTextSink(result.deltas.put)
            generated = await generate(
                messages,
                params=ctx.params,
                tools=schemas or None,
                on_delta=sink,
                deadline=deadline,
                grounding=(
                    Grounding(heard, self.tools.grounded_names() if self.grounded_names else {})
                    if self.grounded and schemas
                    else None
                ),
            )
            result.generated = generated
            output = parse_output(generated.text, names)
            if isinstance(output, PlainText):
                await sink.release()
                result.text = output.text
                return
            # Bad calls count too: a model that keeps writing them must not loop forever.
            attempts += 1
            if attempts > self.max_tool_steps:
                result.error = f"stopped after {self.max_tool_steps} tool calls without an answer"
                return
            if isinstance(output, ParsedCall):
                call = await self.tools.call(
                    output.name,
                    output.arguments,
                    guard=ctx.guard,
                    timeout=min(self.step_timeout_s, deadline - self.clock()),
                    device=ctx.device,
                )
                result.calls.append(call)
                if call.error is not None and self.after_tool_error == "answer":
                    result.text = self.describe(call, plan.language)
                    await result.deltas.put(result.text)
                    return
                observation = self.tools.observation(call)
            else:
                observation = {"error": output.reason}
            messages += _exchange(output.name, getattr(output, "arguments", {}), observation)


def _exchange(
    name: str, arguments: Mapping[str, Any], observation: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """A tool call and its result as GLM-4 chat turns: the assistant's call, the observation."""
    return [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"name": name, "arguments": dict(arguments)}],
        },
        {"role": "tool", "content": json.dumps(observation, ensure_ascii=False)},
    ]


class _PlainTextSink:
    """Holds deltas back until the first line shows the turn is text, not a tool call."""

    def __init__(self, forward: Callable[[str], Awaitable[None]]):
        self._forward: DeltaSink = forward
        self._held = ""
        self._mode: str | None = None

    async def __call__(self, delta: str) -> None:
        if self._mode == "text":
            await self._forward(delta)
            return
        self._held += delta
        if self._mode == "call":
            return
        if "\n" in self._held:
            head, _, rest = self._held.partition("\n")
            if head.strip():
                # A named first line may be a call; stream nothing until the turn is parsed.
                self._mode = "call"
            else:
                self._mode = "text"
                self._held = ""
                if rest:
                    await self._forward(rest)

    async def release(self) -> None:
        """The turn was text after all: send what was held back."""
        if self._mode != "text" and self._held.strip():
            await self._forward(self._held.strip())
        self._held = ""
