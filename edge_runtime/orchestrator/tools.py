"""The tool gateway: declared tools, their argument schemas, and calls bounded in time and size."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import sqlite3
import time
import urllib.parse
from collections import Counter as CounterType
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from edge_runtime.config import ToolParameter, ToolSettings
from edge_runtime.errors import ToolConfigError, ToolDeniedError, ToolError
from edge_runtime.state import StateStore

ENTRY_POINT_GROUP = "edge_runtime.tools"
# Asked before every call: None lets it through, a string is the reason it was denied.
ToolGuard = Callable[[str, Mapping[str, Any]], Awaitable[str | None]]
# Publishes (topic, payload, retain) at QoS 1 and returns once the broker has it.
Publisher = Callable[[str, bytes, bool], Awaitable[None]]
# Keeps a note for a device: (device, text).
NoteKeeper = Callable[[str, str], Awaitable[None]]
_PYTHON_TYPES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool}
_TOPIC_UNSAFE = re.compile(r"[/+#\x00]")
log = logging.getLogger("edge_runtime.tools")
# httpx logs every request at INFO; the answer's tool_calls already tell that story.
logging.getLogger("httpx").setLevel(logging.WARNING)
_SQL_PARAM = re.compile(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One finished call: what was asked, what came back or why not, and how long it took."""

    name: str
    arguments: Mapping[str, Any]
    output: Any = None
    error: str | None = None
    duration_s: float = 0.0
    cache_ttl_s: float = 0.0
    # Arguments in the words they were given, where ``resolve`` turned names into ids.
    said: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Whether the tool answered."""
        return self.error is None

    def observation(self) -> dict[str, Any]:
        """What the model and the answer see of this call."""
        if self.error is not None:
            return {"error": self.error}
        return {"result": self.output}

    def as_dict(self) -> dict[str, Any]:
        """The call as the answer's ``tool_calls`` lists it."""
        out: dict[str, Any] = {"name": self.name, "arguments": dict(self.arguments)}
        out.update(self.observation())
        out["duration_ms"] = round(self.duration_s * 1000, 2)
        return out


def arguments_model(name: str, parameters: Mapping[str, ToolParameter]) -> type[BaseModel]:
    """A pydantic model of a tool's arguments: types, bounds, enums, no unknown keys."""
    fields: dict[str, Any] = {}
    for key, spec in parameters.items():
        kind: Any = _PYTHON_TYPES[spec.type]
        if spec.enum is not None:
            kind = Literal[tuple(spec.enum)]
        constraints: dict[str, Any] = {}
        if spec.description:
            constraints["description"] = spec.description
        if spec.type == "string" and spec.enum is None:
            constraints["max_length"] = spec.max_length
        if spec.minimum is not None:
            constraints["ge"] = spec.minimum
        if spec.maximum is not None:
            constraints["le"] = spec.maximum
        if spec.default is not None:
            fields[key] = (kind, Field(spec.default, **constraints))
        elif spec.required:
            fields[key] = (kind, Field(..., **constraints))
        else:
            fields[key] = (kind | None, Field(None, **constraints))
    config = ConfigDict(extra="forbid", frozen=True)
    model: type[BaseModel] = create_model(f"{name}_arguments", __config__=config, **fields)
    return model


def _property_schema(spec: ToolParameter) -> dict[str, Any]:
    """JSON Schema of one argument: an enum lists its values, a string says how long it may be."""
    out: dict[str, Any] = {}
    if spec.enum is not None:
        out["enum"] = list(spec.enum)
    else:
        out["type"] = spec.type
    if spec.description:
        out["description"] = spec.description
    if spec.type == "string" and spec.enum is None:
        out["maxLength"] = spec.max_length
        if spec.grounded:
            out["x-grounded"] = True
    for bound, value in (("minimum", spec.minimum), ("maximum", spec.maximum)):
        if value is not None:
            # Bounds are read as floats; an integer's are written as integers.
            whole = spec.type == "integer" and float(value).is_integer()
            out[bound] = int(value) if whole else value
    if spec.default is not None:
        out["default"] = spec.default
    return out


