"""Plans: the intents of one message turned into a small DAG of tool, memory and model steps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_runtime.orchestrator.intent import Intent, Parse
from edge_runtime.orchestrator.tools import ToolGateway

StepKind = Literal["tool", "note_add", "note_search", "generate", "agent"]
# Steps whose output later model steps read; model steps depend on all of them.
_GATHERING: frozenset[str] = frozenset({"tool", "note_add", "note_search"})


@dataclass(frozen=True, slots=True)
class Step:
    """One node of a plan."""

    id: str
    kind: StepKind
    intent: Intent | None = None
    tool: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)
    # For model steps: what the step is asked to do (the clause of the message).
    instruction: str = ""
    depends_on: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The step as an answer lists it."""
        out: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.intent is not None:
            out["intent"] = self.intent.name
        if self.tool is not None:
            out["tool"] = self.tool
        if self.depends_on:
            out["depends_on"] = list(self.depends_on)
        return out


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps of one request, in the order their results are told."""

    steps: tuple[Step, ...]
    language: str

    def step(self, step_id: str) -> Step:
        """The step with this id."""
        return next(s for s in self.steps if s.id == step_id)


def plan(parsed: Parse, tools: ToolGateway, message: str) -> Plan:
    """Steps for each intent; a clause no template matched goes to the model.

    A message nothing matched becomes one ``agent`` step: the model with the tool list, calling
    tools in a bounded loop. Model steps (a reminder, a free clause) depend on every tool and
    memory step of the message, so "weather, then a reminder" writes the reminder with the
    weather in hand.
    """
    steps: list[Step] = []
    for intent in parsed.intents:
        step_id = f"s{len(steps) + 1}"
        if intent.name == "note_add":
            note = str(intent.slots.get("note", intent.text))
            steps.append(Step(step_id, "note_add", intent, arguments={"note": note}))
        elif intent.name == "note_search":
            query = str(intent.slots.get("query", ""))
            steps.append(Step(step_id, "note_search", intent, arguments={"query": query}))
        elif intent.name == "compose_reminder":
            steps.append(Step(step_id, "generate", intent, instruction=intent.text))
        else:
            tool = tools.for_intent(intent.name)
            if tool is None:
                steps.append(Step(step_id, "generate", intent, instruction=intent.text))
                continue
            arguments = {k: v for k, v in intent.slots.items() if k in tool.settings.parameters}
            arguments.update(tool.settings.intent_arguments.get(intent.name, {}))
            steps.append(Step(step_id, "tool", intent, tool=tool.name, arguments=arguments))
    for clause in parsed.unmatched:
        steps.append(Step(f"s{len(steps) + 1}", "generate", instruction=clause))
    if not parsed.intents:
        return Plan((Step("s1", "agent", instruction=message),), parsed.language)
    gathered = tuple(s.id for s in steps if s.kind in _GATHERING)
    ordered = tuple(
        Step(s.id, s.kind, s.intent, s.tool, s.arguments, s.instruction, gathered)
        if s.kind == "generate"
        else s
        for s in steps
    )
    return Plan(ordered, parsed.language)
