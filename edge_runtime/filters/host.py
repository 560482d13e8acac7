"""One filter instance on wasmtime: linking, the Proxy-Wasm lifecycle, calls under a deadline."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import wasmtime
import wasmtime._bindings as ffi

from edge_runtime.errors import FilterLoadError, FilterTrapError
from edge_runtime.filters import fastpath, lifecycle
from edge_runtime.filters.abi import (
    HOSTCALLS,
    I64,
    WASI,
    WASI_MODULES,
    AbiVersion,
    LogLevel,
    Signature,
)
from edge_runtime.filters.hostcalls import Context, FilterExit, Hostcalls, HostEnv
from edge_runtime.filters.memory import GuestMemory
from edge_runtime.filters.stream import HttpStream
from edge_runtime.filters.wasi import Wasi

ROOT_CONTEXT = 1
log = logging.getLogger("edge_runtime.filters")

# SDKs log several DEBUG lines per callback. This shim stands in for proxy_log inside the
# store and drops records below the filter's level without leaving wasm, so only records
# that will be kept cross into Python.
_LOG_SHIM = """
(module
  (import "host" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (global $level (export "level") (mut i32) (i32.const 2))
  (func (export "proxy_log") (param $level i32) (param $ptr i32) (param $size i32) (result i32)
    (if (result i32) (i32.lt_s (local.get $level) (global.get $level))
      (then (i32.const 0))
      (else (call $log (local.get $level) (local.get $ptr) (local.get $size))))))
"""
_SHIM_ATTRIBUTE = "_edge_runtime_log_shim"
_LIFECYCLE_ATTRIBUTE = "_edge_runtime_lifecycle_shims"


def _log_shim(engine: wasmtime.Engine) -> wasmtime.Module:
    # Kept on the engine itself: a module only instantiates in the engine that compiled it,
    # and an id()-keyed cache would hand a dead engine's module to a new one at the same id.
    shim: wasmtime.Module | None = getattr(engine, _SHIM_ATTRIBUTE, None)
    if shim is None:
        shim = wasmtime.Module(engine, bytes(wasmtime.wat2wasm(_LOG_SHIM)))
        setattr(engine, _SHIM_ATTRIBUTE, shim)
    return shim


@dataclass(frozen=True)
class FilterSpec:
    """How one filter is run: identity, configuration and limits."""

    name: str
    root_id: str
    configuration: bytes = b""
    vm_configuration: bytes = b""
    log_level: LogLevel = LogLevel.INFO
    # Wall-clock bound on one callback; start-up (Go runtimes, big tables) gets its own.
    deadline_ms: float = 5.0
    start_deadline_ms: float = 1000.0
    fuel: int = 0
    memory_max_bytes: int = 64 * 1024 * 1024
    environ: Mapping[str, str] = field(default_factory=dict)


def abi_version(module: wasmtime.Module) -> AbiVersion:
    """The ABI version a module announces; a module that announces none is refused."""
    exported = {export.name for export in module.exports}
    for version in AbiVersion:
        if version.value in exported:
            return version
    raise FilterLoadError(
        "?",
        "exports no proxy_abi_version_* function; is it a Proxy-Wasm module? "
        "(supported: 0.2.1, 0.2.0, 0.1.0)",
    )


def _valtype(name: str) -> wasmtime.ValType:
    return wasmtime.ValType.i64() if name == I64 else wasmtime.ValType.i32()


def _functype(signature: Signature) -> wasmtime.FuncType:
    params, results = signature
    return wasmtime.FuncType([_valtype(p) for p in params], [_valtype(r) for r in results])


def _type_names(types: list[wasmtime.ValType]) -> tuple[str, ...]:
    return tuple(str(t) for t in types)


def check_imports(module: wasmtime.Module, filter_name: str) -> None:
    """Every import must be one we define, with our type; say which one is not."""
    for item in module.imports:
        where = f"{item.module}.{item.name}"
        if item.module == "env":
            signature = HOSTCALLS.get(item.name or "")
        elif item.module in WASI_MODULES:
            signature = WASI.get(item.name or "")
        else:
            signature = None
        if signature is None:
            raise FilterLoadError(
                filter_name, f"imports {where}, which this Proxy-Wasm host does not provide"
            )
        ty = item.type
        if not isinstance(ty, wasmtime.FuncType):
            raise FilterLoadError(
                filter_name, f"imports {where} as something other than a function"
            )
        want = _functype(signature)
        if _type_names(ty.params) != _type_names(want.params) or _type_names(
            ty.results
        ) != _type_names(want.results):
            raise FilterLoadError(
                filter_name,
                f"imports {where} with type {_type_names(ty.params)} -> {_type_names(ty.results)}"
                f", the ABI says {signature[0]} -> {signature[1]}",
            )


@dataclass
class _Export:
    func: Callable[..., Any]
    params: int
    results: int


class FilterInstance(Hostcalls, Wasi):
    """A live instance of one filter module, driven through the Proxy-Wasm lifecycle."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        module: wasmtime.Module,
        spec: FilterSpec,
        env: HostEnv,
        *,
        tick_ms: float,
        collect_logs: bool = False,
        fast: bool = True,
        logger: logging.Logger = log,
    ):
        self.name = spec.name
        self.spec = spec
        self.root_id = spec.root_id
        self.log_level = spec.log_level
        self.logger = logger
        self.env = env
        self.configuration = spec.configuration
        self.vm_configuration = spec.vm_configuration
        self.wasi_environ = spec.environ
        self.properties: dict[str, bytes] = {
            "plugin_root_id": spec.root_id.encode(),
            "plugin_name": spec.name.encode(),
            "plugin_vm_id": b"",
        }
        self.contexts: dict[int, Context] = {ROOT_CONTEXT: Context(ROOT_CONTEXT)}
        self.current = ROOT_CONTEXT
        self.tick_period_ms = 0
        self.logs: list[tuple[int, str]] | None = [] if collect_logs else None
        self.http_call_status: tuple[int, bytes] | None = None
        self.http_response: tuple[list[tuple[bytes, bytes]], bytes] | None = None
        self.done = False
        self.dead: str | None = None
        self._next_context = ROOT_CONTEXT + 1
        self._tick_ms = tick_ms
        self._uses_fuel = spec.fuel > 0
        self._stop_raised = False
        # With fuel metering on: fuel spent by callbacks so far (a count of wasm instructions).
        self.fuel_used = 0
        self.fast = fast and fastpath.available()
        self._pending = fastpath.PendingError()
        # Function types and ctypes callbacks the fast path hands to wasmtime must outlive it.
        self._keep: list[Any] = []

        self.version = abi_version(module)
        check_imports(module, spec.name)
        self.store = wasmtime.Store(engine)
        self._ctx = self.store._context()
        self._callback_ticks = self._ticks(spec.deadline_ms)
        try:
            self._instantiate(engine, module)
        except FilterLoadError:
            self._release()
            raise
        except (Exception, FilterExit) as exc:
            # A trap in the start section, a shim that cannot link: whatever the guest did,
            # loading it fails with a FilterLoadError and nothing else escapes.
            self._release()
            raise FilterLoadError(spec.name, f"cannot load: {_reason(exc)}") from None

    def _instantiate(self, engine: wasmtime.Engine, module: wasmtime.Module) -> None:
        spec = self.spec
        self.store.set_limits(memory_size=spec.memory_max_bytes)
        self._arm(spec.start_deadline_ms)
        linker = wasmtime.Linker(engine)
        linker.allow_shadowing = True
        self._define(linker)
        self._install_log_shim(engine, linker)
        try:
            instance = linker.instantiate(self.store, module)
        except (wasmtime.WasmtimeError, wasmtime.Trap, FilterExit) as exc:
            raise FilterLoadError(spec.name, f"cannot instantiate: {_reason(exc)}") from None
        exports = instance.exports(self.store)
        memory = exports.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise FilterLoadError(spec.name, "exports no memory")
        self._exports: dict[str, _Export] = {}
        for name, item in exports._extern_map.items():
            if isinstance(item, wasmtime.Func):
                ty = item.type(self.store)
                params, results = len(ty.params), len(ty.results)
                if _host_called(name) and not _i32_only(ty):
                    raise FilterLoadError(
                        spec.name,
                        f"exports {name} with type {_type_names(ty.params)} -> "
                        f"{_type_names(ty.results)}; the host calls it with i32s only",
                    )
                func: Callable[..., Any] = item
                if self.fast and all(str(p) == "i32" for p in ty.params):
                    func = fastpath.FastFunc(self.store, item, params, results, self._pending)
                self._exports[name] = _Export(func, params, results)
        allocator = self._exports.get("proxy_on_memory_allocate") or self._exports.get("malloc")
        if allocator is None:
            raise FilterLoadError(
                spec.name,
                "exports neither proxy_on_memory_allocate nor malloc; the host cannot hand it data",
            )
        memory_class = fastpath.FastMemory if self.fast else GuestMemory
        self.memory = memory_class(self.store, memory, self._allocator(allocator))
        self._install_lifecycle(engine, exports)

    # Linking ---------------------------------------------------------------

    def _define(self, linker: wasmtime.Linker) -> None:
        definitions = [("env", name, signature) for name, signature in HOSTCALLS.items()]
        definitions += [
            (module_name, name, signature)
            for module_name in WASI_MODULES
            for name, signature in WASI.items()
        ]
        for module_name, name, signature in definitions:
            functype, method = _functype(signature), getattr(self, name)
            if self.fast:
                fastpath.define_fast(
                    linker,
                    module_name,
                    name,
                    functype,
                    method,
                    pending=self._pending,
                    keep=self._keep,
                )
            else:
                linker.define_func(module_name, name, functype, method)

    def _install_log_shim(self, engine: wasmtime.Engine, linker: wasmtime.Linker) -> None:
        shim_linker = wasmtime.Linker(engine)
        functype = _functype(HOSTCALLS["proxy_log"])
        if self.fast:
            fastpath.define_fast(
                shim_linker,
                "host",
                "proxy_log",
                functype,
                self.proxy_log,
                pending=self._pending,
                keep=self._keep,
            )
        else:
            shim_linker.define_func("host", "proxy_log", functype, self.proxy_log)
        shim = shim_linker.instantiate(self.store, _log_shim(engine)).exports(self.store)
        level = shim["level"]
        assert isinstance(level, wasmtime.Global)
        level.set_value(self.store, wasmtime.Val.i32(int(self.log_level)))
        log_func = shim["proxy_log"]
        assert isinstance(log_func, wasmtime.Func)
        linker.define(self.store, "env", "proxy_log", log_func)

    def _install_lifecycle(self, engine: wasmtime.Engine, exports: Any) -> None:
        arities = {
            name: (export.params, export.results)
            for name, export in self._exports.items()
            if name in lifecycle.CALLBACKS
        }
        source = lifecycle.shim_source(arities)
        cache: dict[str, wasmtime.Module] = getattr(engine, _LIFECYCLE_ATTRIBUTE, None) or {}
        setattr(engine, _LIFECYCLE_ATTRIBUTE, cache)
        module = cache.get(source)
        if module is None:
            module = cache[source] = wasmtime.Module(engine, bytes(wasmtime.wat2wasm(source)))
        linker = wasmtime.Linker(engine)
        for name in arities:
            item = exports[name]
            assert isinstance(item, wasmtime.Func)
            linker.define(self.store, "filter", name, item)
        shim = linker.instantiate(self.store, module).exports(self.store)
        stop = shim["stop"]
        assert isinstance(stop, wasmtime.Global)
        self._stop = stop
        for name, params, results in (("request", 4, 1), ("response", 3, 1), ("finish", 1, 0)):
            func = shim[name]
            assert isinstance(func, wasmtime.Func)
            wrapped: Callable[..., Any] = func
            if self.fast:
                wrapped = fastpath.FastFunc(self.store, func, params, results, self._pending)
            self._exports[f"lifecycle.{name}"] = _Export(wrapped, params, results)

    def stop_stream(self) -> None:
        """The filter answered or closed the stream: its remaining phase callbacks are skipped."""
        if not self._stop_raised:
            self._stop.set_value(self.store, wasmtime.Val.i32(1))
            self._stop_raised = True

    def _allocator(self, export: _Export) -> Callable[[int], int]:
        def allocate(size: int) -> int:
            # Runs nested inside a hostcall, within the outer callback's deadline.
            result = export.func(self.store, size)
            return int(result) if result is not None else 0

        return allocate

    # Calls -----------------------------------------------------------------

    def _ticks(self, deadline_ms: float) -> int:
        # One tick may already be under way when we arm: allow one more.
        return max(1, math.ceil(deadline_ms / self._tick_ms)) + 1

    def _arm(self, deadline_ms: float | None) -> None:
        ticks = self._callback_ticks if deadline_ms is None else self._ticks(deadline_ms)
        ffi._wasmtime_context_set_epoch_deadline(self._ctx, ticks)
        if self._uses_fuel:
            self.store.set_fuel(self.spec.fuel)

    def has(self, name: str) -> bool:
        """Whether the module exports callback ``name``."""
        return name in self._exports

    def call(self, name: str, *args: int, deadline_ms: float | None = None) -> int | None:
        """Call an exported callback (absent ones return None); a trap kills the instance."""
        if self.dead is not None:
            raise FilterTrapError(self.name, f"instance is dead ({self.dead})", kind="dead")
        export = self._exports.get(name)
        if export is None:
            return None
        # Arity from the export's own type: v0.1.0 modules in the wild disagree with the spec.
        if len(args) != export.params:
            args = (*args[: export.params], *[0] * max(0, export.params - len(args)))
        self._arm(deadline_ms)
        try:
            result: Any = export.func(self.store, *args)
        except wasmtime.Trap as exc:
            kind = _trap_kind(exc)
            self.dead = kind
            message = f"{name} trapped ({kind}): {_reason(exc)}"
            raise FilterTrapError(self.name, message, kind=kind) from None
        except FilterExit as exc:
            self.dead = "exit"
            raise FilterTrapError(
                self.name, f"{name} called proc_exit({exc.code})", kind="exit"
            ) from None
        except Exception as exc:
            self.dead = "error"
            raise FilterTrapError(
                self.name, f"{name} failed: {_reason(exc)}", kind="error"
            ) from None
        if self._uses_fuel:
            self.fuel_used += self.spec.fuel - self.store.get_fuel()
        if export.results == 0 or result is None:
            return None
        if not isinstance(result, int):
            self.dead = "error"
            raise FilterTrapError(self.name, f"{name} returned {result!r}", kind="error")
        return result

    # Lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Run the module's start function, then create and configure the root context."""
        start = self.spec.start_deadline_ms
        try:
            if self.has("_initialize"):
                self.call("_initialize", deadline_ms=start)
                if self.has("main"):
                    self.call("main", 0, 0, deadline_ms=start)
            elif self.has("_start"):
                self.call("_start", deadline_ms=start)
            self.current = ROOT_CONTEXT
            self.call("proxy_on_context_create", ROOT_CONTEXT, 0, deadline_ms=start)
            if (
                self.call(
                    "proxy_on_vm_start", ROOT_CONTEXT, len(self.vm_configuration), deadline_ms=start
                )
                == 0
            ):
                raise FilterLoadError(self.name, "refused to start (on_vm_start returned false)")
            configured = self.call(
                "proxy_on_configure", ROOT_CONTEXT, len(self.configuration), deadline_ms=start
            )
        except FilterTrapError as exc:
            raise FilterLoadError(self.name, f"failed to start: {exc}") from None
        if configured == 0:
            raise FilterLoadError(
                self.name, "rejected its configuration (on_configure returned false)"
            )

    def _phase(self, context_id: int, name: str, *args: int) -> int:
        self.current = context_id
        self.contexts[context_id].resumed = False
        if self._stop_raised:
            self._stop.set_value(self.store, wasmtime.Val.i32(0))
            self._stop_raised = False
        result = self.call(name, *args)
        return 0 if result is None else result

    def request_phase(self, stream: HttpStream) -> tuple[int, int]:
        """A new stream context, then its request headers and body; (context id, action)."""
        context_id = self._next_context
        self._next_context += 1
        self.contexts[context_id] = Context(context_id, stream)
        action = self._phase(
            context_id,
            "lifecycle.request",
            context_id,
            ROOT_CONTEXT,
            len(stream.request_headers),
            len(stream.request_body),
        )
        return context_id, action

    def response_phase(self, context_id: int) -> int:
        """Response headers and body of a stream; returns the action (0 continue, else pause)."""
        stream = self.contexts[context_id].stream
        assert stream is not None
        return self._phase(
            context_id,
            "lifecycle.response",
            context_id,
            len(stream.response_headers),
            len(stream.response_body),
        )

    def finish_stream(self, context_id: int) -> None:
        """on_done, on_log and on_delete; the context is gone afterwards, whatever happens."""
        try:
            self.current = context_id
            self.call("lifecycle.finish", context_id)
        finally:
            self.contexts.pop(context_id, None)
            self.current = ROOT_CONTEXT

    def root_call(self, name: str, *args: int) -> None:
        """A root-context callback (on_tick, on_queue_ready); resumes streams it continues."""
        self.current = ROOT_CONTEXT
        self.call(name, ROOT_CONTEXT, *args)

    def close(self) -> None:
        """Let the root context finish, if the instance is still alive, then free the store."""
        if self.dead is None:
            try:
                self.current = ROOT_CONTEXT
                self.call("proxy_on_done", ROOT_CONTEXT)
                self.call("proxy_on_delete", ROOT_CONTEXT)
            except FilterTrapError:
                pass
        self.dead = self.dead or "closed"
        self._release()

    def _release(self) -> None:
        # The store holds raw pointers to the fast-path callbacks: free it first, always.
        store = getattr(self, "store", None)
        if store is not None:
            self._exports = {}
            store.close()
            self.store = None  # type: ignore[assignment]
        self._keep = []

    def __del__(self) -> None:
        self._release()


_START_EXPORTS = ("_initialize", "_start", "main", "malloc")


def _host_called(name: str) -> bool:
    return name.startswith("proxy_on_") or name in _START_EXPORTS


def _i32_only(ty: wasmtime.FuncType) -> bool:
    return all(str(t) == "i32" for t in ty.params) and (
        len(ty.results) == 0 or (len(ty.results) == 1 and str(ty.results[0]) == "i32")
    )


def _trap_kind(exc: wasmtime.Trap) -> str:
    code = exc.trap_code
    if code == wasmtime.TrapCode.INTERRUPT:
        return "deadline"
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return "fuel"
    return "trap"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    # wasmtime appends a wasm backtrace; the first line says what happened.
    return text.splitlines()[0] if text else type(exc).__name__
