"""Request dependencies: the store, and who is calling (operator, device, edge)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from splitft.errors import Unauthenticated
from splitft_control.models import Device
from splitft_control.settings import ControlSettings
from splitft_control.state import ControlState
from splitft_control.store import Store

bearer = HTTPBearer(auto_error=False, description="operator API key, device credential or edge secret")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def get_state(request: Request) -> ControlState:
    """The control plane's shared state, held by the app."""
    return request.app.state.control


State = Annotated[ControlState, Depends(get_state)]


def get_store(state: State) -> Store:
    """The store, for routes that read or write state."""
    return state.store


StoreDep = Annotated[Store, Depends(get_store)]


def get_settings(state: State) -> ControlSettings:
    """The settings the control plane was started with."""
    return state.settings


SettingsDep = Annotated[ControlSettings, Depends(get_settings)]


def _token(credentials: HTTPAuthorizationCredentials | None, what: str) -> str:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated(f"missing {what} (Authorization: Bearer ...)")
    return credentials.credentials


def require_operator(credentials: Credentials, store: StoreDep) -> None:
    """Admit a valid, unrevoked operator API key; else 401."""
    if not store.api_key_valid(key=_token(credentials, "operator API key")):
        raise Unauthenticated("invalid or revoked operator API key")


def require_device(credentials: Credentials, store: StoreDep) -> Device:
    """The enrolled device whose credential is presented: 401 if unknown, 403 if disabled."""
    return store.authenticate_device(credential=_token(credentials, "device credential"))


@dataclass(frozen=True)
class EdgeRegistrant:
    """Who asks to register an edge: the shared secret (new names only) or an edge (its own name)."""

    edge_id: str | None = None


def edge_registrant(credentials: Credentials, settings: SettingsDep, store: StoreDep) -> EdgeRegistrant:
    """The shared edge secret or an edge's own current credential; else 401."""
    token = _token(credentials, "edge enrollment secret")
    expected = settings.edge_secret or ""
    if expected and hmac.compare_digest(token.encode(), expected.encode()):
        return EdgeRegistrant()
    edge = store.edge_by_credential(credential=token)
    if edge is None:
        raise Unauthenticated("invalid edge enrollment secret (or edge credential)")
    return EdgeRegistrant(edge_id=edge.id)


def edge_credential(credentials: Credentials) -> str:
    """The bearer an edge presents on its heartbeats (checked against the edge by the route); 401 if none."""
    return _token(credentials, "edge credential")


Operator = Depends(require_operator)
DeviceDep = Annotated[Device, Depends(require_device)]
EdgeCredential = Annotated[str, Depends(edge_credential)]
Registrant = Annotated[EdgeRegistrant, Depends(edge_registrant)]
