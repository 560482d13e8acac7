"""The filter chain: request phase in config order, response phase in reverse, fail policy."""

from __future__ import annotations

import json
import logging
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
    # The filter (index) that holds the stream paused, if any.
    paused_at: int | None = None


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

    def __init__(self, supervisors: Sequence[FilterSupervisor]):
        self.filters = list(supervisors)

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
        """Run the request phase; check ``exchange.stream.local_response`` afterwards."""
        exchange = Exchange(stream)
        has_body = bool(stream.request_body)
        for index, supervisor in enumerate(self.filters):
            if not self._run(exchange, index, supervisor, "request", has_body):
                break
        return exchange

    def response(self, exchange: Exchange) -> None:
        """Run the response phase in reverse order, over the filters that saw the request."""
        if exchange.stopped_by is not None:
            # A local answer ends the chain: no filter sees a response phase for it.
            return
        has_body = bool(exchange.stream.response_body)
        for index in sorted(exchange.contexts, reverse=True):
            supervisor = self.filters[index]
            if not self._run(exchange, index, supervisor, "response", has_body):
                break

    def finish(self, exchange: Exchange) -> None:
        """on_done, on_log and on_delete for every context the exchange created."""
        for index, (instance, context_id) in sorted(exchange.contexts.items()):
            if instance.dead is not None:
                continue
            try:
                instance.finish_stream(context_id)
            except FilterTrapError as exc:
                self.filters[index].trapped(exc)
        exchange.contexts.clear()

    def _run(
        self,
        exchange: Exchange,
        index: int,
        supervisor: FilterSupervisor,
        phase: str,
        has_body: bool,
    ) -> bool:
        """One filter's callbacks for one phase; False when the chain must stop here."""
        stream = exchange.stream
        try:
            if phase == "request":
                instance = supervisor.instance()
                context_id = instance.create_stream(stream)
                exchange.contexts[index] = (instance, context_id)
                headers, body = "proxy_on_request_headers", "proxy_on_request_body"
                count, size = len(stream.request_headers), len(stream.request_body)
            else:
                instance, context_id = exchange.contexts[index]
                headers, body = "proxy_on_response_headers", "proxy_on_response_body"
                count, size = len(stream.response_headers), len(stream.response_body)
            action = instance.stream_call(context_id, headers, count, int(not has_body))
            if not self._stopped(exchange, supervisor) and has_body:
                action = instance.stream_call(context_id, body, size, 1)
        except FilterError as exc:
            return self._failed(exchange, index, supervisor, exc)
        if self._stopped(exchange, supervisor):
            return False
        context = instance.contexts.get(context_id)
        if action != 0 and not (context and context.resumed):
            # Paused on its last callback with nothing to resume it: the request would wait
            # forever. Treat it as the filter's failure, under its fail policy.
            exchange.paused_at = index
            message = f"paused the {phase} and never resumed it"
            return self._failed(exchange, index, supervisor, FilterError(supervisor.name, message))
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
        self, exchange: Exchange, index: int, supervisor: FilterSupervisor, exc: FilterError
    ) -> bool:
        if isinstance(exc, FilterTrapError):
            supervisor.trapped(exc)
        else:
            log.error("%s", exc)
        exchange.contexts.pop(index, None)
        if supervisor.fail_open:
            supervisor.stats.skipped += 1
            exchange.skipped.add(index)
            return True
        status = 500 if isinstance(exc, FilterTrapError) else 503
        exchange.stream.local_response = _error_response(
            status, f"filter {supervisor.name} failed", supervisor.name
        )
        exchange.stopped_by = supervisor.name
        return False
