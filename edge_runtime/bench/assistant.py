"""`model eval`: how well a model does the assistant's job on held-out data, grounded or not.

For each held-out split (templates, slot values, paraphrases) and language: tool-call exact match
(name and arguments, schema defaults filled in), slot accuracy, answers that carry the
observation's values, and correct clarifications and refusals; each with grounded decoding on
and off, on the same samples. Grounded decoding is the daemon's: arguments held to the words of
the user's turns, and rooms and devices to the home's names the request mentions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edge_runtime.bench.report import markdown_table
from edge_runtime.model import dataset
from edge_runtime.model.constrain import Grounding
from edge_runtime.orchestrator.toolcall import ParsedCall, PlainText, parse_output

# Writes the assistant's next turn for a conversation: (messages, tools, grounding) -> text.
Respond = Callable[
    [Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]], Grounding | None], str
]
EVAL_SPLITS: tuple[dataset.Split, ...] = ("heldout_template", "heldout_value", "paraphrase")
FIGURES = ("exact_match", "slot_accuracy", "values_in_answer", "clarify", "refuse")


@dataclass(frozen=True, slots=True)
class EvalArgs:
    """What `model eval` measures."""

    model: Path
    samples: int = 100
    seed: int = 0
    json: bool = False
    max_new_tokens: int = 96
    # Failing cases kept per split and decoding, to show what the model gets wrong.
    failures: int = 0


def score(
    samples: Sequence[dataset.Sample],
    respond: Respond,
    grounded: bool,
    misses: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The figures for ``samples``, by language; each a fraction, None when none applied.

    Every failing case is appended to ``misses`` if given: what was asked, what was expected,
    and what the model wrote.
    """

    def missed(sample: dataset.Sample, figure: str, want: Any, wrote: str) -> None:
        if misses is not None:
            asked = [m["content"] for m in sample.messages if m["role"] == "user"]
            misses.append(
                {
                    "language": sample.language,
                    "figure": figure,
                    "request": " / ".join(str(a) for a in asked),
                    "expected": want,
                    "got": wrote,
                }
            )

    tools = dataset.tool_schemas()
    names = {t["name"] for t in tools}
    defaults = {t["name"]: _defaults(t) for t in tools}
    tally: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        got = tally[sample.language]
        first_turn = next(i for i, m in enumerate(sample.messages) if m["role"] == "assistant")
        prompt = sample.messages[:first_turn]
        wrote = respond(prompt, tools, _heard(prompt) if grounded else None)
        turn = parse_output(wrote, names)
        expected = sample.expected
        if expected.get("refuse"):
            got["refuse"].append(float(isinstance(turn, PlainText)))
            if not isinstance(turn, PlainText):
                missed(sample, "refuse", "a plain answer", wrote)
            continue
        if expected.get("clarify"):
            asked = isinstance(turn, PlainText) and any(q in turn.text for q in "?？")
            got["clarify"].append(float(asked))
            if not asked:
                missed(sample, "clarify", "a question", wrote)
            # The clarified call is judged from the user's answer on.
            reply = max(i for i, m in enumerate(sample.messages) if m["role"] == "user")
            prompt = sample.messages[: reply + 1]
            wrote = respond(prompt, tools, _heard(prompt) if grounded else None)
            turn = parse_output(wrote, names)
        want = {**defaults[expected["tool"]], **expected["arguments"]}
        if isinstance(turn, ParsedCall) and turn.name == expected["tool"]:
            have = {**defaults[turn.name], **turn.arguments}
            got["exact_match"].append(float(have == want))
            got["slot_accuracy"].append(
                sum(have.get(k) == v for k, v in want.items()) / max(1, len(want))
            )
        else:
            got["exact_match"].append(0.0)
            got["slot_accuracy"].append(0.0)
        if got["exact_match"][-1] < 1:
            missed(sample, "exact_match", {"name": expected["tool"], "arguments": want}, wrote)
        if expected.get("values"):
            observed = next(i for i, m in enumerate(sample.messages) if m["role"] == "tool")
            context = sample.messages[: observed + 1]
            answer = respond(context, tools, _heard(context) if grounded else None)
            carried = all(v in answer for v in expected["values"])
            got["values_in_answer"].append(float(carried))
            if not carried:
                missed(sample, "values_in_answer", list(expected["values"]), answer)
    return {
        language: {
            figure: (round(sum(v) / len(v), 4) if (v := values.get(figure)) else None)
            for figure in FIGURES
        }
        | {"samples": sum(1 for s in samples if s.language == language)}
        for language, values in sorted(tally.items())
    }


def _heard(messages: Sequence[Mapping[str, Any]]) -> Grounding:
    """What grounded arguments may copy, as the orchestrator grounds them: every user turn,
    and the home's rooms and devices."""
    said = "\n".join(str(m["content"]) for m in messages if m["role"] == "user")
    return Grounding(said, dataset.home_names())


def _defaults(tool: Mapping[str, Any]) -> dict[str, Any]:
    props = tool["parameters"]["properties"]
    return {k: spec["default"] for k, spec in props.items() if "default" in spec}


def model_responder(directory: Path, max_new_tokens: int) -> Respond:
    """Greedy turns of the model in ``directory``, through the runtime's own generation."""
    from edge_runtime.device import probe
    from edge_runtime.model.runtime import load_model

    model = load_model(directory, threads=probe().effective_threads)

    def respond(
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        grounding: Grounding | None,
    ) -> str:
        params = model.default_params(max_new_tokens=max_new_tokens, do_sample=False)
        generation = model.chat(list(messages), params, tools=tools, grounding=grounding)
        return generation.run().text

    return respond


def run(args: EvalArgs, out: TextIO) -> dict[str, Any]:
    """Score the model on every held-out split, grounded and not; print unless ``args.json``."""
    respond = model_responder(args.model, args.max_new_tokens)
    result: dict[str, Any] = {"model": str(args.model), "samples_per_split": args.samples}
    failures: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for split in EVAL_SPLITS:
        samples = dataset.generate(split, args.samples, seed=args.seed)
        misses: dict[str, list[dict[str, Any]]] = {"grounded": [], "free": []}
        result[split] = {
            decoding: score(samples, respond, decoding == "grounded", misses[decoding])
            for decoding in ("grounded", "free")
        }
        failures[split] = {k: v[: args.failures] for k, v in misses.items()}
    if args.failures:
        result["failures"] = failures
    if not args.json:
        out.write(render(result) + "\n")
    return result


def render(result: Mapping[str, Any]) -> str:
    """The figures as one Markdown table: a row per split, language and decoding."""
    body = []
    for split in EVAL_SPLITS:
        for decoding in ("grounded", "free"):
            for language, figures in result[split][decoding].items():
                body.append(
                    [split, language, decoding]
                    + ["-" if figures[f] is None else f"{figures[f]:.0%}" for f in FIGURES]
                )
    headers = ["split", "lang", "decoding", "exact", "slots", "values", "clarify", "refuse"]
    lines = markdown_table(headers, body, left=3)
    for split, by_decoding in result.get("failures", {}).items():
        for decoding, misses in by_decoding.items():
            if misses:
                lines += ["", f"Failures, {split}, {decoding}:"]
            for miss in misses:
                lines += [
                    f"- [{miss['language']}] {miss['figure']}: {miss['request']!r}",
                    f"  expected {json.dumps(miss['expected'], ensure_ascii=False)}",
                    f"  got      {miss['got']!r}",
                ]
    return "\n".join(lines)


def dump(result: Mapping[str, Any]) -> str:
    """The result as JSON."""
    return json.dumps(result, indent=2, ensure_ascii=False)
