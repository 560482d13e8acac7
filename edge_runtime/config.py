"""The settings tree: pydantic models loaded from one TOML file over a device-profile overlay."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import ConfigError

DEFAULT_CONFIG_NAME = "edge-runtime.toml"


class _Section(BaseModel):
    # Frozen so a running daemon can hand the same object to every part; extra="forbid" so a
    # misspelt key is an error at load time, not a silently ignored line.
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSettings(_Section):
    """Which model to serve and how generations are bounded."""

    path: Path = Path("models/glm-edge-mini")
    # Hashing a multi-GB graph takes seconds: "full" checks every byte against the manifest,
    # "size" only the sizes, "off" nothing.
    verify: Literal["full", "size", "off"] = "full"
    context_length: int = Field(2048, ge=16)
    max_new_tokens: int = Field(256, ge=1)
    # What to do when a chat does not fit the context window: drop the oldest turns (keeping
    # system messages and the last user turn) or refuse the request.
    context_overflow: Literal["drop_oldest", "error"] = "drop_oldest"


class RuntimeSettings(_Section):
    """How onnxruntime uses the box."""

    # 0 means the physical cores we may use (affinity and cgroup quota included).
    threads: int = Field(0, ge=0)
    # onnxruntime's worker threads spin between kernels instead of sleeping: a decode step is
    # a hundred short kernels, and waking a sleeping thread for each costs more than it
    # computes. They stop spinning about 50 ms after the last run, so an idle daemon uses no CPU.
    allow_spinning: bool = True
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # Sequences decoded together in one step (graphs rewritten by `model export`/`model
    # optimize`). Each holds a row of the KV cache, preallocated to model.context_length.
    max_batch: int = Field(4, ge=1, le=64)


class QuantizationSettings(_Section):
    """The INT8 scheme `model export` uses on this class of box."""

    scheme: Literal["dynamic", "matmul_nbits"] = "dynamic"
    # quantize_dynamic: signed (s8) or unsigned (u8) weights. Activations are u8; u8×u8 avoids
    # VPMADDUBSW saturation on x86 without VNNI at some accuracy cost.
    weight_type: Literal["int8", "uint8"] = "int8"
    # quantize_dynamic: 7-bit weights, the other cure for that saturation.
    reduce_range: bool = False
    per_channel: bool = False
    # MatMulNBits: accuracy_level 4 selects the int8 compute kernels.
    block_size: int = Field(32, ge=16)
    accuracy_level: int = Field(4, ge=0, le=4)


class LimitSettings(_Section):
    """Explicit bounds on work the daemon accepts."""

    max_concurrent: int = Field(2, ge=1)
    max_queue: int = Field(16, ge=0)
    max_payload_bytes: int = Field(64 * 1024, ge=256)
    # On SIGTERM, requests under way get this long to finish.
    shutdown_grace_s: float = Field(30.0, ge=0)
    # 0: no bound. Used for systemd's MemoryMax and checked by `doctor` against the model size.
    memory_max_mb: int = Field(0, ge=0)


class DeviceSettings(_Section):
    """Which device profile applies."""

    # "auto" picks the best match for the detected hardware; a name forces that profile.
    profile: str = "auto"
    # Extra directory searched for profiles before the packaged ones.
    profiles_dir: Path | None = None


class LogSettings(_Section):
    """Logging output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    # Also publish records at or above this level to <prefix>/logs/<node> (JSON, QoS 0).
    mqtt_level: Literal["off", "debug", "info", "warning", "error"] = "off"


class MetricsSettings(_Section):
    """The local Prometheus endpoint (/metrics) and /health."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0 picks a free port (the daemon logs which).
    port: int = Field(9464, ge=0, le=65535)


class FilterSettings(_Section):
    """One Proxy-Wasm filter of the chain (`[[filters]]`, run in the order written)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    module: Path
    # The root context id the module registers (AssemblyScript: registerRootContext's name).
    root_id: str | None = None
    # The plugin configuration handed to on_configure; inline or from a file.
    config: str = ""
    config_file: Path | None = None
    vm_config: str = ""
    # closed: a failing filter answers the request with an error; open: it is skipped.
    fail: Literal["closed", "open"] = "closed"
    log_level: Literal["trace", "debug", "info", "warn", "error", "critical"] = "info"
    deadline_ms: float = Field(5.0, gt=0, le=60_000)
    start_deadline_ms: float = Field(1000.0, gt=0, le=600_000)
    # 0: no fuel metering; otherwise instructions-ish per callback.
    fuel: int = Field(0, ge=0)
    memory_max_mb: int = Field(16, ge=1, le=4096)
    environ: dict[str, str] = {}


