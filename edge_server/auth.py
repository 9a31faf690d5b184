"""Session-token checks on every DataPlane call, in a server interceptor.

The interceptor authenticates (a valid token from a trusted issuer: else UNAUTHENTICATED) and binds
the token's device to the TLS client certificate (else PERMISSION_DENIED). The servicer then
authorizes each call against the claims (`authorize_call`): the session it touches and the model
it opens must be the token's (else PERMISSION_DENIED).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_server.handlers import rewrap
from edge_server.limits import DeviceCallCounter
from splitft.errors import PermissionDenied, ResourceExhausted, SplitftError, Unauthenticated
from splitft.security.tokens import CLOCK_SKEW_SECONDS, METADATA_KEY, SessionClaims, authorize, verify_token

logger = logging.getLogger(__name__)

CURRENT_CLAIMS: contextvars.ContextVar[SessionClaims | None] = contextvars.ContextVar("claims", default=None)
_GUARDED_PREFIX = "/splitft.v1.DataPlane/"


def peer_device(context: grpc.ServicerContext) -> str | None:
    """The CN of the client certificate, when the peer presented one over TLS."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode() if names else None


def _bearer(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == METADATA_KEY:
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization metadata must be 'Bearer <session token>'")
            return token.strip()
    raise Unauthenticated("missing session token (metadata 'authorization: Bearer <token>')")


class TokenInterceptor(grpc.ServerInterceptor):
    """On every DataPlane call: a valid session token (when `issuers` are given), then a call slot
    for the calling device and one edge-wide. Health checks stay open and take no DataPlane slot."""

    def __init__(
        self, issuers: list[Ed25519PublicKey], *, calls: DeviceCallCounter | None = None, max_calls: int = 0
    ) -> None:
        self.issuers = issuers
        self.calls = calls
        self.max_calls = max_calls  # DataPlane calls in flight edge-wide; 0: no bound here
        self._in_flight = 0
        self._lock = threading.Lock()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler, wrapped to admit each DataPlane call (health checks pass as they are)."""
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_GUARDED_PREFIX):
            return handler
        return _wrap_handler(handler, self._admit)

    @contextlib.contextmanager
    def _admit(self, context: grpc.ServicerContext) -> Iterator[SessionClaims | None]:
        """Authenticate the call and hold its slots while it runs; aborts with the refusal."""
        try:
            claims = self._authenticate(context) if self.issuers else None
            device = claims.device if claims is not None else peer_device(context)
            self._acquire(device)
        except SplitftError as exc:
            logger.info("refused call from %s: %s", context.peer(), exc.message)
            context.abort(exc.code.grpc_status, exc.message)
            raise  # unreachable: abort raises
        try:
            yield claims
        finally:
            self._release(device)

    def _authenticate(self, context: grpc.ServicerContext) -> SessionClaims:
        claims = verify_token(_bearer(context), self.issuers)
        device = peer_device(context)
        if device is not None:
            authorize(claims, session=claims.session, peer_device=device)
        return claims

    def _acquire(self, device: str | None) -> None:
        with self._lock:
            if self.max_calls and self._in_flight >= self.max_calls:
                raise ResourceExhausted(f"edge is busy: {self.max_calls} calls in flight")
            self._in_flight += 1
        if device is None or self.calls is None:
            return  # plaintext without a certificate: no device to count calls for
        try:
            self.calls.acquire(device)
        except SplitftError:
            self._release(None)
            raise

    def _release(self, device: str | None) -> None:
        with self._lock:
            self._in_flight -= 1
        if device is not None and self.calls is not None:
            self.calls.release(device)


def _wrap_handler(
    handler: grpc.RpcMethodHandler, admit: Callable[[grpc.ServicerContext], Any]
) -> grpc.RpcMethodHandler:
    """`handler` with every call run inside `admit(context)` and its claims in CURRENT_CLAIMS."""

    def wrap(behavior: Callable[..., Any], yields: bool) -> Callable[..., Any]:
        if yields:

            def streaming(request: Any, context: grpc.ServicerContext) -> Any:
                with admit(context) as claims:
                    token = CURRENT_CLAIMS.set(claims)
                    timer = _end_at_expiry(context, claims) if handler.request_streaming else None
                    try:
                        yield from behavior(request, context)
                    finally:
                        CURRENT_CLAIMS.reset(token)
                        if timer is not None:
                            timer.cancel()

            return streaming

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            with admit(context) as claims:
                token = CURRENT_CLAIMS.set(claims)
                try:
                    return behavior(request, context)
                finally:
                    CURRENT_CLAIMS.reset(token)

        return unary

    return rewrap(handler, wrap)


def _end_at_expiry(context: grpc.ServicerContext, claims: SessionClaims | None) -> threading.Timer | None:
    """A timer that ends this (long-lived, request-streaming) call when its token expires, even if
    the peer sends nothing more: requests are also checked one by one (`check_not_expired`)."""
    if claims is None:
        return None
    delay = claims.expires + CLOCK_SKEW_SECONDS - time.time()
    timer = threading.Timer(max(delay, 0.0), _cancel_expired, args=(context,))
    timer.daemon = True
    timer.start()
    return timer


def _cancel_expired(context: grpc.ServicerContext) -> None:
    logger.info("ending a stream from %s: its session token expired", context.peer())
    try:
        # grpcio's server call can be cancelled with a status; the public cancel() says CANCELLED.
        call = context._rpc_event.call  # type: ignore[attr-defined]
        call.cancel(grpc.StatusCode.UNAUTHENTICATED.value[0], "session token expired")
    except (AttributeError, TypeError):
        context.cancel()


def authorize_call(session_id: str, *, model: str | None = None, edge_id: str | None = None) -> None:
    """PermissionDenied unless the current call's token covers `session_id` (and `model`)."""
    claims = CURRENT_CLAIMS.get()
    if claims is not None:
        authorize(claims, session=session_id, model=model, edge=edge_id)


def authorize_edge(edge_id: str | None) -> None:
    """PermissionDenied unless the current call's token (if any) is valid on this edge."""
    claims = CURRENT_CLAIMS.get()
    if claims is not None and edge_id is not None and claims.edge and claims.edge != edge_id:
        raise PermissionDenied("session token was issued for another edge")


def check_not_expired(now: float | None = None) -> None:
    """Unauthenticated once the current call's token has expired: a long stream is checked per
    request, not only when it opens."""
    claims = CURRENT_CLAIMS.get()
    current = time.time() if now is None else now
    if claims is not None and claims.expires + CLOCK_SKEW_SECONDS < current:
        raise Unauthenticated("session token expired; open a new stream with a fresh token")


def token_session() -> str | None:
    """The session id of the current call's token, if tokens are checked."""
    claims = CURRENT_CLAIMS.get()
    return claims.session if claims is not None else None
