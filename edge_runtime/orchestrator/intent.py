"""Intent parsing by sentence templates (hassil), with clauses, confidence and clarifications."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from hassil import Intents, recognize_ranked
from hassil.intents import SlotList, TextSlotList, WildcardSlotList
from hassil.recognize import RecognizeResult
from home_assistant_intents import get_intents

from edge_runtime.errors import ConfigError

# A device's names and its Home Assistant domain ("" when unknown).
Named = tuple[Sequence[str], str]
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LIST_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_][A-Za-z0-9_]*)?\}")
# Where one request holds several: "...weather in Beijing and write a reminder", "...天气并生成...".
_CLAUSES = {
    "en": re.compile(
        r"\s*(?:[,;]\s*(?:and\s+)?(?:then\s+)?|\.\s+|\s+and\s+then\s+|\s+and\s+|\s+then\s+)"
    ),
    "zh": re.compile(r"\s*(?:并且|并|然后|再|，|,|。|；|;)\s*"),
}
_MAX_ANSWER_CHARS = 40
_MAX_ANSWER_WORDS = 4
_TRIM = " \t\r\n.,!?;:。，！？；：、\"'“”‘’"


@dataclass(frozen=True, slots=True)
class Intent:
    """One recognised intent: its name, slot values, and how sure the parser is."""

    name: str
    slots: Mapping[str, Any]
    confidence: float
    text: str
    language: str
    source: Literal["rules", "clarified", "model"] = "rules"

    def as_dict(self) -> dict[str, Any]:
        """The intent as an answer lists it."""
        return {
            "name": self.name,
            "slots": dict(self.slots),
            "confidence": round(self.confidence, 3),
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class Clarification:
    """A question instead of a guess; the session's next message answers it."""

    question: str
    language: str
    # A required slot is missing from this intent...
    intent: Intent | None = None
    missing: str | None = None
    # ...or the request matched these intents about equally well.
    options: tuple[Intent, ...] = ()
    # Intents of the same request that were clear; they run once the question is answered,
    # with the clarified one back at ``position`` among them.
    others: tuple[Intent, ...] = ()
    position: int = 0


@dataclass(frozen=True, slots=True)
class Parse:
    """What the parser made of one message."""

    language: str
    intents: tuple[Intent, ...] = ()
    # Clauses no template matched, in order; the model answers them.
    unmatched: tuple[str, ...] = ()
    clarification: Clarification | None = None


@dataclass
class _Language:
    code: str
    intents: Intents
    slot_lists: dict[str, SlotList]
    ask: dict[str, str]
    labels: dict[str, str]
    choose: str