class FilterHostSettings(_Section):
    """The wasmtime host all filters share."""

    # Epoch tick: the granularity of callback deadlines.
    tick_ms: float = Field(1.0, gt=0, le=1000)
    # Compiled modules are cached here (keyed by wasm bytes and engine configuration).
    cache_dir: Path | None = None
    max_restarts: int = Field(5, ge=0)
    restart_window_s: float = Field(60.0, gt=0)
    # Named upstreams proxy_http_call may reach; nothing else is reachable.
    upstreams: dict[str, str] = {}
    # Cross the wasm boundary through wasmtime's unchecked entry points (falls back to the
    # public API by itself when they are unavailable).
    fast_path: bool = True


class MqttSettings(_Section):
    """The MQTT broker and how this node takes part."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    # Topics: <prefix>/req/<device>, <prefix>/res/<device>, <prefix>/status/<node>.
    prefix: str = Field("edge", pattern=r"^[^#+$/][^#+]*$")
    # Empty: the host name. Must be unique per daemon on one broker.
    node_id: str = ""
    # Daemons in one shared-subscription group split the requests; empty: no sharing.
    share_group: str = "edge-runtime"
    session_expiry_s: int = Field(3600, ge=0)
    keepalive_s: int = Field(30, ge=5)
    username: str | None = None
    password: str | None = None
    answered_cache: int = Field(1024, ge=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    # Publishes waiting for the broker; past this, answers fail rather than pile up in memory.
    max_queued_messages: int = Field(1000, ge=1)
    # Device topics whose latest value the mqtt_state tool reads (wildcards allowed).
    state_topics: tuple[str, ...] = ()
    max_state_entries: int = Field(10_000, ge=1)
    # TLS: the CA that signed the broker's certificate; a client certificate and key for
    # mutual TLS. Relative paths are relative to the config file.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


class CoapSettings(_Section):
    """The CoAP server (UDP)."""

    enabled: bool = True
    # "::" listens on every address, IPv4 included (v4-mapped).
    host: str = "::"
    port: int = Field(5683, ge=1, le=65535)


class RouteSettings(_Section):
    """Which route answers a request no filter and no body routed."""

    default: Literal["direct", "orchestrate", "echo"] = "direct"
    # Streamed deltas are coalesced up to this many characters or this much time.
    coalesce_chars: int = Field(48, ge=1)
    coalesce_ms: float = Field(80.0, ge=0)


ToolKind = Literal["mqtt_state", "mqtt_publish", "note", "sqlite", "http", "python"]
ToolArgument = str | int | float | bool


class ToolParameter(_Section):
    """One argument of a tool: its type and bounds, checked before every call."""

    type: Literal["string", "integer", "number", "boolean"] = "string"
    description: str = ""
    required: bool = True
    default: ToolArgument | None = None
    enum: tuple[ToolArgument, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int = Field(256, ge=1)
    # A string the user must have said (a city, a room): when the model calls the tool, the
    # value is held to text of the user's message (grounded decoding).
    grounded: bool = False
    # Names in the user's words become ids before the call: "areas" through
    # orchestrator.areas, "devices" through the configured and registered device names.
    resolve: Literal["areas", "devices"] | None = None
    # With resolve: a name that is no known area or device fails the call, instead of going
    # on as the user wrote it. For commands: nothing is sent to a device nobody registered.
    known_only: bool = False

    @model_validator(mode="after")
    def _known_only_resolves(self) -> ToolParameter:
        if self.known_only and self.resolve is None:
            raise ValueError("known_only needs resolve")
        return self


class ToolSettings(_Section):
    """One tool the orchestrator may call: its kind, arguments, and bounds."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: ToolKind
    description: str = ""
    parameters: dict[str, ToolParameter] = {}
    # Rule-matched intents this tool answers; their slots become its arguments, together with
    # any fixed here per intent (HassClimateGetTemperature = { sensor = "temperature" }).
    intents: tuple[str, ...] = ()
    intent_arguments: dict[str, dict[str, ToolArgument]] = {}
    # Listed in the model's system block; false keeps a tool to the rules (a small model knows
    # only the tools it was trained with).
    offer_to_model: bool = True
    # What the model sees of a result, after the call's arguments: observation key -> result
    # field. Empty: the whole result.
    observe: dict[str, str] = {}
    timeout_s: float = Field(5.0, gt=0, le=600)
    max_output_bytes: int = Field(16 * 1024, ge=64)
    # How long an answer that used this tool's output may be cached; 0 means never.
    cache_ttl_s: float = Field(0.0, ge=0)
    # How a result reads in an answer, per language ("en", "zh"): a str.format template over
    # the arguments and the result's fields. Without one the result is shown as JSON.
    answer: dict[str, str] = {}
    # mqtt_state: the topic of the reading; mqtt_publish: the topic written to (templates over
    # the arguments).
    topic: str | None = None
    max_age_s: float = Field(0.0, ge=0)
    # mqtt_publish: the message, a template over the arguments; published with QoS 1.
    payload: str | None = None
    retain: bool = False
    # sqlite: a read-only database and one named, parameterized query.
    database: Path | None = None
    query: str | None = None
    max_rows: int = Field(50, ge=1)
    # http: a URL template; its expansion must fall under orchestrator.http_allow.
    method: Literal["GET", "POST"] = "GET"
    url: str | None = None
    headers: dict[str, str] = {}
    # python: an entry point name in the "edge_runtime.tools" group, or "module:function".
    entry_point: str | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> ToolSettings:
        needed = {
            "mqtt_state": ("topic",),
            "mqtt_publish": ("topic", "payload"),
            "note": (),
            "sqlite": ("database", "query"),
            "http": ("url",),
            "python": ("entry_point",),
        }[self.kind]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} tool needs {', '.join(missing)}")
        if self.kind == "note" and [p.type for p in self.parameters.values()] != ["string"]:
            raise ValueError("a note tool has one string parameter: the note")
        unknown = set(self.intent_arguments) - set(self.intents)
        if unknown:
            raise ValueError(f"intent_arguments for intents not listed: {sorted(unknown)}")
        return self