class Tool:
    """One declared tool; subclasses do the call itself."""

    def __init__(self, settings: ToolSettings):
        self.settings = settings
        self.name = settings.name
        self.arguments_model = arguments_model(settings.name, settings.parameters)

    def schema(self) -> dict[str, Any]:
        """The function description a GLM sees in its tool list.

        Written from the declaration rather than by pydantic, so that the same declaration
        always gives the same text: a model trained with a tool list sees that list again.
        """
        properties = {key: _property_schema(spec) for key, spec in self.settings.parameters.items()}
        required = [
            key
            for key, spec in self.settings.parameters.items()
            if spec.required and spec.default is None
        ]
        return {
            "name": self.name,
            "description": self.settings.description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        }

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Checked arguments with defaults filled in; ToolError says what is wrong."""
        if not isinstance(arguments, Mapping):
            raise ToolError(f"{self.name}: arguments must be an object")
        try:
            checked = self.arguments_model.model_validate(dict(arguments))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "arguments"
            raise ToolError(f"{self.name}: {where}: {first['msg']}") from None
        return checked.model_dump()

    async def run(self, arguments: dict[str, Any], timeout: float, device: str = "") -> Any:
        """Call the tool with checked arguments; raise ToolError on failure."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the tool holds."""


class MqttStateTool(Tool):
    """The latest value of a device topic, from the state the MQTT transport keeps."""

    def __init__(self, settings: ToolSettings, state: StateStore):
        super().__init__(settings)
        self._state = state

    async def run(self, arguments: dict[str, Any], timeout: float, device: str = "") -> Any:
        _check_topic_arguments(self.name, arguments)
        assert self.settings.topic is not None
        topic = _expand(self.settings.topic, arguments, quote=False)
        reading = self._state.get(topic)
        if reading is None:
            raise ToolError(f"no reading on {topic} yet")
        age = self._state.age(reading)
        if self.settings.max_age_s and age > self.settings.max_age_s:
            raise ToolError(f"the last reading on {topic} is {age:.0f} s old")
        return {"topic": topic, "value": reading.value, "age_s": round(age, 1)}


def _check_topic_arguments(name: str, arguments: Mapping[str, Any]) -> None:
    """Arguments that go into a topic may not reach another level or a wildcard."""
    for key, value in arguments.items():
        if isinstance(value, str) and _TOPIC_UNSAFE.search(value):
            raise ToolError(f"{name}: {key} may not contain '/', '+', '#'")


class MqttPublishTool(Tool):
    """A command to a device: a message published to a topic, acknowledged by the broker."""

    def __init__(self, settings: ToolSettings, publish: Publisher | None):
        super().__init__(settings)
        self._publish = publish

    async def run(self, arguments: dict[str, Any], timeout: float, device: str = "") -> Any:
        if self._publish is None:
            raise ToolError(f"{self.name}: MQTT is off")
        _check_topic_arguments(self.name, arguments)
        assert self.settings.topic is not None and self.settings.payload is not None
        topic = _expand(self.settings.topic, arguments, quote=False)
        payload = _expand(self.settings.payload, arguments, quote=False)
        await self._publish(topic, payload.encode(), self.settings.retain)
        return {"ok": True}


class NoteTool(Tool):
    """A note kept in the calling device's long-term memory."""

    def __init__(self, settings: ToolSettings, keep: NoteKeeper | None):
        super().__init__(settings)
        self._keep = keep

    async def run(self, arguments: dict[str, Any], timeout: float, device: str = "") -> Any:
        if self._keep is None:
            raise ToolError(f"{self.name}: long-term memory is off")
        (text,) = arguments.values()
        await self._keep(device, str(text))
        return {"saved": True}


