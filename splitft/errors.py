"""One error catalog for every interface.

Domain errors carry a code; the code maps to a gRPC status (data plane) and an HTTP status
(control plane). Transports translate: they log the detail and return the clean message.
Anything that is not a `SplitftError` is a bug and surfaces as INTERNAL / 500.
"""

from __future__ import annotations

import enum

import grpc


class ErrorCode(enum.Enum):
    """A failure class, with its gRPC status and HTTP status."""

    INVALID_ARGUMENT = (grpc.StatusCode.INVALID_ARGUMENT, 400)
    NOT_FOUND = (grpc.StatusCode.NOT_FOUND, 404)
    ALREADY_EXISTS = (grpc.StatusCode.ALREADY_EXISTS, 409)
    FAILED_PRECONDITION = (grpc.StatusCode.FAILED_PRECONDITION, 409)
    RESOURCE_EXHAUSTED = (grpc.StatusCode.RESOURCE_EXHAUSTED, 429)
    PAYLOAD_TOO_LARGE = (grpc.StatusCode.RESOURCE_EXHAUSTED, 413)  # a request body over its limit
    UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, 401)
    PERMISSION_DENIED = (grpc.StatusCode.PERMISSION_DENIED, 403)
    UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, 503)
    INTERNAL = (grpc.StatusCode.INTERNAL, 500)

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return int(self.value[1])


class SplitftError(Exception):
    """Base of every error splitft raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SplitftError, ValueError):
    """The caller sent something malformed or out of range."""

    code = ErrorCode.INVALID_ARGUMENT


class NotFound(SplitftError, LookupError):
    """A named session, model or forward does not exist (or no longer does)."""

    code = ErrorCode.NOT_FOUND


class AlreadyExists(SplitftError):
    """Something would be overwritten or created twice."""

    code = ErrorCode.ALREADY_EXISTS


class FailedPrecondition(SplitftError):
    """The request is valid but the state does not allow it (e.g. step before configure)."""

    code = ErrorCode.FAILED_PRECONDITION


class ResourceExhausted(SplitftError):
    """A size or capacity limit was hit."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class PayloadTooLarge(ResourceExhausted):
    """A request body over its size limit: HTTP 413, gRPC RESOURCE_EXHAUSTED."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class Unauthenticated(SplitftError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(SplitftError):
    code = ErrorCode.PERMISSION_DENIED


class Unavailable(SplitftError):
    """The peer cannot be reached or is shutting down."""

    code = ErrorCode.UNAVAILABLE


class DeadlineExceeded(Unavailable):
    """A call ran past its deadline (gRPC DEADLINE_EXCEEDED): the edge may or may not have applied
    it, so a client retries it only when the request carries an id the edge deduplicates."""


class EdgeUnreachable(Unavailable):
    """The device gave up on its edge: transient failures went on past the retry budget
    (`device_client.retry.RetryPolicy`). Raised on the device only, never sent by an edge; what
    catches it resumes the session elsewhere (docs/resilience.md)."""


class UnsupportedModel(InvalidArgument):
    """The model's architecture is not one of the supported families."""


_BY_GRPC: dict[grpc.StatusCode, ErrorCode] = {}
for _code in ErrorCode:  # the first code of a gRPC status wins: RESOURCE_EXHAUSTED, not PAYLOAD_TOO_LARGE
    _BY_GRPC.setdefault(_code.grpc_status, _code)
_CLASS_BY_CODE: dict[ErrorCode, type[SplitftError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgument,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.ALREADY_EXISTS: AlreadyExists,
    ErrorCode.FAILED_PRECONDITION: FailedPrecondition,
    ErrorCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    ErrorCode.PAYLOAD_TOO_LARGE: PayloadTooLarge,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.UNAVAILABLE: Unavailable,
}


def error_from_grpc(status: grpc.StatusCode, detail: str) -> SplitftError:
    """The Python exception a client raises for a gRPC failure status."""
    code = _BY_GRPC.get(status, ErrorCode.INTERNAL)
    cls = _CLASS_BY_CODE.get(code, SplitftError)
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        code, cls = ErrorCode.UNAVAILABLE, DeadlineExceeded
    err = cls(f"{status.name}: {detail}")
    err.code = code
    return err


def error_from_code(code: str, message: str) -> SplitftError:
    """The Python exception for an error catalog code name received in a message (e.g. on a stream)."""
    known = ErrorCode.__members__.get(code, ErrorCode.INTERNAL)
    cls = _CLASS_BY_CODE.get(known, SplitftError)
    err = cls(f"{known.name}: {message}")
    err.code = known
    return err