class DeviceNames(_Section):
    """What a device is called, and its Home Assistant domain (light, switch, sensor, ...):
    sentences that name a device only match devices of the domains they are about."""

    names: tuple[str, ...] = ()
    domain: str = ""


class OrchestratorSettings(_Section):
    """Intents, plans, memory and feedback of the orchestrate route."""

    languages: tuple[str, ...] = ("en", "zh-CN")
    # Extra sentence templates in hassil's YAML format, one file per language.
    templates: tuple[Path, ...] = ()
    # Slot lists: an id and the names it is called by, in any language.
    areas: dict[str, tuple[str, ...]] = {}
    devices: dict[str, tuple[str, ...] | DeviceNames] = {}
    # Two intents whose confidence differs by less than this ask the user which one was meant.
    ambiguity_margin: float = Field(0.05, ge=0, le=1)
    max_tool_steps: int = Field(4, ge=1, le=32)
    # Hold model-written tool calls to the declared tools and argument schemas while decoding,
    # and the numbers of plain answers to those of the conversation.
    grounded_tool_calls: bool = True
    # Under grounding, a room or device argument is held to the known areas and devices the
    # request mentions. Turn off if device names nest ("lamp" known, "floor lamp" not yet):
    # the request "the floor lamp" would be held to "lamp".
    grounded_names: bool = True
    # After a tool call the model wrote fails: "answer" says which call failed and why, and the
    # model writes no more (a small model never trained on failures invents a result: "the lamp
    # is on"); "model" gives it the error to read, to try again or explain, as GLM-4 can.
    after_tool_error: Literal["answer", "model"] = "answer"
    step_timeout_s: float = Field(10.0, gt=0)
    max_new_tokens: int = Field(128, ge=1)
    # Allowed URL prefixes for http tools, e.g. "http://192.168.1.10:8080/".
    http_allow: tuple[str, ...] = ()
    cache_size: int = Field(512, ge=1)
    cache_ttl_s: float = Field(300.0, ge=0)
    memory_turns: int = Field(8, ge=0)
    memory_tokens: int = Field(1024, ge=0)
    memory_ttl_s: float = Field(1800.0, gt=0)
    max_sessions: int = Field(4096, ge=1)
    max_facts_per_device: int = Field(1000, ge=1)
    # Ratings run 1..5; at or below this an answer is bad and leaves the cache.
    bad_rating: int = Field(2, ge=1, le=5)


