"""Calls across the wasm boundary through wasmtime's unchecked entry points.

The public wasmtime-py API converts every argument and result through `Val` objects (about
35 µs per call into wasm, 10 µs per hostcall); the unchecked C entry points with preallocated
raw value arrays cost 1–2 µs. They are private to wasmtime-py, so the version is pinned, the
path is self-tested once per process, and the public API remains the fallback.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable
from typing import Any

import wasmtime
import wasmtime._bindings as ffi

from edge_runtime.filters.memory import GuestMemory, GuestMemoryError, unsigned

log = logging.getLogger("edge_runtime.filters")

# The finalizer slot must be a real (null) function pointer: None is refused.
_NULL_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()
_TRAP_MESSAGE = b"host function failed"


class PendingError:
    """The exception a hostcall raised, carried across the trap it became."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None

    def take(self) -> BaseException | None:
        """The stored exception, cleared."""
        exception, self.exception = self.exception, None
        return exception


class FastFunc:
    """One exported function called through wasmtime_func_call_unchecked."""

    def __init__(
        self,
        store: wasmtime.Store,
        func: wasmtime.Func,
        params: int,
        results: int,
        pending: PendingError,
    ):
        self._store = store
        self._ctx = store._context()
        # Keep the Func alive: its handle is what the call refers to.
        self._func = func
        self._ref = ctypes.byref(func._func)
        # One array per export: the guest allocator runs nested inside hostcalls while an
        # outer call's array is still in use.
        self._raw = (ffi.wasmtime_val_raw_t * max(params, results, 1))()
        self._len = len(self._raw)
        self._params = params
        self._results = results
        # A pointer-sized slot wasmtime writes a trap into; reset to NULL before each call.
        self._trap = ctypes.c_void_p()
        self._trap_ref = ctypes.cast(
            ctypes.pointer(self._trap), ctypes.POINTER(ctypes.POINTER(ffi.wasm_trap_t))
        )
        self._pending = pending
        self._call = ffi._wasmtime_func_call_unchecked
        # A guest can make this export run inside itself (its allocator making a hostcall that
        # allocates): a nested call gets its own arrays, never the ones an outer call still uses.
        self._depth = 0
        self._nested: list[tuple[Any, ctypes.c_void_p, Any]] = []

    def _frame(self) -> tuple[Any, ctypes.c_void_p, Any]:
        level = self._depth - 1
        while len(self._nested) < level:
            slot = ctypes.c_void_p()
            ref = ctypes.cast(ctypes.pointer(slot), ctypes.POINTER(ctypes.POINTER(ffi.wasm_trap_t)))
            self._nested.append(((ffi.wasmtime_val_raw_t * self._len)(), slot, ref))
        return self._nested[level - 1]

    def __call__(self, store: Any, *args: int) -> int | None:
        self._depth += 1
        try:
            if self._depth == 1:
                raw, slot, ref = self._raw, self._trap, self._trap_ref
            else:
                raw, slot, ref = self._frame()
            for index, value in enumerate(args[: self._params]):
                raw[index].i32 = value
            slot.value = None
            error = self._call(self._ctx, self._ref, raw, self._len, ref)
            if error or slot.value:
                trap_value, slot.value = slot.value, None
                self._fail(error, trap_value)
            return int(raw[0].i32) if self._results else None
        finally:
            self._depth -= 1

    def _fail(self, error: Any, trap_value: int | None) -> None:
        if error:
            failure: Exception = wasmtime.WasmtimeError._from_ptr(error)
        else:
            trap = ctypes.cast(trap_value or 0, ctypes.POINTER(ffi.wasm_trap_t))
            failure = wasmtime.Trap._from_ptr(trap)
        # A hostcall that failed in Python left its exception here: it is the real cause.
        pending = self._pending.take()
        if pending is not None:
            raise pending
        raise failure


HostFunc = Callable[..., int | None]