class _Threads:
    """A tool's own worker threads: a tool whose calls hang uses up its threads, no one else's."""

    def __init__(self, name: str, size: int = 2):
        self.name = name
        self.size = size
        self.busy = 0
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"tool-{name}")

    async def run(self, function: Callable[[], Any]) -> Any:
        if self.busy >= self.size:
            raise ToolError(f"{self.name}: busy: {self.busy} earlier calls are still running")
        self.busy += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, function)

        def done(_: object) -> None:
            self.busy -= 1

        # Counted until the thread is really free, not until the caller stops waiting.
        future.add_done_callback(done)
        return await asyncio.shield(future)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class SqliteTool(Tool):
    """One named, parameterized query on a database opened read-only."""

    def __init__(self, settings: ToolSettings):
        super().__init__(settings)
        assert settings.query is not None and settings.database is not None
        self._threads = _Threads(settings.name)
        self._database = Path(settings.database)
        self._query = settings.query.strip().rstrip(";")
        if ";" in self._query:
            raise ToolConfigError(f"tool {self.name}: query must be one statement")
        unknown = set(_SQL_PARAM.findall(self._query)) - set(settings.parameters)
        if unknown:
            raise ToolConfigError(
                f"tool {self.name}: query uses undeclared parameters {', '.join(sorted(unknown))}"
            )

    async def run(self, arguments: dict[str, Any], timeout: float, device: str = "") -> Any:
        deadline = time.monotonic() + timeout
        return await self._threads.run(lambda: self._select(arguments, deadline))

    async def close(self) -> None:
        self._threads.close()

    def _select(self, arguments: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
        uri = f"{self._database.resolve().as_uri()}?mode=ro"
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=1.0, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ToolError(f"{self.name}: cannot open {self._database}: {exc}") from None
        try:
            connection.execute("PRAGMA query_only = 1")
            # A runaway query is stopped at the deadline instead of holding a thread.
            connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            connection.row_factory = sqlite3.Row
            cursor = connection.execute(self._query, arguments)
            rows = cursor.fetchmany(self.settings.max_rows)
            return [dict(row) for row in rows]
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise ToolError(f"{self.name}: query ran past its timeout") from None
            raise ToolError(f"{self.name}: {exc}") from None
        except sqlite3.Error as exc:
            raise ToolError(f"{self.name}: {exc}") from None
        finally:
            connection.close()


class HttpTool(Tool):
    """GET or POST to a URL template under the allow-list."""

    def __init__(self, settings: ToolSettings, allow: Sequence[str], client: httpx.AsyncClient):
        super().__init__(settings)
        assert settings.url is not None
        self._allow = tuple(allow)
        self._client = client
        fixed = settings.url.split("{", 1)[0]
        # The part before the first argument must be allowed on its own, so no argument can
        # change the host or port the call goes to.
        if not self._allowed(fixed) or "{" in urllib.parse.urlsplit(settings.url).netloc:
            raise ToolConfigError(
                f"tool {self.name}: {settings.url} is not under orchestrator.http_allow"
            )

    def _allowed(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self._allow)

    async def run(self, arguments: dict[str, Any], timeout: float, device: str = "") -> Any:
        assert self.settings.url is not None
        for key, value in arguments.items():
            if isinstance(value, str) and value.strip() in (".", ".."):
                # Quoting leaves dots alone, and a ".." segment would climb out of the path.
                raise ToolError(f"{self.name}: {key} may not be {value.strip()!r}")
        url = str(httpx.URL(_expand(self.settings.url, arguments, quote=True)))
        if not self._allowed(url):
            raise ToolError(f"{self.name}: {url} is not allowed")
        cap = self.settings.max_output_bytes
        body = json.dumps(arguments).encode() if self.settings.method == "POST" else None
        headers = dict(self.settings.headers)
        # The cap counts bytes on the wire: a compressed answer could inflate far past it.
        headers["accept-encoding"] = "identity"
        if body is not None:
            headers.setdefault("content-type", "application/json")
        try:
            async with self._client.stream(
                self.settings.method, url, content=body, headers=headers, timeout=timeout
            ) as response:
                encoding = response.headers.get("content-encoding", "identity").lower()
                if encoding not in ("identity", ""):
                    raise ToolError(f"{self.name}: answer is {encoding}-encoded; ask for identity")
                data = bytearray()
                async for piece in response.aiter_raw():
                    data += piece
                    if len(data) > cap:
                        raise ToolError(f"{self.name}: answer is over {cap} bytes")
                status = response.status_code
                kind = response.headers.get("content-type", "")
        except httpx.TimeoutException:
            raise ToolError(f"{self.name}: {url} did not answer in {timeout:.1f} s") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"{self.name}: {url}: {exc}") from None
        if status >= 300:
            # Redirects are not followed: they could lead off the allow-list.
            raise ToolError(f"{self.name}: {url} answered HTTP {status}")
        text = bytes(data).decode("utf-8", "replace")
        if "json" in kind or text.lstrip().startswith(("{", "[")):
            try:
                return json.loads(text)
            except (ValueError, RecursionError):
                pass
        return text


