"""The in-place KV-cache decoder: one preallocated cache, concurrent sequences decoded together.

It drives graphs rewritten by optimize.py, whose GroupQueryAttention nodes write each step's keys
and values into the cache they read from, when past and present are bound to the same buffer.
The cache is one ``[rows, kv_heads, context, head_dim]`` array per key and value per layer; each
sequence owns a row. Every sequence that wants to run waits briefly for the others, and then one
run serves them all (continuous batching: a new sequence joins the running batch at the next
step). Prompts go first: the prompts of adjacent rows are prefilled together, right-padded into
a contiguous view of the arrays; then one step decodes the next token of every other sequence.

Decode is bound by reading the weights, and a step of 4 rows reads them once, so 4 concurrent
sequences cost little more than one; a short prompt's prefill is too. Rows are right-padded:
each row's own length goes to GroupQueryAttention through the attention mask, which also sets
its rotary positions, and the graph takes each row's logits at its own last position.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_runtime.errors import ContextLengthError
from edge_runtime.model.generate import DecoderState
from edge_runtime.model.sampling import Logits

# How long a sequence ready for its next step waits for the others of the batch. A step of a
# small model takes a few milliseconds; the others are usually sampling their last token.
GATHER_S = 0.002
# Prompts prefilled together hold at most this many tokens, padding included: beyond it the
# activations grow large, and a long prefill is bound by arithmetic, which batching does not save.
PREFILL_BATCH_TOKENS = 2048


@dataclass(eq=False)
class Row:
    """One sequence: its row of the cache and how many positions it fills."""

    index: int
    length: int = 0
    released: bool = False


@dataclass(eq=False)
class _Request:
    row: Row
    ids: Sequence[int]
    logits: Logits | None = None
    error: BaseException | None = None

    @property
    def prompt(self) -> bool:
        """A first prefill (an empty row), as opposed to a decode step."""
        return self.row.length == 0


@dataclass
class _Binding:
    """An IO binding over rows [lo, hi) of the cache, made once and reused."""

    io: Any
    logits: np.ndarray[Any, Any]
    keep: list[Any] = field(default_factory=list)  # the OrtValues the binding refers to


class BatchDecoder:
    """Implements generate.Decoder over a rewritten graph, for up to ``rows`` sequences at once."""

    def __init__(
        self,
        session: ort.InferenceSession,
        layout: Any,
        max_length: int,
        *,
        rows: int = 4,
        vocab_size: int,
        gather_s: float = GATHER_S,
        prefill_tokens: int = PREFILL_BATCH_TOKENS,
    ):
        if rows < 1:
            raise ValueError("rows must be at least 1")
        self.session = session
        self.layout = layout
        self.max_length = max_length
        self.rows = rows
        self._vocab = vocab_size
        self._gather_s = gather_s
        self._prefill_tokens = prefill_tokens
        # A graph of rewrite 1 takes the logits at the batch's last position: its prompts can
        # share a prefill only when they are equally long.
        self._ragged = bool(getattr(layout, "ragged_prefill", False))
        shape = (rows, layout.kv_heads, max_length, layout.head_dim)
        self._cache = [np.zeros(shape, dtype=layout.dtype) for _ in layout.past_names]
        self._bindings: dict[tuple[int, int], _Binding] = {}
        self._free = list(range(rows))
        self._active: set[Row] = set()
        self._pending: list[_Request] = []
        # A step or prefill is running; a sequence is gathering the batch for the next step.
        self._busy = False
        self._leading = False
        # The last run was a prefill: waiting decode steps go next.
        self._prefilled = False
        self._cond = threading.Condition()

    @property
    def free_rows(self) -> int:
        """Rows no sequence holds."""
        with self._cond:
            return len(self._free)

    @property
    def cache_bytes(self) -> int:
        """Memory the preallocated cache takes."""
        return sum(a.nbytes for a in self._cache)

    def start(self) -> Row:
        """A new sequence; waits for a free row when all are taken."""
        with self._cond:
            while not self._free:
                self._cond.wait()
            # The lowest free row keeps the batch's rows together at the front.
            self._free.sort()
            row = Row(self._free.pop(0))
            self._active.add(row)
            return row

    def release(self, state: DecoderState) -> None:
        """Give the row back; the sequence is over."""
        if not isinstance(state, Row):
            raise TypeError("state was not made by this decoder")
        with self._cond:
            if state.released:
                return
            state.released = True
            self._active.discard(state)
            self._free.append(state.index)
            self._cond.notify_all()

    def forward(self, state: DecoderState, ids: Sequence[int]) -> Logits:
        """Append ``ids`` to the sequence and return the logits after the last one."""
        if not isinstance(state, Row) or state.released:
            raise TypeError("state was not made by this decoder, or was released")
        if not ids:
            raise ValueError("ids is empty")
        if state.length + len(ids) > self.max_length:
            raise ContextLengthError(
                f"sequence of {state.length + len(ids)} tokens; the cache holds {self.max_length}"
            )
        if state.length > 0 and len(ids) > 1:
            return self._extend(state, ids)
        request = _Request(state, ids)
        with self._cond:
            self._pending.append(request)
            self._cond.notify_all()
            while request.logits is None and request.error is None:
                if self._busy or self._leading:
                    self._cond.wait()
                    continue
                self._lead()
        if request.error is not None:
            raise request.error
        assert request.logits is not None
        return request.logits

    def _extend(self, row: Row, ids: Sequence[int]) -> Logits:
        """Several tokens after a filled row (forced by a constraint): a run of its own."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            binding = self._binding(row.index, row.index + 1)
            total = row.length + len(ids)
            self._run(binding, np.asarray([ids], dtype=np.int64), np.ones((1, total), np.int64))
            row.length = total
            logits: Logits = binding.logits[0, -1].copy()
            return logits
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _lead(self) -> None:
        """Gather the waiting sequences (called with the lock held); run a prefill or a step."""
        self._leading = True
        deadline = time.monotonic() + self._gather_s
        while len(self._pending) < len(self._active) and not self._busy:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        self._leading = False
        if self._busy:
            return  # an extension slipped in; wait for it like everyone else
        prompts = [request for request in self._pending if request.prompt]
        waiting = len(prompts) < len(self._pending)
        # Prompts first: a new sequence's first token is the latency its user sees. But one
        # prefill at most between two steps while sequences wait for their next token, or a
        # stream of new requests would hold them back for as long as it lasts.
        if prompts and not (waiting and self._prefilled):
            self._prefilled = True
            batch = self._prompt_group(prompts)
            self._pending = [request for request in self._pending if request not in batch]
        else:
            prompts = []
            self._prefilled = False
            batch = [request for request in self._pending if not request.prompt]
            self._pending = [request for request in self._pending if request.prompt]
            taking = {request.row.index for request in batch}
            # Read under the lock: rows may start or end while the step runs.
            between = {r.index: r.length for r in self._active if r.index not in taking}
        self._busy = True
        self._cond.release()
        try:
            if prompts:
                self._prefill(batch)
            else:
                self._step(batch, between)
        except BaseException as exc:  # every waiter must wake, whatever happened
            for request in batch:
                request.error = exc
        finally:
            self._cond.acquire()
            self._busy = False
            self._cond.notify_all()

    def _prompt_group(self, prompts: list[_Request]) -> list[_Request]:
        """The prompts of the lowest adjacent rows that fit one prefill run."""
        prompts = sorted(prompts, key=lambda request: request.row.index)
        group = prompts[:1]
        for request in prompts[1:]:
            if request.row.index != group[-1].row.index + 1:
                break
            if not self._ragged and len(request.ids) != len(group[0].ids):
                break
            lengths = [len(r.ids) for r in (*group, request)]
            padded = len(lengths) * max(lengths)
            # Padding is computed like real tokens: do not let it double the work.
            if padded > self._prefill_tokens or padded > 2 * sum(lengths):
                break
            group.append(request)
        return group

    def _prefill(self, group: list[_Request]) -> None:
        """Prefill the prompts of adjacent empty rows in one run, right-padded."""
        lo = group[0].row.index
        width = max(len(request.ids) for request in group)
        ids = np.zeros((len(group), width), dtype=np.int64)
        mask = np.zeros((len(group), width), dtype=np.int64)
        for i, request in enumerate(group):
            ids[i, : len(request.ids)] = request.ids
            mask[i, : len(request.ids)] = 1
        binding = self._binding(lo, lo + len(group))
        self._run(binding, ids, mask)
        for i, request in enumerate(group):
            request.row.length = len(request.ids)
            request.logits = binding.logits[i, -1].copy()

    def _step(self, batch: list[_Request], between: dict[int, int]) -> None:
        """One decode step for ``batch``; ``between`` holds the lengths of the other rows."""
        rows = {request.row.index: request for request in batch}
        lo, hi = min(rows), max(rows) + 1
        ids = np.zeros((hi - lo, 1), dtype=np.int64)
        lengths = np.ones(hi - lo, dtype=np.int64)
        for index in range(lo, hi):
            request = rows.get(index)
            if request is not None:
                ids[index - lo, 0] = request.ids[0]
                lengths[index - lo] = request.row.length + 1
            elif between.get(index, self.max_length) < self.max_length:
                # A sequence between steps: its row computes a throwaway token into the slot
                # its next real token overwrites. A free row writes slot 0, which is garbage.
                lengths[index - lo] = between[index] + 1
        total = int(lengths.max())
        mask = (np.arange(total) < lengths[:, None]).astype(np.int64)
        binding = self._binding(lo, hi)
        self._run(binding, ids, mask)
        for index, request in rows.items():
            request.row.length += 1
            request.logits = binding.logits[index - lo, -1].copy()

    def _run(
        self, binding: _Binding, ids: np.ndarray[Any, Any], mask: np.ndarray[Any, Any]
    ) -> None:
        binding.io.bind_cpu_input("input_ids", ids)
        binding.io.bind_cpu_input("attention_mask", mask)
        self.session.run_with_iobinding(binding.io)

    def _binding(self, lo: int, hi: int) -> _Binding:
        found = self._bindings.get((lo, hi))
        if found is not None:
            return found
        io = self.session.io_binding()
        keep: list[Any] = []
        for past, present, array in zip(
            self.layout.past_names, self.layout.present_names, self._cache, strict=True
        ):
            # The same buffer as past and present: GroupQueryAttention writes in place.
            value = ort.OrtValue.ortvalue_from_numpy(array[lo:hi])
            io.bind_ortvalue_input(past, value)
            io.bind_ortvalue_output(present, value)
            keep.append(value)
        logits = np.zeros((hi - lo, 1, self._vocab), dtype=np.float32)
        value = ort.OrtValue.ortvalue_from_numpy(logits)
        io.bind_ortvalue_output("logits", value)
        keep.append(value)
        binding = _Binding(io, logits, keep)
        self._bindings[(lo, hi)] = binding
        return binding
