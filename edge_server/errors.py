"""Translate domain errors into gRPC statuses at the servicer boundary."""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from splitft.errors import SplitftError

logger = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, grpc.RpcError):
        # Raised by the call's own request iterator: the device went away mid-call (a dropped
        # connection, a cancelled stream). Nothing to answer; the device retries (docs/resilience.md).
        logger.info("%s: the call ended under it (the device went away or cancelled)", method)
        return
    if isinstance(exc, SplitftError):
        logger.info("%s -> %s: %s", method, exc.code.name, exc.message)
        context.abort(exc.code.grpc_status, exc.message)
    ref = uuid.uuid4().hex[:12]
    logger.exception("%s failed unexpectedly (ref %s)", method, ref)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error on the edge (ref {ref}); see the edge log")


def translate_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Servicer-method decorator: SplitftError -> its status; anything else -> INTERNAL, logged."""
    name = method.__name__
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                _abort(context, exc, name)

        return stream

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            _abort(context, exc, name)

    return unary


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises a bare Exception carrying no SplitftError; let it through untouched.
    return type(exc) is Exception and not exc.args
