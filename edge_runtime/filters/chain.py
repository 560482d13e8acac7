"""The filter chain: request phase in config order, response phase in reverse, fail policy."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge_runtime.errors import FilterError, FilterTrapError
from edge_runtime.filters.host import FilterInstance
from edge_runtime.filters.stream import HttpStream, LocalResponse
from edge_runtime.filters.supervisor import FilterSupervisor

log = logging.getLogger("edge_runtime.filters")


@dataclass
class Exchange:
    """One request's passage through a chain: its stream and each filter's context."""

    stream: HttpStream
    contexts: dict[int, tuple[FilterInstance, int]] = field(default_factory=dict)
    # Filters skipped for this request under fail = "open", by index.
    skipped: set[int] = field(default_factory=set)
    # Set when the chain stopped the request: a local answer, a close, or a failed filter.
    stopped_by: str | None = None
    # The filter (index) that holds the stream paused, the phase, and since when (monotonic s).
    paused_at: int | None = None
    paused_phase: str = ""
    paused_since: float = 0.0


def _error_response(status: int, message: str, filter_name: str) -> LocalResponse:
    body = json.dumps({"error": {"status": status, "message": message}}).encode()
    return LocalResponse(
        status=status,
        body=body,
        headers=[(b"content-type", b"application/json")],
        details=message,
        filter=filter_name,
    )


class FilterChain:
    """An ordered set of filters; every request and response passes through all of them."""

    def __init__(self, supervisors: Sequence[FilterSupervisor], version: str = ""):
        self.filters = list(supervisors)
        # Names this chain's configuration and modules; answers cached under another are stale.
        self.version = version

    def start(self) -> None:
        """Start every filter; the first that cannot start is raised (nothing is left running)."""
        started: list[FilterSupervisor] = []
        try:
            for supervisor in self.filters:
                supervisor.start()
                started.append(supervisor)
        except BaseException:
            for supervisor in started:
                supervisor.close()
            raise

    def close(self) -> None:
        """Finish every filter's instance."""
        for supervisor in self.filters:
            supervisor.close()

    def request(self, stream: HttpStream) -> Exchange:
        """Run the request phase; then check ``paused_at`` and ``stream.local_response``."""
        exchange = Exchange(stream)
        self._request_from(exchange, 0)
        return exchange

    def _request_from(self, exchange: Exchange, start: int) -> None:
        for index in range(start, len(self.filters)):
            if not self._run(exchange, index, self.filters[index], "request"):
                return

    def response(self, exchange: Exchange) -> None:
        """Run the response phase in reverse order, over the filters that saw the request."""
        if exchange.stopped_by is not None:
            # A local answer ends the chain: no filter sees a response phase for it.
            return
        self._response_from(exchange, None)

    def _response_from(self, exchange: Exchange, below: int | None) -> None:
        for index in sorted(exchange.contexts, reverse=True):
            if below is not None and index >= below:
                continue
            if not self._run(exchange, index, self.filters[index], "response"):
                return

    def resume(self, exchange: Exchange) -> bool:
        """Go on with a paused phase if its filter resumed it; True once nothing is paused."""
        index = exchange.paused_at
        if index is None:
            return True
        entry = exchange.contexts.get(index)
        context = entry[0].contexts.get(entry[1]) if entry else None
        supervisor = self.filters[index]
        if self._stopped(exchange, supervisor):
            exchange.paused_at = None
            return True
        if context is not None and not context.resumed:
            return False
        exchange.paused_at = None
        self._continue_after(exchange, index)
        return exchange.paused_at is None

    def expire(self, exchange: Exchange) -> None:
        """The paused filter did not resume in time: apply its fail policy."""
        index = exchange.paused_at
        if index is None:
            return
        supervisor = self.filters[index]
        exchange.paused_at = None
        entry = exchange.contexts.get(index)
        message = f"did not resume the {exchange.paused_phase} in time"
        error: FilterError = FilterError(supervisor.name, message)
        if entry is not None and entry[0].dead is None:
            # The filter's context ends here; it gets done/log/delete like any other.
            try:
                entry[0].finish_stream(entry[1])
            except FilterTrapError as exc:
                error = exc
        if self._failed(exchange, index, supervisor, error, status=504):
            self._continue_after(exchange, index)

    def _continue_after(self, exchange: Exchange, index: int) -> None:
        if exchange.paused_phase == "request":
            self._request_from(exchange, index + 1)
        else:
            self._response_from(exchange, index)

    def finish(self, exchange: Exchange) -> None:
        """on_done, on_log and on_delete for every context the exchange created."""
        for index, (instance, context_id) in sorted(exchange.contexts.items()):
            if instance.dead is not None:
                continue
            try:
                instance.finish_stream(context_id)
            except FilterTrapError as exc:
                if exc.kind != "dead":
                    self.filters[index].trapped(exc)
        exchange.contexts.clear()

    def _run(
        self,
        exchange: Exchange,
        index: int,
        supervisor: FilterSupervisor,
        phase: str,
    ) -> bool:
        """One filter's callbacks for one phase; False when the chain must stop here."""
        stream = exchange.stream
        try:
            if phase == "request":
                instance = supervisor.instance()
                context_id, action = instance.request_phase(stream)
                exchange.contexts[index] = (instance, context_id)
            else:
                instance, context_id = exchange.contexts[index]
                action = instance.response_phase(context_id)
        except FilterError as exc:
            return self._failed(exchange, index, supervisor, exc)
        if self._stopped(exchange, supervisor):
            return False
        context = instance.contexts.get(context_id)
        if action != 0 and not (context and context.resumed):
            # The filter holds the stream (waiting for an HTTP call, a timer or a queue) until
            # it calls proxy_continue_stream; the caller polls and then resumes or expires it.
            exchange.paused_at = index
            exchange.paused_phase = phase
            exchange.paused_since = time.monotonic()
            return False
        return True

    def _stopped(self, exchange: Exchange, supervisor: FilterSupervisor) -> bool:
        stream = exchange.stream
        if stream.local_response is not None:
            exchange.stopped_by = stream.local_response.filter or supervisor.name
            return True
        if stream.closed:
            exchange.stopped_by = supervisor.name
            stream.local_response = _error_response(
                503, f"filter {supervisor.name} closed the stream", supervisor.name
            )
            return True
        return False

    def _failed(
        self,
        exchange: Exchange,
        index: int,
        supervisor: FilterSupervisor,
        exc: FilterError,
        *,
        status: int | None = None,
    ) -> bool:
        """Apply the filter's fail policy; True when the chain goes on without it."""
        if isinstance(exc, FilterTrapError) and exc.kind != "dead":
            supervisor.trapped(exc)
        else:
            # "dead": another exchange's trap already killed (and counted) this instance.
            log.error("%s", exc)
        exchange.contexts.pop(index, None)
        if supervisor.fail_open:
            supervisor.stats.skipped += 1
            exchange.skipped.add(index)
            return True
        if status is None:
            status = 500 if isinstance(exc, FilterTrapError) else 503
        exchange.stream.local_response = _error_response(
            status, f"filter {supervisor.name} failed", supervisor.name
        )
        exchange.stopped_by = supervisor.name
        return False