@dataclass
class IntentParser:
    """Templates first: a message is split into clauses and each is matched against templates."""

    languages: dict[str, _Language]
    # Required slots per intent (the tool's required arguments, or our own intents' needs).
    required: Mapping[str, Sequence[str]] = field(default_factory=dict)
    ambiguity_margin: float = 0.05
    # Devices repeat themselves (a wall button sends the same sentence): parses are memoised.
    memo_size: int = 1024
    _memo: OrderedDict[str, Parse] = field(default_factory=OrderedDict, repr=False)

    @classmethod
    def build(
        cls,
        *,
        languages: Sequence[str],
        handled: Iterable[str],
        required: Mapping[str, Sequence[str]],
        templates: Sequence[Path] = (),
        areas: Mapping[str, Sequence[str]] | None = None,
        devices: Mapping[str, Named] | None = None,
        ambiguity_margin: float = 0.05,
    ) -> IntentParser:
        """Load Home Assistant's sentences, ours and the user's; keep the intents handled."""
        keep = set(handled)
        extra: dict[str, list[dict[str, Any]]] = {}
        for path in templates:
            data = _read_yaml(path)
            extra.setdefault(str(data.get("language", "")), []).append(data)
        loaded: dict[str, _Language] = {}
        for code in languages:
            parts = [_home_assistant(code), _shipped(code), *extra.get(code, [])]
            parts = [p for p in parts if p]
            if not parts:
                raise ConfigError(f"no sentence templates for language {code!r}")
            merged = _merge(code, parts, keep)
            ours = merged.pop("edge_runtime", {})
            loaded[code] = _Language(
                code=code,
                intents=Intents.from_dict(merged),
                slot_lists=_slot_lists(merged, areas or {}, devices or {}),
                ask=dict(ours.get("ask", {})),
                labels=dict(ours.get("labels", {})),
                choose=str(ours.get("choose", "{options}?")),
            )
        return cls(languages=loaded, required=dict(required), ambiguity_margin=ambiguity_margin)

    def set_devices(self, devices: Mapping[str, Named]) -> None:
        """Replace the device names (config and registry) every language matches against."""
        names = named_devices(devices)
        for lang in self.languages.values():
            lang.slot_lists["name"] = names
        self._memo.clear()

    def language_of(self, text: str) -> str:
        """The configured language a message is in: Chinese if it has CJK characters."""
        codes = list(self.languages)
        if _CJK.search(text):
            return next((c for c in codes if c.startswith("zh")), codes[0])
        return next((c for c in codes if not c.startswith("zh")), codes[0])

    def parse(self, text: str, pending: Clarification | None = None) -> Parse:
        """Intents of ``text``; with ``pending`` it may be the answer to an earlier question."""
        text = unicodedata.normalize("NFKC", text).strip()
        fresh = self._memo.get(text)
        if fresh is None:
            fresh = self._parse(text, self.language_of(text))
            self._memo[text] = fresh
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(text)
        if pending is None or fresh.intents or fresh.clarification is not None:
            return fresh
        return self._answer(text, pending) or fresh

    def _parse(self, text: str, language: str) -> Parse:
        lang = self.languages[language]
        clauses = [c.strip(_TRIM) for c in _splitter(language).split(text)]
        clauses = [c for c in clauses if c]
        matches: list[list[Intent]] = [self._match(c, lang) for c in clauses]
        if len(clauses) > 1 and not all(matches):
            whole = self._match(text.strip(_TRIM), lang)
            if whole:
                clauses, matches = [text.strip(_TRIM)], [whole]
        intents: list[Intent] = []
        unmatched: list[str] = []
        for clause, found in zip(clauses, matches, strict=True):
            if not found:
                unmatched.append(clause)
                continue
            best = found[0]
            rivals = [
                i for i in found[1:] if best.confidence - i.confidence < self.ambiguity_margin
            ]
            if rivals:
                question = self._choose(lang, (best, *rivals))
                return Parse(
                    language,
                    clarification=Clarification(
                        question,
                        language,
                        options=(best, *rivals),
                        others=tuple(intents),
                        position=len(intents),
                    ),
                )
            intents.append(best)
        for index, intent in enumerate(intents):
            missing = [s for s in self.required.get(intent.name, ()) if s not in intent.slots]
            if missing:
                others = tuple(intents[:index] + intents[index + 1 :])
                question = self._ask(lang, missing[0])
                clarification = Clarification(
                    question,
                    language,
                    intent=intent,
                    missing=missing[0],
                    others=others,
                    position=index,
                )
                return Parse(language, clarification=clarification)
        return Parse(language, intents=tuple(intents), unmatched=tuple(unmatched))

    def _match(self, clause: str, lang: _Language) -> list[Intent]:
        """The best match per intent for one clause, best first."""
        if not clause:
            return []
        results = recognize_ranked(clause, lang.intents, slot_lists=lang.slot_lists)
        best: dict[str, Intent] = {}
        for result in results:
            if result.intent.name in best:
                continue
            best[result.intent.name] = _intent(result, clause, lang.code)
        return sorted(best.values(), key=lambda i: -i.confidence)

    def _answer(self, text: str, pending: Clarification) -> Parse | None:
        lang = self.languages[pending.language]
        reply = text.strip(_TRIM)
        if pending.options:
            chosen = _pick(reply, pending.options, lang)
            if chosen is None:
                return None
            clarified = _clarified(chosen, dict(chosen.slots))
            return self._complete(pending, clarified)
        if pending.intent is None or pending.missing is None or not reply:
            return None
        value: Any = reply
        slot_list = lang.slot_lists.get(pending.missing)
        if not isinstance(slot_list, TextSlotList) and (
            len(reply) > _MAX_ANSWER_CHARS or len(reply.split()) > _MAX_ANSWER_WORDS
        ):
            # An open slot is answered in a few words ("Beijing", "北京"): a whole sentence
            # is a new request, not a city.
            return None
        if isinstance(slot_list, TextSlotList):
            value = _lookup(reply, slot_list)
            if value is None:
                return None
        slots = {**pending.intent.slots, pending.missing: value}
        return self._complete(pending, _clarified(pending.intent, slots))

    def _complete(self, pending: Clarification, intent: Intent) -> Parse:
        lang = self.languages[pending.language]
        missing = [s for s in self.required.get(intent.name, ()) if s not in intent.slots]
        if missing:
            question = self._ask(lang, missing[0])
            return Parse(
                pending.language,
                clarification=Clarification(
                    question,
                    pending.language,
                    intent=intent,
                    missing=missing[0],
                    others=pending.others,
                    position=pending.position,
                ),
            )
        intents = list(pending.others)
        intents.insert(pending.position, intent)
        return Parse(pending.language, intents=tuple(intents))

    def _ask(self, lang: _Language, slot: str) -> str:
        template = lang.ask.get(slot) or lang.ask.get("default") or "{slot}?"
        return template.format(slot=slot)

    def _choose(self, lang: _Language, options: Sequence[Intent]) -> str:
        labels = [f"{n}. {lang.labels.get(i.name, i.name)}" for n, i in enumerate(options, 1)]
        joiner = "，" if lang.code.startswith("zh") else ", "
        return lang.choose.format(options=joiner.join(labels))


