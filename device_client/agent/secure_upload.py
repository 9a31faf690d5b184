"""The device's half of secure aggregation: its trained adapter leaves the device only masked.

After training, the agent makes a fresh X25519 key pair for the round, posts the public key (with its
update's layout, its adapter config and example count, in the clear), waits until the control plane
has fixed the round's members, derives a mask per peer and uploads its example-weighted update in
fixed point plus the masks (`splitft.federated.secagg`). The private key lives in this call only.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import tarfile
import threading
import time
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors

from device_client.adapter_load import ADAPTER_WEIGHTS
from device_client.agent.control_client import ControlPlaneClient
from splitft.errors import FailedPrecondition, Unavailable
from splitft.federated.fixedpoint import FRACTION_BITS, Layout
from splitft.federated.secagg import MIN_MEMBERS, generate_private_key, mask_update, public_bytes
from splitft.jobs.spec import Assignment

logger = logging.getLogger(__name__)
ADAPTER_CONFIG = "adapter_config.json"
DEFAULT_POLL = 1.0
MAX_WAIT_S = 7 * 86400.0  # the round's deadline ends the wait first (the session fails: a 409)


def is_secure(assignment: Assignment) -> bool:
    """Whether the assignment's job aggregates with secure aggregation."""
    federated = assignment.spec.federated
    return federated is not None and federated.secure_aggregation and assignment.round is not None


def read_adapter(archive: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The trained adapter's tensors and config from the archive the trainer packed."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        files = {}
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            member = tar.extractfile(name)
            if member is None:
                raise FailedPrecondition(f"the trained adapter has no {name}")
            files[name] = member.read()
    return dict(load_safetensors(files[ADAPTER_WEIGHTS])), json.loads(files[ADAPTER_CONFIG])


class SecureUploader:
    """Uploads a session's adapter masked, once its round's members are fixed."""

    def __init__(self, client: ControlPlaneClient, device_name: str, stop: threading.Event) -> None:
        self.client = client
        self.device_name = device_name
        self.stop = stop

    def upload(self, assignment: Assignment, archive: bytes, examples: int) -> int:
        """Key, members, masked upload; the bytes uploaded."""
        sid = assignment.session_id
        state, config = read_adapter(archive)
        private = generate_private_key()
        body = {
            "public_key": base64.b64encode(public_bytes(private)).decode(),
            "layout": Layout.of_state(state).to_json(),
            "adapter_config": config,
            "examples": examples,
        }
        self.client.post_secagg_key(sid, body)
        found = self._wait_for_members(sid)
        members = self._check_members(assignment, found, public_bytes(private))
        masked = mask_update(
            state, examples, me=self.device_name, private=private, members=members, context=found["context"]
        )
        data = masked.to_bytes()
        self.client.upload_masked(sid, data)
        logger.info("session %s: uploaded its update masked with %d peers", sid, len(members) - 1)
        return len(data)

    def _wait_for_members(self, session_id: str) -> dict[str, Any]:
        """Poll until the control plane fixes the members (an unreachable control plane is retried)."""
        deadline = time.monotonic() + MAX_WAIT_S
        while time.monotonic() < deadline:
            if self.stop.is_set():
                raise FailedPrecondition("the device agent was stopped while waiting for the round's members")
            try:
                found, retry_after = self.client.secagg_members(session_id)
            except Unavailable as exc:
                logger.warning("waiting for the members of session %s: %s", session_id, exc.message)
                found, retry_after = None, DEFAULT_POLL * 5
            if found is not None:
                return found
            self.stop.wait(retry_after if retry_after is not None else DEFAULT_POLL)
        raise FailedPrecondition(f"the members of session {session_id}'s round were not fixed in time")

    def _check_members(
        self, assignment: Assignment, found: dict[str, Any], own_key: bytes
    ) -> dict[str, bytes]:
        """The members as name -> key, after checking what the control plane sent makes sense: the
        masks' context names this job and round, the encoding is ours, this device is in with its key."""
        context = str(found.get("context", ""))
        if not context.startswith(f"{assignment.job_id}:{assignment.round}:"):
            raise FailedPrecondition(
                f"the control plane sent the members of another round ({context[:80]!r})"
            )
        if found.get("fraction_bits") != FRACTION_BITS:
            raise FailedPrecondition(f"the control plane decodes {found.get('fraction_bits')} fraction bits")
        members = {str(m["device"]): base64.b64decode(m["public_key"]) for m in found.get("members", [])}
        if members.get(self.device_name) != own_key:
            raise FailedPrecondition("the round's members do not include this device's key")
        if len(members) < MIN_MEMBERS:
            raise FailedPrecondition(
                f"secure aggregation needs {MIN_MEMBERS} members; the round has {len(members)}"
            )
        return members
