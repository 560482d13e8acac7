"""The WASI preview 1 subset SDK-built filters import: logs, clocks, randomness, no files."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Mapping
from typing import TypeVar

import wasmtime

from edge_runtime.filters.abi import WasiErrno
from edge_runtime.filters.hostcalls import FilterExit, HostEnv
from edge_runtime.filters.memory import GuestMemory, GuestMemoryError, unsigned

_CLOCK_REALTIME = 0
_CLOCK_MONOTONIC = 1
_MAX_IOVECS = 64
_MAX_WRITE = 16 * 1024


_F = TypeVar("_F", bound=Callable[..., int])


def _errno(method: _F) -> _F:
    """Turn a bad guest pointer into EINVAL and any other failure into a logged EINVAL."""

    def wrapper(self: Wasi, *args: int) -> int:
        try:
            return int(method(self, *args))
        except GuestMemoryError:
            return WasiErrno.INVAL
        except (FilterExit, wasmtime.Trap, wasmtime.WasmtimeError):
            raise
        except Exception:
            self.logger.exception("%s: WASI %s failed", self.name, method.__name__)
            return WasiErrno.INVAL

    wrapper.__name__ = method.__name__
    return wrapper  # type: ignore[return-value]


class Wasi:
    """Mixin: fd 1 and 2 go to the log, clocks and random work, everything else is refused."""

    name: str
    logger: logging.Logger
    env: HostEnv
    memory: GuestMemory
    wasi_environ: Mapping[str, str]
    logs: list[tuple[int, str]] | None

    @_errno
    def fd_write(self, fd: int, iovs: int, iovs_len: int, ret_written: int) -> int:
        if fd not in (1, 2):
            return WasiErrno.BADF
        chunks = []
        for index in range(min(iovs_len & 0xFFFFFFFF, _MAX_IOVECS)):
            ptr, size = struct.unpack("<II", self.memory.read(unsigned(iovs) + 8 * index, 8))
            chunks.append(self.memory.read(ptr, min(size, _MAX_WRITE)))
        data = b"".join(chunks)
        text = data.decode("utf-8", "replace").rstrip("\n")
        if text:
            level = logging.INFO if fd == 1 else logging.ERROR
            if self.logs is not None:
                self.logs.append((2 if fd == 1 else 4, text))
            self.logger.log(level, "[%s] %s", self.name, text)
        self.memory.write_u32(ret_written, sum(len(c) for c in chunks))
        return WasiErrno.SUCCESS

    @_errno
    def fd_read(self, fd: int, iovs: int, iovs_len: int, ret_read: int) -> int:
        return WasiErrno.BADF

    @_errno
    def fd_close(self, fd: int) -> int:
        return WasiErrno.BADF

    @_errno
    def fd_seek(self, fd: int, offset: int, whence: int, ret: int) -> int:
        return WasiErrno.BADF

    @_errno
    def fd_fdstat_get(self, fd: int, ret: int) -> int:
        if fd not in (1, 2):
            return WasiErrno.BADF
        # filetype CHARACTER_DEVICE (2), no flags, rights: fd_write only.
        self.memory.write(ret, struct.pack("<BxHxxxxQQ", 2, 0, 1 << 6, 0))
        return WasiErrno.SUCCESS

    @_errno
    def fd_prestat_get(self, fd: int, ret: int) -> int:
        # No preopened directories: the guest has no filesystem at all.
        return WasiErrno.BADF

    @_errno
    def fd_prestat_dir_name(self, fd: int, ptr: int, size: int) -> int:
        return WasiErrno.BADF

    @_errno
    def clock_time_get(self, clock: int, precision: int, ret: int) -> int:
        if clock == _CLOCK_REALTIME:
            self.memory.write_u64(ret, self.env.wall_clock())
        elif clock == _CLOCK_MONOTONIC:
            self.memory.write_u64(ret, self.env.monotonic_clock())
        else:
            return WasiErrno.NOTSUP
        return WasiErrno.SUCCESS

    @_errno
    def clock_res_get(self, clock: int, ret: int) -> int:
        if clock not in (_CLOCK_REALTIME, _CLOCK_MONOTONIC):
            return WasiErrno.NOTSUP
        self.memory.write_u64(ret, 1000)
        return WasiErrno.SUCCESS

    @_errno
    def random_get(self, ptr: int, size: int) -> int:
        self.memory.write(ptr, os.urandom(min(size & 0xFFFFFFFF, 1 << 20)))
        return WasiErrno.SUCCESS

    def _environ(self) -> list[bytes]:
        # The filter's own variables from its config, never the host's environment.
        return [f"{k}={v}".encode() + b"\0" for k, v in self.wasi_environ.items()]

    @_errno
    def environ_sizes_get(self, ret_count: int, ret_size: int) -> int:
        entries = self._environ()
        self.memory.write_u32(ret_count, len(entries))
        self.memory.write_u32(ret_size, sum(len(e) for e in entries))
        return WasiErrno.SUCCESS

    @_errno
    def environ_get(self, ptrs: int, buf: int) -> int:
        offset = unsigned(buf)
        for index, entry in enumerate(self._environ()):
            self.memory.write_u32(unsigned(ptrs) + 4 * index, offset)
            self.memory.write(offset, entry)
            offset += len(entry)
        return WasiErrno.SUCCESS

    @_errno
    def args_sizes_get(self, ret_count: int, ret_size: int) -> int:
        self.memory.write_u32(ret_count, 0)
        self.memory.write_u32(ret_size, 0)
        return WasiErrno.SUCCESS

    @_errno
    def args_get(self, ptrs: int, buf: int) -> int:
        return WasiErrno.SUCCESS

    def proc_exit(self, code: int) -> None:
        """The guest gives up: unwind out of wasm; the instance is treated as crashed."""
        raise FilterExit(code)

    @_errno
    def sched_yield(self) -> int:
        return WasiErrno.SUCCESS

    @_errno
    def poll_oneoff(self, subs: int, events: int, count: int, ret: int) -> int:
        # The Go runtime polls at start-up; report nothing happened.
        self.memory.write_u32(ret, 0)
        return WasiErrno.SUCCESS