class PythonTool(Tool):
    """A function from an installed package, found by entry point."""

    def __init__(self, settings: ToolSettings):
        super().__init__(settings)
        assert settings.entry_point is not None
        self._function = load_entry_point(settings.entry_point)
        self._threads = _Threads(settings.name)

    async def close(self) -> None:
        self._threads.close()

    async def run(self, arguments: dict[str, Any], timeout: float, device: str = "") -> Any:
        try:
            if inspect.iscoroutinefunction(self._function):
                return await self._function(**arguments)
            return await self._threads.run(lambda: self._function(**arguments))
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"{self.name}: {type(exc).__name__}: {exc}") from None


def load_entry_point(value: str) -> Callable[..., Any]:
    """A callable from ``module:attr``, or by name from the edge_runtime.tools group."""
    try:
        if ":" in value:
            target = metadata.EntryPoint(name=value, value=value, group=ENTRY_POINT_GROUP).load()
        else:
            found = metadata.entry_points(group=ENTRY_POINT_GROUP, name=value)
            if not found:
                raise ToolConfigError(f"no entry point {value!r} in group {ENTRY_POINT_GROUP}")
            target = next(iter(found)).load()
    except ToolConfigError:
        raise
    except Exception as exc:
        raise ToolConfigError(f"entry point {value!r} does not load: {exc}") from None
    if not callable(target):
        raise ToolConfigError(f"entry point {value!r} is not callable")
    return target  # type: ignore[no-any-return]


def _expand(template: str, arguments: Mapping[str, Any], *, quote: bool) -> str:
    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in arguments:
            raise ToolError(f"template needs argument {key!r}")
        text = "" if arguments[key] is None else str(arguments[key])
        return urllib.parse.quote(text, safe="") if quote else text

    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", value, template)


