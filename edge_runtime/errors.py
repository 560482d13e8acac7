"""The one exception tree of edge-runtime; every error knows the Status it answers with.

::

    EdgeRuntimeError                     500
    ├── ConfigError                      500  a key in a config or profile file is wrong
    ├── ModelError                       500  a model directory cannot be served
    │   ├── ModelFileError               500  a file is missing, unreadable or fails its hash
    │   ├── ModelFormatError             500  a graph, config or tokenizer lacks what we need
    │   └── ExportError                  500  the export or quantization step failed
    ├── RequestError                     400  the request itself is wrong
    │   ├── ContextLengthError           413  the prompt does not fit the context window
    │   ├── PayloadTooLargeError         413
    │   └── UnsupportedMediaTypeError    415
    ├── FilterError                      500  a Proxy-Wasm filter failed
    │   ├── FilterLoadError              500  a module cannot be loaded or started
    │   └── FilterTrapError              500  a callback trapped (deadline, fuel, memory, bug)
    ├── BusyError                        503  a bound is full; retry later
    ├── DeadlineExceededError            504
    └── GenerationCancelledError         500  the caller cancelled a generation
"""

from __future__ import annotations

from pathlib import Path

from edge_runtime.messages import Status


class EdgeRuntimeError(Exception):
    """Base of every error edge-runtime raises on purpose."""

    status: Status = Status.INTERNAL_ERROR


class ConfigError(EdgeRuntimeError):
    """A configuration or device-profile file is invalid; names the file and the key."""

    def __init__(self, message: str, *, file: Path | str | None = None, key: str | None = None):
        self.file = str(file) if file is not None else None
        self.key = key
        self.reason = message
        where = ""
        if self.file:
            where = f"{self.file}: "
        if key:
            where += f"{key}: "
        super().__init__(f"{where}{message}")


class ModelError(EdgeRuntimeError):
    """A model directory cannot be loaded or served."""


class ModelFileError(ModelError):
    """A file of a model directory is missing, unreadable or does not match its hash."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelFormatError(ModelError):
    """A graph, model config or tokenizer does not have the shape the runtime needs."""


class ExportError(ModelError):
    """Exporting or quantizing a checkpoint failed."""


class RequestError(EdgeRuntimeError):
    """The request is malformed or asks for something impossible."""

    status = Status.BAD_REQUEST


class ContextLengthError(RequestError):
    """The prompt alone does not fit the model's context window."""

    status = Status.PAYLOAD_TOO_LARGE


class PayloadTooLargeError(RequestError):
    """The request body is larger than the configured bound."""

    status = Status.PAYLOAD_TOO_LARGE


class UnsupportedMediaTypeError(RequestError):
    """The request body is in a format we do not read."""

    status = Status.UNSUPPORTED_MEDIA_TYPE


class FilterError(EdgeRuntimeError):
    """A Proxy-Wasm filter failed; ``filter`` names it."""

    def __init__(self, filter_name: str, message: str):
        self.filter = filter_name
        super().__init__(f"filter {filter_name}: {message}")


class FilterLoadError(FilterError):
    """A filter module cannot be compiled, instantiated, started or configured."""


class FilterTrapError(FilterError):
    """A filter callback trapped: its deadline, fuel or memory ran out, or the guest failed."""

    def __init__(self, filter_name: str, message: str, *, kind: str = "trap"):
        self.kind = kind
        super().__init__(filter_name, message)


class BusyError(EdgeRuntimeError):
    """A queue or concurrency bound is full; the client should retry after ``retry_after`` s."""

    status = Status.SERVICE_UNAVAILABLE

    def __init__(self, message: str = "busy", *, retry_after: float = 1.0):
        self.retry_after = retry_after
        super().__init__(message)


class DeadlineExceededError(EdgeRuntimeError):
    """The request's deadline passed before it was answered."""

    status = Status.GATEWAY_TIMEOUT


class GenerationCancelledError(EdgeRuntimeError):
    """A generation was cancelled by its caller."""


class ToolError(EdgeRuntimeError):
    """A tool call failed: bad arguments, denied, timed out, too much output, or it raised.

    Inside a plan this becomes an observation, not an error answer.
    """

    status = Status.BAD_GATEWAY


class ToolDeniedError(ToolError):
    """A filter refused a tool call."""


class ToolConfigError(EdgeRuntimeError):
    """A declared tool cannot be used as configured (an entry point that does not load, ...)."""