class Settings(_Section):
    """The whole configuration of one daemon."""

    model_provider: Literal["onnx"] = "onnx"
    timeout_seconds: float = Field(30.0, gt=0)
    # Long-term memory, feedback and the device registry live here (SQLite files); under
    # systemd, the unit's StateDirectory.
    state_dir: Path = Path("state")
    model: ModelSettings = ModelSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    quantization: QuantizationSettings = QuantizationSettings()
    limits: LimitSettings = LimitSettings()
    device: DeviceSettings = DeviceSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    filter_host: FilterHostSettings = FilterHostSettings()
    filters: tuple[FilterSettings, ...] = ()
    mqtt: MqttSettings = MqttSettings()
    coap: CoapSettings = CoapSettings()
    routes: RouteSettings = RouteSettings()
    enable_caching: bool = True
    orchestrator: OrchestratorSettings = OrchestratorSettings()
    tools: tuple[ToolSettings, ...] = ()

    @model_validator(mode="after")
    def _unique_tools(self) -> Settings:
        names = [tool.name for tool in self.tools]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"tool {name!r} is declared twice")
        return self


def read_toml(path: Path) -> dict[str, Any]:
    """Read one TOML file; syntax errors name the file and the line."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=path) from None


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two TOML tables; values in ``over`` win, tables merge key by key."""
    out = dict(base)
    for key, value in over.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = merge(below, value)
        else:
            out[key] = value
    return out


def _has_key(table: Mapping[str, Any], loc: tuple[str | int, ...]) -> bool:
    node: Any = table
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def build_settings(
    user: Mapping[str, Any],
    *,
    user_file: Path | None = None,
    overlay: Mapping[str, Any] | None = None,
    overlay_file: Path | None = None,
) -> Settings:
    """Validate ``user`` over ``overlay`` (a device profile's settings) into a Settings tree.

    Errors name the dotted key and the file the offending value came from.
    """
    combined = merge(overlay or {}, user)
    # Paths in a config file are relative to that file, so a config works from any cwd.
    if user_file is not None:
        combined = _anchor_paths(combined, user, user_file.parent)
    try:
        return Settings.model_validate(combined)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        key = ".".join(str(part) for part in loc)
        origin = user_file
        if overlay is not None and not _has_key(user, loc) and _has_key(overlay, loc):
            origin = overlay_file
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in first and first["type"] != "missing":
            message = f"{message} (got {first['input']!r})"
        raise ConfigError(message, file=origin, key=key) from None


_PATH_KEYS = (
    ("model", "path"),
    ("device", "profiles_dir"),
    ("filter_host", "cache_dir"),
    ("mqtt", "tls_ca"),
    ("mqtt", "tls_cert"),
    ("mqtt", "tls_key"),
)
_FILTER_PATH_KEYS = ("module", "config_file")


def _anchored(value: Any, base: Path) -> Any:
    if isinstance(value, str) and not Path(value).is_absolute():
        return str(base / value)
    return value


def _anchor_paths(combined: dict[str, Any], user: Mapping[str, Any], base: Path) -> dict[str, Any]:
    out = dict(combined)
    for section, key in _PATH_KEYS:
        table = user.get(section)
        if isinstance(table, Mapping) and key in table and isinstance(out.get(section), Mapping):
            out[section] = dict(out[section])
            out[section][key] = _anchored(table[key], base)
    if "state_dir" in user:
        out["state_dir"] = _anchored(user["state_dir"], base)
    orchestrator = user.get("orchestrator")
    if isinstance(orchestrator, Mapping) and isinstance(orchestrator.get("templates"), list):
        out["orchestrator"] = dict(out["orchestrator"])
        out["orchestrator"]["templates"] = [_anchored(t, base) for t in orchestrator["templates"]]
    tools = user.get("tools")
    if isinstance(tools, list):
        out["tools"] = [
            {k: _anchored(v, base) if k == "database" else v for k, v in entry.items()}
            if isinstance(entry, Mapping)
            else entry
            for entry in tools
        ]
    filters = user.get("filters")
    if isinstance(filters, list):
        out["filters"] = [
            {k: _anchored(v, base) if k in _FILTER_PATH_KEYS else v for k, v in entry.items()}
            if isinstance(entry, Mapping)
            else entry
            for entry in filters
        ]
    return out


def load_settings(
    path: Path | None,
    *,
    overlay: Mapping[str, Any] | None = None,
    overlay_file: Path | None = None,
) -> Settings:
    """Load ``path`` (or defaults when None) over an optional profile overlay."""
    user = read_toml(path) if path is not None else {}
    return build_settings(user, user_file=path, overlay=overlay, overlay_file=overlay_file)
