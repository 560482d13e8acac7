"""The decode loop: prefill, then one token at a time with stops, limits, streaming and timing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import ContextLengthError
from edge_runtime.messages import FinishReason, Timing, Usage
from edge_runtime.model.sampling import Logits, Sampler, SamplingParams


class DecoderState(Protocol):
    """The KV cache of one sequence, owned by its decoder."""

    @property
    def length(self) -> int:
        """Tokens already in the cache."""
        ...


class Decoder(Protocol):
    """A causal LM that extends a cached sequence and returns the next-token logits."""

    def start(self) -> DecoderState:
        """An empty sequence."""
        ...

    def forward(self, state: DecoderState, ids: Sequence[int]) -> Logits:
        """Append ``ids`` to ``state`` and return the logits after the last one."""
        ...

    def release(self, state: DecoderState) -> None:
        """The sequence is over: free what it holds."""
        ...


class Constraint(Protocol):
    """Limits which tokens may come next (a grammar); None from mask() means any."""

    def mask(self) -> npt.NDArray[np.bool_] | None:
        """Allowed token ids for the next step, or None."""
        ...

    def advance(self, token: int) -> None:
        """The token that was picked."""
        ...


class TextDecoder(Protocol):
    """Turns generated ids into text deltas, one token at a time."""

    def step(self, token_id: int) -> str:
        """Text completed by ``token_id``."""
        ...

    def flush(self) -> str:
        """Text still held back when the generation ends."""
        ...


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Everything that shapes one generation."""

    max_new_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """The outcome of a finished generation."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    timing: Timing

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode speed (tokens after the first, over the decode time)."""
        return self.timing.decode_tokens_per_s(self.usage.completion_tokens)


@dataclass
class _Clock:
    started: float
    first_token: float | None = None
    finished: float | None = None


@dataclass
class CancelToken:
    """Set from any thread to stop a generation after its current step."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask the generation to stop."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether cancel() was called."""
        return self._event.is_set()


class Generation:
    """One generation as an iterator of text deltas; ``result`` is set once it is exhausted."""

    def __init__(
        self,
        decoder: Decoder,
        text_decoder: TextDecoder,
        prompt_ids: Sequence[int],
        params: GenerationParams,
        *,
        eos_token_ids: Sequence[int],
        context_length: int,
        cancel: CancelToken | None = None,
        clock: Callable[[], float] = time.perf_counter,
        constraint: Constraint | None = None,
    ):
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if len(prompt_ids) >= context_length:
            raise ContextLengthError(
                f"prompt is {len(prompt_ids)} tokens; the context window is {context_length}"
            )
        self._decoder = decoder
        self._text_decoder = text_decoder
        self._prompt = list(prompt_ids)
        self._params = params
        self._stop_ids = frozenset(eos_token_ids) | frozenset(params.stop_token_ids)
        # The context bound, not max_new_tokens, may be what ends a long prompt's answer.
        self._budget = min(params.max_new_tokens, context_length - len(prompt_ids))
        self._cancel = cancel or CancelToken()
        self._clock = clock
        self._constraint = constraint
        self._result: GenerationResult | None = None
        self._iterator = self._run()

    @property
    def cancel_token(self) -> CancelToken:
        """The token that stops this generation."""
        return self._cancel

    @property
    def result(self) -> GenerationResult:
        """The finished generation; only valid once iteration has ended."""
        if self._result is None:
            raise RuntimeError("generation has not finished")
        return self._result

    def __iter__(self) -> Iterator[str]:
        return self._iterator

    def run(self) -> GenerationResult:
        """Generate to the end, discarding the deltas."""
        for _ in self._iterator:
            pass
        return self.result

    def _run(self) -> Iterator[str]:
        params = self._params
        sampler = Sampler(params.sampling, np.random.default_rng(params.seed))
        clock = _Clock(started=self._clock())
        seen: npt.NDArray[np.int64] = np.empty(len(self._prompt) + self._budget, dtype=np.int64)
        seen[: len(self._prompt)] = self._prompt
        n_seen = len(self._prompt)
        generated: list[int] = []
        text = ""
        emitted = 0
        finish: FinishReason = "length"
        state = self._decoder.start()
        try:
            feed: Sequence[int] = self._prompt
            cut = None
            while len(generated) < self._budget:
                if self._cancel.cancelled:
                    finish = "cancelled"
                    break
                logits = self._decoder.forward(state, feed)
                if self._constraint is not None:
                    allowed = self._constraint.mask()
                    if allowed is not None:
                        if not allowed.any():
                            # The grammar admits nothing more: the turn is over.
                            finish = "stop"
                            break
                        logits = np.where(allowed, logits, -np.inf).astype(np.float32)
                token = sampler(logits, seen[:n_seen])
                if clock.first_token is None:
                    clock.first_token = self._clock()
                if token in self._stop_ids:
                    finish = "stop"
                    break
                if self._constraint is not None:
                    self._constraint.advance(token)
                generated.append(token)
                seen[n_seen] = token
                n_seen += 1
                feed = (token,)
                text += self._text_decoder.step(token)
                cut = _find_stop(text, params.stop, emitted)
                if cut is not None:
                    text = text[:cut]
                    finish = "stop"
                    break
                # Hold back a tail that could still grow into a stop string.
                safe = len(text) - _partial_stop(text, params.stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
        finally:
            # A batched decoder lends each sequence a row of its cache until it ends.
            self._decoder.release(state)
        if cut is None:
            # However it ended (EOS, limit, cancel), release what the detokenizer still holds.
            text += self._text_decoder.flush()
            cut = _find_stop(text, params.stop, emitted)
            if cut is not None:
                text = text[:cut]
                finish = "stop"
        if len(text) > emitted:
            yield text[emitted:]
        clock.finished = self._clock()
        first = clock.first_token if clock.first_token is not None else clock.finished
        self._result = GenerationResult(
            text=text,
            token_ids=tuple(generated),
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(self._prompt), completion_tokens=len(generated)),
            timing=Timing(
                prefill_s=first - clock.started,
                decode_s=clock.finished - first,
                time_to_first_token_s=first - clock.started,
            ),
        )


