"""Bounds-checked access to a filter's linear memory, and handing it data through its allocator."""

from __future__ import annotations

import struct
from collections.abc import Callable

import wasmtime

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def unsigned(value: int) -> int:
    """An i32 as the guest meant it: the public API hands i32s over signed.

    Values past 32 bits (a pointer plus an offset) stay past them, so they fail the bounds
    check instead of wrapping around to low memory.
    """
    return value + (1 << 32) if value < 0 else value


class GuestMemoryError(Exception):
    """A pointer or length from the guest points outside its memory (or its allocator failed)."""


class GuestMemory:
    """Reads and writes that check every pointer and length against the memory's current size."""

    def __init__(
        self,
        store: wasmtime.Store,
        memory: wasmtime.Memory,
        allocate: Callable[[int], int] | None,
    ):
        self._store = store
        self._memory = memory
        self._allocate = allocate

    def size(self) -> int:
        """Current size of the guest's memory, in bytes."""
        return int(self._memory.data_len(self._store))

    def _check(self, ptr: int, size: int) -> None:
        # The guest passes i32s; wasmtime hands them over signed.
        if ptr < 0 or size < 0 or ptr + size > self._memory.data_len(self._store):
            raise GuestMemoryError(f"{size} bytes at {ptr} are outside guest memory")

    def read(self, ptr: int, size: int) -> bytes:
        """``size`` bytes at ``ptr``."""
        ptr, size = unsigned(ptr), unsigned(size)
        self._check(ptr, size)
        if size == 0:
            return b""
        return bytes(self._memory.read(self._store, ptr, ptr + size))

    def write(self, ptr: int, data: bytes) -> None:
        """Copy ``data`` to ``ptr``."""
        ptr = unsigned(ptr)
        self._check(ptr, len(data))
        if data:
            self._memory.write(self._store, data, ptr)

    def write_u32(self, ptr: int, value: int) -> None:
        """Little-endian u32, as every ret_* pointer of the ABI expects."""
        self.write(ptr, _U32.pack(value & 0xFFFFFFFF))

    def write_u64(self, ptr: int, value: int) -> None:
        """Little-endian u64 (times and metric values)."""
        self.write(ptr, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def give(self, data: bytes, ptr_ptr: int, size_ptr: int) -> None:
        """Hand ``data`` to the guest: allocate with its allocator, copy, write address and size.

        Empty data is written as 0/0 without calling the allocator, as the reference host does.
        """
        ptr_ptr, size_ptr = unsigned(ptr_ptr), unsigned(size_ptr)
        # Check the result slots first, so a bad slot never costs a guest allocation.
        self._check(ptr_ptr, 4)
        self._check(size_ptr, 4)
        if not data:
            self.write_u32(ptr_ptr, 0)
            self.write_u32(size_ptr, 0)
            return
        if self._allocate is None:
            raise GuestMemoryError("the module exports no allocator")
        address = self._allocate(len(data)) & 0xFFFFFFFF
        if address == 0:
            raise GuestMemoryError(f"the allocator returned 0 for {len(data)} bytes")
        self.write(address, data)
        self.write_u32(ptr_ptr, address)
        self.write_u32(size_ptr, len(data))