@dataclass
class ToolGateway:
    """Every declared tool, called with validation, a filter check, a timeout and a size cap."""

    tools: dict[str, Tool]
    clock: Callable[[], float] = time.monotonic
    # For arguments declared with ``resolve``: slot list -> casefolded name -> id.
    names: dict[str, dict[str, str]] = field(default_factory=dict)
    # Calls by (tool, outcome): ok, denied or error; read by the metrics endpoint.
    outcomes: CounterType[tuple[str, str]] = field(default_factory=CounterType)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        declared: Sequence[ToolSettings],
        *,
        state: StateStore | None = None,
        http_allow: Sequence[str] = (),
        publish: Publisher | None = None,
        keep_note: NoteKeeper | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> ToolGateway:
        """Instantiate the declared tools; a tool that cannot work is a ToolConfigError now."""
        # Sync tools (sqlite, python functions) run on threads of their own, never on the
        # event loop. A function that hangs keeps its thread; the call still ends at its timeout.
        client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        tools: dict[str, Tool] = {}
        for spec in declared:
            try:
                tool: Tool
                if spec.kind == "mqtt_state":
                    tool = MqttStateTool(spec, state if state is not None else StateStore())
                elif spec.kind == "mqtt_publish":
                    tool = MqttPublishTool(spec, publish)
                elif spec.kind == "note":
                    tool = NoteTool(spec, keep_note)
                elif spec.kind == "sqlite":
                    tool = SqliteTool(spec)
                elif spec.kind == "http":
                    tool = HttpTool(spec, http_allow, client)
                else:
                    tool = PythonTool(spec)
            except ToolConfigError:
                for built in tools.values():
                    if isinstance(built, SqliteTool | PythonTool):
                        built._threads.close()
                raise
            tools[spec.name] = tool

        async def close() -> None:
            await client.aclose()
            for built in tools.values():
                await built.close()

        gateway = cls(tools=tools, clock=clock)
        gateway._closers.append(close)
        return gateway

    async def close(self) -> None:
        """Close the HTTP client and the tool threads."""
        for closer in self._closers:
            await closer()
        self._closers.clear()

    def schemas(self) -> list[dict[str, Any]]:
        """The function descriptions of the tools offered to the model, for its tool list."""
        return [tool.schema() for tool in self.tools.values() if tool.settings.offer_to_model]

    def set_names(self, slot_list: str, named: Mapping[str, Sequence[str]]) -> None:
        """What ``resolve`` arguments map: each id is also called by its names."""
        self.names[slot_list] = {
            name.casefold(): ident for ident, names in named.items() for name in (ident, *names)
        }

    def grounded_names(self) -> dict[str, dict[str, list[str]]]:
        """Tool -> argument -> the names a grounded ``resolve`` argument may take.

        Grounded decoding holds such an argument to the areas or devices the message mentions,
        whole, when it mentions any (see model/constrain.py).
        """
        out: dict[str, dict[str, list[str]]] = {}
        for tool in self.tools.values():
            for key, spec in tool.settings.parameters.items():
                known = self.names.get(spec.resolve or "", {})
                if spec.grounded and known:
                    out.setdefault(tool.name, {})[key] = list(known)
        return out

    def observation(self, call: ToolCall) -> dict[str, Any]:
        """What the model reads of a call: the arguments, then the result or the error.

        Restating the arguments (in the user's words, not the ids they resolved to) lets a small
        model copy the city or room into its answer; ``observe`` picks and renames the result's
        fields.
        """
        if call.error is not None:
            return {"error": call.error}
        tool = self.tools.get(call.name)
        observe = tool.settings.observe if tool is not None else {}
        output = call.output
        if isinstance(output, Mapping):
            picked = {k: output.get(f) for k, f in observe.items()} if observe else dict(output)
        else:
            picked = {"result": output}
        return {**(call.said or call.arguments), **picked}

    def _resolved(self, tool: Tool, arguments: dict[str, Any]) -> dict[str, Any]:
        out = dict(arguments)
        for key, spec in tool.settings.parameters.items():
            value = out.get(key)
            if spec.resolve is not None and isinstance(value, str):
                known = self.names.get(spec.resolve, {})
                if spec.known_only and value.casefold() not in known:
                    kind = "area" if spec.resolve == "areas" else "device"
                    raise ToolError(f"{tool.name}: no {kind} is called {value!r}")
                out[key] = known.get(value.casefold(), value)
        return out

    def for_intent(self, intent: str) -> Tool | None:
        """The tool that answers a rule-matched intent, if one is declared."""
        for tool in self.tools.values():
            if intent in tool.settings.intents:
                return tool
        return None

    async def call(
        self,
        name: str,
        arguments: Mapping[str, Any],
        *,
        guard: ToolGuard | None = None,
        timeout: float | None = None,
        device: str = "",
    ) -> ToolCall:
        """Call one tool; every failure comes back as a ToolCall with an error, never raised."""
        started = self.clock()
        tool = self.tools.get(name)
        args = dict(arguments) if isinstance(arguments, Mapping) else {}
        if tool is None:
            return ToolCall(name, args, error=f"unknown tool {name!r}")
        limit = (
            tool.settings.timeout_s if timeout is None else min(timeout, tool.settings.timeout_s)
        )
        try:
            given = self._resolved(tool, args) if isinstance(arguments, Mapping) else arguments
            checked = tool.validate(given)
            if guard is not None:
                denied = await guard(name, checked)
                if denied is not None:
                    raise ToolDeniedError(f"{name}: denied: {denied}")
            try:
                async with asyncio.timeout(max(limit, 0.0)):
                    output = await tool.run(checked, max(limit, 0.001), device)
            except TimeoutError:
                raise ToolError(f"{name}: no answer within {limit:.1f} s") from None
            output = _capped(name, output, tool.settings.max_output_bytes)
        except ToolError as exc:
            outcome = "denied" if isinstance(exc, ToolDeniedError) else "error"
            self.outcomes[(name, outcome)] += 1
            log.warning("tool %s failed: %s", name, str(exc).removeprefix(f"{name}: "))
            return ToolCall(name, args, error=str(exc), duration_s=self.clock() - started)
        except Exception as exc:  # a tool or guard bug is this call's failure, nobody else's
            self.outcomes[(name, "error")] += 1
            log.exception("tool call %s raised", name)
            error = f"{name}: {type(exc).__name__}: {exc}"
            return ToolCall(name, args, error=error, duration_s=self.clock() - started)
        self.outcomes[(name, "ok")] += 1
        renamed = {k: v for k, v in args.items() if k in checked and checked[k] != v}
        return ToolCall(
            name,
            checked,
            output=output,
            duration_s=self.clock() - started,
            cache_ttl_s=tool.settings.cache_ttl_s,
            said={**checked, **renamed} if renamed else None,
        )


def _capped(name: str, output: Any, cap: int) -> Any:
    try:
        encoded = json.dumps(output, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ToolError(f"{name}: output is not JSON: {exc}") from None
    size = len(encoded.encode())
    if size > cap:
        raise ToolError(f"{name}: output is {size} bytes, over the cap of {cap}")
    # Round-trip so what is cached and shown is plain JSON data (no tuples, dates, ...).
    return json.loads(encoded)
