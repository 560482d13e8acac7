"""State filters share across instances and restarts: key-value data with CAS, and queues."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from edge_runtime.filters.abi import WasmStatus


@dataclass
class SharedData:
    """proxy_{get,set}_shared_data: one key space for every filter, compare-and-swap by version."""

    max_keys: int = 4096
    max_value_bytes: int = 64 * 1024
    # Least recently used first: when the store is full, the oldest key makes room (a rate
    # limiter's bucket for a device long gone, typically) instead of refusing new keys forever.
    _values: OrderedDict[bytes, tuple[bytes, int]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        """Value and CAS version, or None."""
        with self._lock:
            found = self._values.get(key)
            if found is not None:
                self._values.move_to_end(key)
            return found

    def set(self, key: bytes, value: bytes, cas: int) -> WasmStatus:
        """Store ``value``; a non-zero ``cas`` must match the current version."""
        if len(value) > self.max_value_bytes:
            return WasmStatus.BAD_ARGUMENT
        with self._lock:
            current = self._values.get(key)
            if cas and (current is None or current[1] != cas):
                return WasmStatus.CAS_MISMATCH
            if current is None and len(self._values) >= self.max_keys:
                self._values.popitem(last=False)
            version = (current[1] if current else 0) + 1
            # Version 0 means "unconditional" to the guest: never hand it out.
            self._values[key] = (value, version or 1)
            self._values.move_to_end(key)
            return WasmStatus.OK


@dataclass
class _Queue:
    vm_id: bytes
    name: bytes
    owner: str
    items: deque[bytes] = field(default_factory=deque)


@dataclass
class SharedQueues:
    """proxy_*_shared_queue: named queues; the registering filter is told when data arrives."""

    max_items: int = 1024
    _queues: dict[int, _Queue] = field(default_factory=dict)
    # (owner, queue id) pairs whose owner has not been told about new items yet.
    _ready: deque[tuple[str, int]] = field(default_factory=deque)
    _by_name: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, vm_id: bytes, name: bytes, owner: str) -> int:
        """Id of the queue ``name`` (created if new); ``owner`` gets on_queue_ready."""
        with self._lock:
            existing = self._by_name.get((vm_id, name))
            if existing is not None:
                self._queues[existing].owner = owner
                return existing
            queue_id = len(self._queues) + 1
            self._queues[queue_id] = _Queue(vm_id, name, owner)
            self._by_name[(vm_id, name)] = queue_id
            return queue_id

    def resolve(self, vm_id: bytes, name: bytes) -> int | None:
        """Id of an existing queue."""
        with self._lock:
            return self._by_name.get((vm_id, name))

    def enqueue(self, queue_id: int, item: bytes) -> tuple[WasmStatus, str | None]:
        """Append an item; returns the status and the owner to notify."""
        with self._lock:
            queue = self._queues.get(queue_id)
            if queue is None:
                return WasmStatus.NOT_FOUND, None
            if len(queue.items) >= self.max_items:
                return WasmStatus.INTERNAL_FAILURE, None
            queue.items.append(item)
            if (queue.owner, queue_id) not in self._ready:
                self._ready.append((queue.owner, queue_id))
            return WasmStatus.OK, queue.owner

    def take_ready(self) -> list[tuple[str, int]]:
        """Owners to notify with on_queue_ready, and for which queue; cleared."""
        with self._lock:
            ready = list(self._ready)
            self._ready.clear()
            return ready

    def dequeue(self, queue_id: int) -> tuple[WasmStatus, bytes]:
        """Pop the oldest item (EMPTY when there is none)."""
        with self._lock:
            queue = self._queues.get(queue_id)
            if queue is None:
                return WasmStatus.NOT_FOUND, b""
            if not queue.items:
                return WasmStatus.EMPTY, b""
            return WasmStatus.OK, queue.items.popleft()