def define_fast(
    linker: wasmtime.Linker,
    module: str,
    name: str,
    functype: wasmtime.FuncType,
    func: HostFunc,
    *,
    pending: PendingError,
    keep: list[Any],
) -> None:
    """Define a hostcall through wasmtime_linker_define_func_unchecked."""
    params = [str(p) for p in functype.params]
    has_result = len(functype.results) == 1
    i64_at = tuple(i for i, p in enumerate(params) if p == "i64")
    count = len(params)

    indices = range(count)

    def callback(env: Any, caller: Any, args: Any, nargs: int) -> int:
        try:
            if i64_at:
                values = [args[i].i64 if i in i64_at else args[i].i32 & 0xFFFFFFFF for i in indices]
            else:
                values = [args[i].i32 & 0xFFFFFFFF for i in indices]
            result = func(*values)
            if has_result:
                args[0].i32 = int(result or 0)
            return 0
        except BaseException as exc:
            # An exception escaping a ctypes callback would kill the process: carry it
            # across as a trap and re-raise it where the call returns.
            pending.exception = exc
            trap = ffi._wasmtime_trap_new(_TRAP_MESSAGE, len(_TRAP_MESSAGE))
            return ctypes.cast(trap, ctypes.c_void_p).value or 0

    # The callback type returns a pointer; ctypes needs it declared as an integer result.
    cb = ffi.wasmtime_func_unchecked_callback_t(callback)
    module_bytes, name_bytes = module.encode(), name.encode()
    error = ffi._wasmtime_linker_define_func_unchecked(
        linker.ptr(),
        module_bytes,
        len(module_bytes),
        name_bytes,
        len(name_bytes),
        functype.ptr(),
        cb,
        None,
        _NULL_FINALIZER,
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    # The FuncType and the callback must outlive every store made from this linker.
    keep.extend((functype, cb, callback))


class FastMemory(GuestMemory):
    """Guest memory read and written through a raw pointer (memory never moves)."""

    def __init__(
        self,
        store: wasmtime.Store,
        memory: wasmtime.Memory,
        allocate: Callable[[int], int] | None,
    ):
        super().__init__(store, memory, allocate)
        self._ctx = store._context()
        self._mem_ref = ctypes.byref(memory._memory)
        self._base = (
            ctypes.cast(ffi.wasmtime_memory_data(self._ctx, self._mem_ref), ctypes.c_void_p).value
            or 0
        )
        self._size = ffi.wasmtime_memory_data_size(self._ctx, self._mem_ref)

    def size(self) -> int:
        """Current size of the guest's memory, in bytes."""
        self._size = ffi.wasmtime_memory_data_size(self._ctx, self._mem_ref)
        return int(self._size)

    def _check(self, ptr: int, size: int) -> None:
        self._bounds(ptr, size)

    def _bounds(self, ptr: int, size: int) -> None:
        if ptr + size > self._size:
            # The memory may have grown since we last looked.
            self._size = ffi.wasmtime_memory_data_size(self._ctx, self._mem_ref)
            if ptr + size > self._size:
                raise GuestMemoryError(f"{size} bytes at {ptr} are outside guest memory")

    def read(self, ptr: int, size: int) -> bytes:
        """``size`` bytes at ``ptr``."""
        ptr, size = unsigned(ptr), unsigned(size)
        self._bounds(ptr, size)
        return ctypes.string_at(self._base + ptr, size) if size else b""

    def write(self, ptr: int, data: bytes) -> None:
        """Copy ``data`` to ``ptr``."""
        ptr = unsigned(ptr)
        self._bounds(ptr, len(data))
        if data:
            ctypes.memmove(self._base + ptr, data, len(data))


_SELF_TEST = """
(module
  (import "env" "add" (func $add (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (param i32) (result i32)
    (call $add (local.get 0) (i32.const 2))))
"""


@functools.cache
def available() -> bool:
    """Whether the unchecked entry points work in this wasmtime build (checked once)."""
    try:
        engine = wasmtime.Engine()
        store = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        pending, keep = PendingError(), list[Any]()
        i32 = wasmtime.ValType.i32()
        functype = wasmtime.FuncType([i32, i32], [i32])
        define_fast(linker, "env", "add", functype, lambda a, b: a + b, pending=pending, keep=keep)
        module = wasmtime.Module(engine, bytes(wasmtime.wat2wasm(_SELF_TEST)))
        instance = linker.instantiate(store, module)
        run = instance.exports(store)["run"]
        assert isinstance(run, wasmtime.Func)
        ok = FastFunc(store, run, 1, 1, pending)(store, 40) == 42
        # The store must go before the callbacks it calls into.
        store.close()
        if not ok:
            log.warning("wasmtime fast path gave a wrong result; using the public API")
        return ok
    except Exception as exc:
        log.warning("wasmtime fast path unavailable (%s); using the public API", exc)
        return False
