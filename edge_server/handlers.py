"""Rebuilding a gRPC method handler around its behaviour: what the edge's interceptors share.

A server interceptor gets the method's handler and returns one of the same kind (unary or stream
request and response) whose behaviour wraps the original; `rewrap` does that rebuilding, and the
interceptor says only how to wrap (`edge_server.auth` admits each call, `edge_server.idle_threads`
releases the handler thread's idle OpenMP team after it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc

# (the original behaviour, whether it yields its answers) -> the behaviour to serve instead
Wrap = Callable[[Callable[..., Any], bool], Callable[..., Any]]


def rewrap(handler: grpc.RpcMethodHandler, wrap: Wrap) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour replaced by `wrap(behaviour, yields)`, the same (de)serialisers."""
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    behavior = getattr(handler, kind)
    yields = bool(handler.response_streaming) or inspect.isgeneratorfunction(behavior)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(  # type: ignore[no-any-return]
        wrap(behavior, yields),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
