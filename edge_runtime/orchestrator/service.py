"""The orchestrator: cache, memory, intents, plan, run, answer; what the pipeline calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_runtime.config import Settings
from edge_runtime.errors import RequestError
from edge_runtime.messages import FinishReason, Timing, Usage
from edge_runtime.orchestrator.cache import ResponseCache, cache_key
from edge_runtime.orchestrator.compose import describe_call, describe_step
from edge_runtime.orchestrator.feedback import (
    Answered,
    FeedbackStore,
    RecentAnswers,
    parse_rating,
)
from edge_runtime.orchestrator.intent import Clarification, IntentParser, Named, Parse
from edge_runtime.orchestrator.llm import DeltaSink, Generator, trim_start
from edge_runtime.orchestrator.memory import LongTermMemory, ShortTermMemory
from edge_runtime.orchestrator.planner import Plan, plan
from edge_runtime.orchestrator.runner import PlanRunner, Run, RunContext, StepResult
from edge_runtime.orchestrator.tools import Publisher, ToolCall, ToolGateway, ToolGuard
from edge_runtime.state import StateStore

Route = Literal["direct", "orchestrate"]


@dataclass(frozen=True, slots=True)
class Ask:
    """One request as the orchestrator sees it."""

    id: str
    device: str
    messages: Sequence[Mapping[str, str]]
    params: Mapping[str, Any]
    deadline: float
    session: str | None = None
    # Identifies the filter chain that let the request through, for cache keys.
    filters: str = ""
    guard: ToolGuard | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What the orchestrator answered, and how."""

    text: str
    finish_reason: FinishReason = "stop"
    usage: Usage | None = None
    timing: Timing | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _Outcome:
    answer: Answer
    # How long the answer may be cached: 0 when it used data that must not be reused.
    ttl_s: float | None = None
    # Whether the model wrote any of it (sampling then decides whether it may be reused).
    generated: bool = False


