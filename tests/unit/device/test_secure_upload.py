"""The device's checks of what the control plane sends in a secure round (secure_upload.py): members of
another round, another encoding, a list without this device's key or with too few members are refused
before anything is masked or uploaded."""

from __future__ import annotations

import base64
import threading
from typing import Any

import httpx
import pytest

from device_client.agent.assignment import parse_assignment
from device_client.agent.control_client import ControlPlaneClient
from device_client.agent.secure_upload import SecureUploader, is_secure
from splitft.errors import FailedPrecondition
from splitft.federated.secagg import generate_private_key, public_bytes
from tests.support.agent_support import assignment_json, credential

OWN = public_bytes(generate_private_key())
PEER = public_bytes(generate_private_key())


def _assignment(secure: bool = True) -> Any:
    raw = assignment_json("s-1", steps=None, mode="federated")
    raw["spec"]["federated"] = {"rounds": 2, "local_steps": 1, "min_devices": 2, "secure_aggregation": secure}
    raw["spec"]["devices"] = ["phone-17", "tablet"]
    raw["round"] = 1
    return parse_assignment(raw)


def _members(**changes: Any) -> dict[str, Any]:
    keys = {"phone-17": OWN, "tablet": PEER}
    body = {
        "context": "j-1:1:0",
        "fraction_bits": 24,
        "members": [{"device": d, "public_key": base64.b64encode(k).decode()} for d, k in keys.items()],
    }
    return {**body, **changes}


def _check(found: dict[str, Any]) -> dict[str, bytes]:
    with httpx.Client() as http:  # never called: the checks run on what was already received
        uploader = SecureUploader(ControlPlaneClient(credential(), http), "phone-17", threading.Event())
        return uploader._check_members(_assignment(), found, OWN)


def test_a_secure_assignment_is_recognised() -> None:
    assert is_secure(_assignment()) and not is_secure(_assignment(secure=False))
    assert _check(_members()) == {"phone-17": OWN, "tablet": PEER}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"context": "j-2:1:0"}, "members of another round"),
        ({"context": "j-1:0:0"}, "members of another round"),
        ({"fraction_bits": 16}, "decodes 16 fraction bits"),
        (
            {"members": [{"device": "tablet", "public_key": base64.b64encode(PEER).decode()}]},
            "this device's key",
        ),
        (
            {"members": [{"device": "phone-17", "public_key": base64.b64encode(OWN).decode()}]},
            "needs 2 members",
        ),
        (
            {"members": [{"device": "phone-17", "public_key": base64.b64encode(PEER).decode()}]},
            "this device's key",
        ),
    ],
)
def test_what_makes_no_sense_is_refused_before_masking(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(FailedPrecondition, match=message):
        _check(_members(**changes))
