"""Session-token checks on every DataPlane call, in a server interceptor.

The interceptor authenticates (a valid token from a trusted issuer: else UNAUTHENTICATED) and binds
the token's device to the TLS client certificate (else PERMISSION_DENIED). The servicer then
authorizes each call against the claims (`authorize_call`): the session it touches and the model
it opens must be the token's (else PERMISSION_DENIED).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from splitft.errors import SplitftError, Unauthenticated
from splitft.security.tokens import METADATA_KEY, SessionClaims, authorize, verify_token

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
    """Requires a valid session token on every DataPlane call; health checks stay open."""

    def __init__(self, issuers: list[Ed25519PublicKey]) -> None:
        if not issuers:
            raise ValueError("a token interceptor needs at least one issuer key")
        self.issuers = issuers

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_GUARDED_PREFIX):
            return handler
        return _wrap_handler(handler, self._authenticate)

    def _authenticate(self, context: grpc.ServicerContext) -> SessionClaims:
        try:
            claims = verify_token(_bearer(context), self.issuers)
            device = peer_device(context)
            if device is not None:
                authorize(claims, session=claims.session, peer_device=device)
            return claims
        except SplitftError as exc:
            logger.info("refused call from %s: %s", context.peer(), exc.message)
            context.abort(exc.code.grpc_status, exc.message)
            raise  # unreachable: abort raises


def _wrap_handler(
    handler: grpc.RpcMethodHandler, authenticate: Callable[[grpc.ServicerContext], SessionClaims]
):
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    behavior = getattr(handler, kind)

    if handler.response_streaming or inspect.isgeneratorfunction(behavior):

        def streaming(request: Any, context: grpc.ServicerContext) -> Any:
            claims = authenticate(context)
            token = CURRENT_CLAIMS.set(claims)
            try:
                yield from behavior(request, context)
            finally:
                CURRENT_CLAIMS.reset(token)

        wrapped: Callable = streaming
    else:

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            claims = authenticate(context)
            token = CURRENT_CLAIMS.set(claims)
            try:
                return behavior(request, context)
            finally:
                CURRENT_CLAIMS.reset(token)

        wrapped = unary
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def authorize_call(session_id: str, *, model: str | None = None, edge_id: str | None = None) -> None:
    """PermissionDenied unless the current call's token covers `session_id` (and `model`)."""
    claims = CURRENT_CLAIMS.get()
    if claims is not None:
        authorize(claims, session=session_id, model=model, edge=edge_id)


def token_session() -> str | None:
    """The session id of the current call's token, if tokens are checked."""
    claims = CURRENT_CLAIMS.get()
    return claims.session if claims is not None else None