class Orchestrator:
    """Answers ``direct`` (one generation) and ``orchestrate`` (intents, plan, tools) requests."""

    def __init__(
        self,
        *,
        parser: IntentParser,
        tools: ToolGateway,
        generator: Generator | None,
        short_term: ShortTermMemory,
        long_term: LongTermMemory | None,
        cache: ResponseCache | None,
        feedback: FeedbackStore | None,
        step_timeout_s: float = 10.0,
        max_tool_steps: int = 4,
        grounded: bool = True,
        grounded_names: bool = True,
        after_tool_error: Literal["answer", "model"] = "answer",
        max_new_tokens: int = 128,
        bad_rating: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.parser = parser
        self.tools = tools
        self.generator = generator
        self.short_term = short_term
        self.long_term = long_term
        self.cache = cache
        self.feedback_store = feedback
        self.recent = RecentAnswers()
        self.max_new_tokens = max_new_tokens
        self.bad_rating = bad_rating
        self._clock = clock
        self._configured_devices: dict[str, Named] = {}
        self.runner = PlanRunner(
            tools=tools,
            generate=generator,
            notes=long_term,
            step_timeout_s=step_timeout_s,
            max_tool_steps=max_tool_steps,
            grounded=grounded,
            grounded_names=grounded_names,
            after_tool_error=after_tool_error,
            clock=clock,
            describe=self._describe,
        )

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        generator: Generator | None,
        state: StateStore | None = None,
        publish: Publisher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Orchestrator:
        """Everything from the config; bad tools and templates fail here, not per request."""
        conf = settings.orchestrator
        long_term = LongTermMemory(
            settings.state_dir / "memory.db", max_facts_per_device=conf.max_facts_per_device
        )

        async def keep_note(device: str, text: str) -> None:
            await asyncio.to_thread(long_term.add, device, text)

        try:
            tools = ToolGateway.build(
                settings.tools,
                state=state,
                http_allow=conf.http_allow,
                publish=publish,
                keep_note=keep_note,
                clock=clock,
            )
        except BaseException:
            long_term.close()
            raise
        tools.set_names("areas", conf.areas)
        handled = {"compose_reminder", "note_add", "note_search"}
        required: dict[str, list[str]] = {}
        for spec in settings.tools:
            handled.update(spec.intents)
            needs = [k for k, p in spec.parameters.items() if p.required and p.default is None]
            for intent in spec.intents:
                fixed = spec.intent_arguments.get(intent, {})
                required[intent] = [k for k in needs if k not in fixed]
        devices = configured_devices(settings)
        parser = IntentParser.build(
            languages=conf.languages,
            handled=handled,
            required=required,
            templates=conf.templates,
            areas=conf.areas,
            devices=devices,
            ambiguity_margin=conf.ambiguity_margin,
        )
        state_dir = settings.state_dir
        built = cls(
            parser=parser,
            tools=tools,
            generator=generator,
            short_term=ShortTermMemory(
                max_turns=conf.memory_turns,
                max_tokens=conf.memory_tokens,
                ttl_s=conf.memory_ttl_s,
                max_sessions=conf.max_sessions,
                count_tokens=generator.count_tokens if generator is not None else None,
                clock=clock,
            ),
            long_term=long_term,
            cache=ResponseCache(conf.cache_size, conf.cache_ttl_s, clock=clock)
            if settings.enable_caching
            else None,
            feedback=FeedbackStore(state_dir / "feedback.db"),
            step_timeout_s=conf.step_timeout_s,
            max_tool_steps=conf.max_tool_steps,
            grounded=conf.grounded_tool_calls,
            grounded_names=conf.grounded_names,
            after_tool_error=conf.after_tool_error,
            max_new_tokens=conf.max_new_tokens,
            bad_rating=conf.bad_rating,
            clock=clock,
        )
        built._configured_devices = devices
        built.set_devices({})
        return built

    @classmethod
    def for_model(cls, generator: Generator) -> Orchestrator:
        """An orchestrator with no tools and no stored state: generations, intents, the cache."""
        settings = Settings()
        conf = settings.orchestrator
        return cls(
            parser=IntentParser.build(
                languages=conf.languages,
                handled={"compose_reminder"},
                required={},
            ),
            tools=ToolGateway(tools={}),
            generator=generator,
            short_term=ShortTermMemory(count_tokens=generator.count_tokens),
            long_term=None,
            cache=ResponseCache(conf.cache_size, conf.cache_ttl_s),
            feedback=None,
        )

    def set_devices(self, registered: Mapping[str, Named]) -> None:
        """Name slots from the config and from the device registry (the config wins)."""
        named = {**registered, **self._configured_devices}
        self.parser.set_devices(named)
        self.runner.tools.set_names(
            "devices", {ident: names for ident, (names, _) in named.items()}
        )

    def adopt(self, old: Orchestrator) -> None:
        """Take over the conversations of the orchestrator this one replaces (on a reload).

        The cache is not carried over: tools, templates or answers may have changed.
        """
        self.short_term = old.short_term
        self.recent = old.recent

    async def close(self) -> None:
        """Close the tools' clients and the databases."""
        await self.tools.close()
        if self.long_term is not None:
            self.long_term.close()
        if self.feedback_store is not None:
            self.feedback_store.close()

    def _describe(self, call: ToolCall, language: str) -> str:
        tool = self.tools.tools.get(call.name)
        return describe_call(call, language, tool.settings.answer if tool is not None else {})

    async def answer(self, ask: Ask, route: Route, sink: DeltaSink | None = None) -> Answer:
        """Answer one request, from the cache when it can."""
        if not ask.messages or ask.messages[-1].get("role") != "user":
            raise RequestError("the conversation must end with a user message")
        message = str(ask.messages[-1].get("content", ""))
        session = ask.session
        history = self.short_term.history(ask.device, session) if session else []
        # A question waits on the device's next message in the same session; a device that
        # sends no session has one conversation for questions (but keeps no history).
        pending = self.short_term.pending(ask.device, session or "")
        conversation = [*history, *ask.messages]
        key = None
        if self.cache is not None and pending is None:
            identity = self.generator.identity if self.generator is not None else ""
            key = cache_key(
                route=route,
                messages=conversation,
                params=ask.params,
                model=identity,
                filters=ask.filters,
            )
            hit = self.cache.get(key)
            if hit is not None and await _still_allowed(hit, ask.guard):
                answer = _from_cache(hit)
                if sink is not None and answer.text:
                    await sink(answer.text)
                self._remember(ask, message, answer, key)
                return answer
        if route == "direct":
            outcome = await self._direct(ask, conversation, sink)
        else:
            outcome = await self._orchestrate(ask, message, history, pending, sink)
        answer = outcome.answer
        sampled = outcome.generated and not self._deterministic(ask.params)
        if (
            key is not None
            and self.cache is not None
            and not sampled
            and answer.finish_reason in ("stop", "length")
        ):
            self.cache.put(key, _to_cache(answer), outcome.ttl_s)
        self._remember(ask, message, answer, key)
        return answer

    def _deterministic(self, params: Mapping[str, Any]) -> bool:
        """Whether the model answers ``params`` greedily or with a seed (the answer is reusable).

        Sampled answers without a seed are meant to vary: they are never cached. The model's
        own defaults count: a generation_config.json that samples makes every answer sampled.
        """
        if self.generator is None:
            return True
        return self.generator.deterministic(params)

    def _remember(self, ask: Ask, message: str, answer: Answer, key: str | None) -> None:
        if ask.session:
            self.short_term.add(ask.device, ask.session, "user", message)
            self.short_term.add(ask.device, ask.session, "assistant", answer.text)
        self.recent.add(ask.device, ask.id, Answered(ask.device, message, answer.text, key))

    def _params(self, ask: Ask) -> dict[str, Any]:
        params = dict(ask.params)
        params.setdefault("max_new_tokens", self.max_new_tokens)
        return params

    async def _direct(
        self, ask: Ask, conversation: Sequence[Mapping[str, str]], sink: DeltaSink | None
    ) -> _Outcome:
        if self.generator is None:
            raise RequestError("no model is loaded")
        generated = await self.generator(
            conversation,
            params=ask.params,
            on_delta=trim_start(sink) if sink is not None else None,
            deadline=None,
        )
        text = generated.text.lstrip()
        answer = Answer(text, generated.finish_reason, generated.usage, generated.timing)
        return _Outcome(answer, generated=True)

    async def _orchestrate(
        self,
        ask: Ask,
        message: str,
        history: Sequence[Mapping[str, str]],
        pending: Clarification | None,
        sink: DeltaSink | None,
    ) -> _Outcome:
        parsed = self.parser.parse(message, pending)
        self.short_term.set_pending(ask.device, ask.session or "", parsed.clarification)
        if parsed.clarification is not None:
            outcome = self._clarify(parsed)
            if sink is not None:
                await sink(outcome.answer.text)
            return outcome
        the_plan = plan(parsed, self.tools, message)
        ctx = RunContext(
            device=ask.device,
            message=message,
            history=history,
            params=self._params(ask),
            deadline=ask.deadline,
            guard=ask.guard,
        )
        run = self.runner.start(the_plan, ctx)
        results = await self._compose(the_plan, run, sink)
        return _outcome(parsed, the_plan, results)

    def _clarify(self, parsed: Parse) -> _Outcome:
        clarification = parsed.clarification
        assert clarification is not None
        candidates = clarification.options or (
            (clarification.intent,) if clarification.intent is not None else ()
        )
        details = {
            "clarification": {
                "question": clarification.question,
                "missing": clarification.missing,
                "options": [i.name for i in clarification.options],
            },
            "intents": [i.as_dict() for i in candidates],
        }
        answer = Answer(clarification.question, details=details)
        return _Outcome(answer, ttl_s=0)

    async def _compose(self, the_plan: Plan, run: Run, sink: DeltaSink | None) -> list[StepResult]:
        """Tell each step's result in plan order, streaming model steps as they write."""
        results: list[StepResult] = []
        try:
            for index, step in enumerate(the_plan.steps):
                result = run.results[step.id]
                separator = "\n" if index else ""
                if step.kind in ("generate", "agent"):
                    await self._relay(result, separator, sink)
                await run.tasks[step.id]
                if step.kind not in ("generate", "agent") or result.error is not None:
                    text = describe_step(step, result.text, result.error, the_plan.language)
                    if sink is not None and text:
                        await sink(separator + text)
                results.append(result)
        finally:
            run.cancel()
        return results

    @staticmethod
    async def _relay(result: StepResult, separator: str, sink: DeltaSink | None) -> None:
        first = True
        # Every step's queue ends with None, whatever happens to the step.
        while (delta := await result.deltas.get()) is not None:
            if sink is not None and delta:
                await sink((separator if first else "") + delta)
                first = False

    async def feedback(self, body: Mapping[str, Any], device: str) -> dict[str, Any]:
        """Store a rating; a bad one takes the rated answer out of the cache."""
        rating = parse_rating(body)
        # Ids come from devices (MQTT correlation data): an answer is found by its device and
        # id, so one device can neither rate nor evict another's answers.
        answered = self.recent.get(device, rating.id)
        if self.feedback_store is not None:
            await asyncio.to_thread(self.feedback_store.record, rating, device, answered)
        evicted = False
        if (
            rating.rating <= self.bad_rating
            and answered is not None
            and answered.cache_key is not None
            and self.cache is not None
        ):
            evicted = self.cache.evict(answered.cache_key)
        return {
            "id": rating.id,
            "recorded": True,
            "known": answered is not None,
            "evicted": evicted,
        }


def configured_devices(settings: Settings) -> dict[str, Named]:
    """The config's devices as names and domain."""
    out: dict[str, Named] = {}
    for ident, entry in settings.orchestrator.devices.items():
        if isinstance(entry, tuple):
            out[ident] = (entry, "")
        else:
            out[ident] = (entry.names, entry.domain)
    return out


async def _still_allowed(hit: Mapping[str, Any], guard: ToolGuard | None) -> bool:
    """A cached answer made tool calls: this device's filters must allow them too.

    Cached answers are shared across devices; a device a filter forbids a tool gets a fresh
    answer (with the denial), not another device's result.
    """
    if guard is None:
        return True
    for call in hit.get("tool_calls", ()):
        if await guard(str(call["name"]), call.get("arguments", {})) is not None:
            return False
    return True


def _outcome(parsed: Parse, the_plan: Plan, results: Sequence[StepResult]) -> _Outcome:
    texts = [describe_step(r.step, r.text, r.error, the_plan.language) for r in results]
    calls = [call for r in results for call in r.calls]
    generated = [r.generated for r in results if r.generated is not None]
    usage = None
    if generated:
        prompt = sum(g.usage.prompt_tokens for g in generated if g.usage)
        completion = sum(g.usage.completion_tokens for g in generated if g.usage)
        usage = Usage(prompt, completion)
    timing = next((g.timing for g in generated if g.timing is not None), None)
    finish: FinishReason = "stop"
    for reason in ("length", "cancelled"):
        if any(g.finish_reason == reason for g in generated):
            finish = reason
    ttl: float | None = None
    if any(r.error for r in results) or any(
        r.step.kind in ("note_add", "note_search") for r in results
    ):
        ttl = 0
    elif calls:
        ttl = min(call.cache_ttl_s for call in calls)
    details = {
        "intents": [i.as_dict() for i in parsed.intents],
        "steps": [
            {
                **r.step.as_dict(),
                "status": "error" if r.error else "ok",
                "duration_ms": round(r.duration_s * 1000, 2),
            }
            | ({"error": r.error} if r.error else {})
            for r in results
        ],
    }
    answer = Answer(
        "\n".join(t for t in texts if t),
        finish,
        usage,
        timing,
        tuple(call.as_dict() for call in calls),
        details,
    )
    return _Outcome(answer, ttl, generated=bool(generated))


def _to_cache(answer: Answer) -> dict[str, Any]:
    return {
        "text": answer.text,
        "finish_reason": answer.finish_reason,
        "tool_calls": list(answer.tool_calls),
        "details": dict(answer.details),
    }


def _from_cache(payload: Mapping[str, Any]) -> Answer:
    return Answer(
        str(payload["text"]),
        payload["finish_reason"],
        tool_calls=tuple(payload["tool_calls"]),
        details={**payload["details"], "cached": True},
    )
