"""Every DataPlane call ends by releasing its handler thread's idle OpenMP workers.

torch gives each thread that runs a parallel region its own OpenMP team, and a gRPC handler thread
lives on in the server's pool after its call. libgomp counts the threads of every team, and once
they outnumber the CPUs it stops spinning between parallel regions in all of them (its throttled
wait): each region then wakes its workers from sleep. On the edge the `Step` call (the trunk
optimizer) ran in another handler thread than the session's `Train` stream, so from the first step
on the trunk's forwards and backwards ran throttled, about 10% slower on 2 cores
(docs/benchmarks.md, `bench step`). This interceptor ends each call with
`splitft.threads.release_idle_threads`, so that only threads computing right now hold a team; the
`Train` stream also releases after each answer (`DataPlaneServicer._answer`), and
`EdgeServer.start` in the thread that loaded the models and measured their memory profiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from edge_server.handlers import rewrap
from splitft.threads import release_idle_threads


class IdleThreadsInterceptor(grpc.ServerInterceptor):
    """Release the handler thread's idle OpenMP workers when a call's handler is done."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The call's handler, its behaviour followed by the release (also when it raises)."""
        handler = continuation(handler_call_details)
        return None if handler is None else _releasing(handler)


def _releasing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    return rewrap(handler, _release_after)


def _release_after(behavior: Callable[..., Any], yields: bool) -> Callable[..., Any]:
    if yields:

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behavior(request, context)
            finally:
                release_idle_threads()

        return streaming

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        finally:
            release_idle_threads()

    return unary