def _find_stop(text: str, stops: tuple[str, ...], emitted: int) -> int | None:
    """Index where the earliest stop string starts, searching only text not yet sent."""
    best: int | None = None
    for stop in stops:
        # A stop string may straddle text already held back, never text already sent.
        at = text.find(stop, max(0, emitted))
        if at != -1 and (best is None or at < best):
            best = at
    return best


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


async def stream(generation: Generation, executor: Executor) -> AsyncIterator[str]:
    """Run a generation on ``executor`` and yield its deltas on the event loop.

    Each step runs on the executor's thread (onnxruntime releases the GIL there); leaving the
    iteration early, or cancelling the consuming task, cancels the generation.
    """
    loop = asyncio.get_running_loop()
    iterator = iter(generation)
    done = object()

    def step() -> object:
        return next(iterator, done)

    finished = False
    try:
        while True:
            delta = await loop.run_in_executor(executor, step)
            if delta is done:
                finished = True
                return
            assert isinstance(delta, str)
            yield delta
    finally:
        if not finished:
            generation.cancel_token.cancel()
            # Run it to its end on the executor (it stops at the next step) so its result,
            # finish_reason "cancelled", exists and its KV cache is released.
            with contextlib.suppress(RuntimeError):  # the executor is already shut down
                executor.submit(_drain, iterator)


async def stream_through(generation: Generation, executor: Executor) -> AsyncIterator[str]:
    """Run a whole generation on one ``executor`` thread, handing its deltas to the event loop.

    Unlike stream(), the steps do not wait for the event loop between tokens, so a batched
    decoder's sequences stay in step with each other however busy the loop is. The thread is
    held for the whole generation: the caller bounds how many run at once. Leaving the
    iteration early, or cancelling the consuming task, cancels the generation.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    done = object()

    def send(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under a cancelled stream
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            for delta in generation:
                send(delta)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            send(_Failed(exc))
        else:
            send(done)

    finished = False
    loop.run_in_executor(executor, produce)
    try:
        while True:
            item = await queue.get()
            if item is done:
                finished = True
                return
            if isinstance(item, _Failed):
                finished = True
                raise item.error
            assert isinstance(item, str)
            yield item
    finally:
        if not finished:
            # The thread stops at its next step; the generation's result says "cancelled".
            generation.cancel_token.cancel()


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


def _drain(iterator: Iterator[str]) -> None:
    for _ in iterator:
        pass