def _splitter(language: str) -> re.Pattern[str]:
    return _CLAUSES["zh" if language.startswith("zh") else "en"]


def _intent(result: RecognizeResult, clause: str, language: str) -> Intent:
    slots: dict[str, Any] = {}
    wildcard_chars = 0
    for name, entity in result.entities.items():
        value = entity.value
        if isinstance(value, str):
            value = value.strip(_TRIM)
        slots[name] = value
        if entity.is_wildcard:
            wildcard_chars += len(str(entity.text))
    # Template text and list values are certain; a wildcard could have swallowed anything,
    # so its share of the clause counts at half.
    confidence = 1.0 - 0.5 * min(1.0, wildcard_chars / max(1, len(clause)))
    return Intent(result.intent.name, slots, confidence, clause, language)


def _clarified(intent: Intent, slots: Mapping[str, Any]) -> Intent:
    return Intent(intent.name, slots, 1.0, intent.text, intent.language, "clarified")


def _pick(reply: str, options: Sequence[Intent], lang: _Language) -> Intent | None:
    folded = reply.casefold().strip()
    if not folded:
        return None
    # "2", "2.", "option 2": one small ASCII number picks by position.
    number = re.fullmatch(r"(?:option\s*|第)?([0-9]{1,2})(?:\.|个)?", folded)
    if number is not None:
        index = int(number.group(1))
        return options[index - 1] if 1 <= index <= len(options) else None
    # Otherwise the reply must name an option: its label or its intent name, in full.
    named = [
        option
        for option in options
        if lang.labels.get(option.name, option.name).casefold() in folded
        or option.name.casefold() in folded
    ]
    return named[0] if len(named) == 1 else None


def _lookup(reply: str, slot_list: TextSlotList) -> Any:
    folded = reply.casefold()
    for value in slot_list.values:
        spoken = value.text_in.text if hasattr(value.text_in, "text") else str(value.text_in)
        if spoken.casefold() == folded or spoken.casefold() in folded:
            return value.value_out
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read sentence templates: {exc}", file=Path(path)) from None
    if not isinstance(data, dict) or "language" not in data or "intents" not in data:
        raise ConfigError("sentence templates need 'language' and 'intents'", file=Path(path))
    return data


def _home_assistant(code: str) -> dict[str, Any]:
    return get_intents(code) or {}


def _shipped(code: str) -> dict[str, Any]:
    path = resources.files("edge_runtime.orchestrator") / "intents" / f"{code}.yaml"
    if not path.is_file():
        return {}
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def _merge(code: str, parts: Sequence[Mapping[str, Any]], keep: set[str]) -> dict[str, Any]:
    """One template set from several: intents' sentence data appended, lists and rules replaced."""
    merged: dict[str, Any] = {
        "language": code,
        "intents": {},
        "lists": {},
        "expansion_rules": {},
        "skip_words": [],
        "edge_runtime": {},
    }
    for part in parts:
        for name, intent in part.get("intents", {}).items():
            if name in keep:
                merged["intents"].setdefault(name, {"data": []})["data"].extend(intent["data"])
        merged["lists"].update(part.get("lists", {}))
        merged["expansion_rules"].update(part.get("expansion_rules", {}))
        merged["skip_words"].extend(part.get("skip_words", []))
        for key, value in part.get("edge_runtime", {}).items():
            below = merged["edge_runtime"].get(key)
            merged["edge_runtime"][key] = (
                {**below, **value} if isinstance(below, dict) and isinstance(value, dict) else value
            )
    return merged


def _slot_lists(
    merged: Mapping[str, Any],
    areas: Mapping[str, Sequence[str]],
    devices: Mapping[str, Named],
) -> dict[str, SlotList]:
    """Areas and device names from config; an empty list for any other list the templates use."""
    lists: dict[str, SlotList] = {
        "area": _named("area", areas),
        "name": named_devices(devices),
    }
    referenced = set(_LIST_REF.findall(json.dumps(merged["intents"], ensure_ascii=False)))
    for name in referenced - set(merged["lists"]) - set(lists):
        lists[name] = TextSlotList(name=name, values=[])
    for name, spec in merged["lists"].items():
        if isinstance(spec, dict) and spec.get("wildcard"):
            lists.setdefault(name, WildcardSlotList(name=name))
    return lists


def named_devices(devices: Mapping[str, Named]) -> TextSlotList:
    """The "name" slot list: each device's names, with its domain as the match context."""
    values: list[tuple[str, Any, dict[str, Any]]] = []
    for ident, (names, domain) in devices.items():
        context = {"domain": domain} if domain else {}
        values.extend((spoken, ident, context) for spoken in (names or (ident,)))
    return TextSlotList.from_tuples(values, name="name") if values else TextSlotList("name", [])


def _named(name: str, table: Mapping[str, Sequence[str]]) -> TextSlotList:
    values = [(spoken, ident) for ident, names in table.items() for spoken in (names or (ident,))]
    return TextSlotList.from_tuples(values, name=name) if values else TextSlotList(name, [])
