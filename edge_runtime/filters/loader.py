"""The wasmtime engine, its epoch ticker, and compiled modules cached on disk."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import wasmtime

from edge_runtime.errors import FilterLoadError

log = logging.getLogger("edge_runtime.filters")


@dataclass(frozen=True)
class EngineOptions:
    """Engine-wide settings; a cached module only loads into an engine with the same ones."""

    fuel: bool = False
    tick_ms: float = 1.0

    def fingerprint(self) -> str:
        """Part of every cache key: the wasmtime version and what changes compiled code."""
        version = metadata.version("wasmtime")
        return f"wasmtime-{version};epoch=1;fuel={int(self.fuel)};may_move=0"


class EpochTicker:
    """Advances the engine's epoch every tick_ms so callbacks past their deadline trap."""

    def __init__(self, engine: wasmtime.Engine, tick_ms: float, *, gated: bool = False):
        self._engines = [engine]
        self._period = tick_ms / 1000.0
        self._stop = threading.Event()
        # Gated, it ticks only between enter() and leave(): an idle daemon does not wake a
        # thousand times a second. Ungated, it always ticks (one-off runs, tests).
        self._gated = gated
        self._active = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wasm-epoch", daemon=True)

    def start(self) -> None:
        """Begin ticking."""
        self._thread.start()

    def add(self, engine: wasmtime.Engine) -> None:
        """Tick another engine too (the fuel-metered one)."""
        self._engines = [*self._engines, engine]

    def enter(self) -> None:
        """Guest code may run from now on: tick."""
        with self._lock:
            self._active += 1
            self._wake.set()

    def leave(self) -> None:
        """The guest code that enter() announced has returned."""
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._wake.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._gated:
                self._wake.wait()
            if self._stop.wait(self._period):
                return
            for engine in self._engines:
                engine.increment_epoch()

    def stop(self) -> None:
        """Stop ticking and wait for the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()


def make_engine(options: EngineOptions) -> wasmtime.Engine:
    """An engine with epoch interruption (always) and fuel (when a filter asks for it)."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.consume_fuel = options.fuel
    # Guest memory never moves, so views of it stay valid between growths.
    config.memory_may_move = False
    return wasmtime.Engine(config)


class ModuleCache:
    """Compiled modules keyed by the wasm bytes and the engine configuration."""

    def __init__(self, engine: wasmtime.Engine, options: EngineOptions, directory: Path | None):
        self._engine = engine
        self._fingerprint = options.fingerprint()
        self._directory = directory
        self._memory: dict[str, wasmtime.Module] = {}

    def key(self, wasm: bytes) -> str:
        """Cache key of a module's bytes under this engine."""
        digest = hashlib.sha256(self._fingerprint.encode() + b"\0" + wasm)
        return digest.hexdigest()

    def load(self, path: Path, filter_name: str) -> wasmtime.Module:
        """The compiled module for ``path``: from memory, from disk, or compiled now."""
        try:
            wasm = path.read_bytes()
        except OSError as exc:
            raise FilterLoadError(filter_name, f"{path}: cannot read: {exc.strerror}") from None
        key = self.key(wasm)
        module = self._memory.get(key)
        if module is not None:
            return module
        cached = self._directory / f"{key}.cwasm" if self._directory else None
        if cached is not None and cached.is_file():
            try:
                # Read, don't map: a cache file truncated under a mapped module is a SIGBUS.
                module = wasmtime.Module.deserialize(self._engine, cached.read_bytes())
            except (OSError, wasmtime.WasmtimeError) as exc:
                log.warning("discarding unusable cached module %s: %s", cached, exc)
                cached.unlink(missing_ok=True)
        if module is None:
            try:
                module = wasmtime.Module(self._engine, wasm)
            except wasmtime.WasmtimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise FilterLoadError(filter_name, f"{path}: not a valid module: {first}") from None
            if cached is not None:
                self._store(cached, module)
        self._memory[key] = module
        return module

    def _store(self, cached: Path, module: wasmtime.Module) -> None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a daemon starting beside us never reads half a file.
            fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(module.serialize())
            os.replace(tmp, cached)
        except OSError as exc:
            log.warning("cannot cache compiled module in %s: %s", cached.parent, exc)
