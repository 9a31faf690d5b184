"""Request dependencies: the store, and who is calling (operator, device, edge)."""

from __future__ import annotations

import hmac
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
    return request.app.state.control


State = Annotated[ControlState, Depends(get_state)]


def get_store(state: State) -> Store:
    return state.store


StoreDep = Annotated[Store, Depends(get_store)]


def get_settings(state: State) -> ControlSettings:
    return state.settings


SettingsDep = Annotated[ControlSettings, Depends(get_settings)]


def _token(credentials: HTTPAuthorizationCredentials | None, what: str) -> str:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated(f"missing {what} (Authorization: Bearer ...)")
    return credentials.credentials


def require_operator(credentials: Credentials, store: StoreDep) -> None:
    if not store.api_key_valid(key=_token(credentials, "operator API key")):
        raise Unauthenticated("invalid or revoked operator API key")


def require_device(credentials: Credentials, store: StoreDep) -> Device:
    return store.authenticate_device(credential=_token(credentials, "device credential"))


def require_edge_secret(credentials: Credentials, settings: SettingsDep) -> None:
    token = _token(credentials, "edge enrollment secret")
    expected = settings.edge_secret or ""
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthenticated("invalid edge enrollment secret")


def edge_credential(credentials: Credentials) -> str:
    return _token(credentials, "edge credential")


Operator = Depends(require_operator)
DeviceDep = Annotated[Device, Depends(require_device)]
EdgeSecret = Depends(require_edge_secret)
EdgeCredential = Annotated[str, Depends(edge_credential)]
