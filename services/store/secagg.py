"""The device's calls of a secure round: post its key, read the members' keys, upload its masked update.

Every call checks the session is the device's own and open, and that its job uses secure aggregation;
the round itself moves on in `secagg_rounds.advance_secure_round`. What the control plane keeps of a
device is its public key, its update's layout, adapter config and example count, and its masked
vector until the round's sum is taken: never its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from splitft.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from splitft.federated.fixedpoint import Layout
from splitft.federated.secagg import check_public_key, read_masked
from splitft.jobs.spec import FederatedSpec
from splitft_control.models import Device, Job, JobSession, SecAggMember, utcnow
from splitft_control.secure_aggregation import check_adapter_config, disagreement
from splitft_control.store.base import ACTIVE_SESSION_STATES, StoreBase, get_row, refresh_job
from splitft_control.store.rounds import advance_round, current_round, federated_spec
from splitft_control.store.secagg_rounds import members_of, secagg_round


@dataclass(frozen=True)
class KeyOffer:
    """What a device posts with its key (all in the clear)."""

    public_key: bytes
    layout: list[Any]
    adapter_config: dict[str, Any]
    examples: int


@dataclass(frozen=True)
class Members:
    """The fixed members of the device's round: the masks' context and each member's public key."""

    context: str
    keys: dict[str, bytes]  # device name -> raw X25519 public key


def secure_spec(job: Job) -> FederatedSpec | None:
    """The federated spec of a job that uses secure aggregation, else None."""
    spec = federated_spec(job)
    return spec if spec is not None and spec.secure_aggregation else None


class SecAggStore(StoreBase):
    """The device side of secure rounds (see `splitft_control.store.secagg_rounds` for the round)."""

    def post_secagg_key(self, *, session_id: str, device_id: str, offer: KeyOffer) -> None:
        """Take the session's public key for its round; 409 once the members are fixed or for a second
        key; 400 for a key, layout or config that cannot be, or that differs from the other members'."""
        check_public_key(offer.public_key)
        layout = Layout.from_json(offer.layout)
        config = check_adapter_config(offer.adapter_config)
        if not 1 <= offer.examples < 2**31:
            raise InvalidArgument(f"examples must be in [1, 2^31), got {offer.examples}")
        with self.tx() as s:
            sess, job = _open_secure_session(s, session_id, device_id)
            state = secagg_round(s, job.id, sess.round or 0)
            if s.get(SecAggMember, sess.id) is not None:
                raise AlreadyExists(f"session {session_id} has already posted its key for this round")
            if state.fixed_at is not None:
                raise FailedPrecondition(
                    f"the members of round {sess.round} are fixed: this session's key came too late"
                )
            for other in members_of(s, job.id, sess.round or 0, state.attempt):
                _check_agrees(other, offer.public_key, layout, config)
            device = s.get(Device, device_id)
            assert device is not None  # the session's foreign key
            s.add(
                SecAggMember(
                    session_id=sess.id,
                    job_id=job.id,
                    round=sess.round,
                    attempt=state.attempt,
                    device=device.name,
                    public_key=offer.public_key,
                    layout=layout.to_json(),
                    adapter_config=config,
                    examples=offer.examples,
                )
            )
            s.flush()
            advance_round(s, job, self.aggregate)  # type: ignore[attr-defined]  # Store's
            refresh_job(s, job)

    def secagg_members(self, *, session_id: str, device_id: str) -> Members | None:
        """The fixed members' keys of the session's round; None until they are fixed."""
        with self.tx() as s:
            sess, job = _open_secure_session(s, session_id, device_id)
            member = s.get(SecAggMember, sess.id)
            if member is None:
                raise FailedPrecondition(f"session {session_id} has not posted its public key yet")
            state = secagg_round(s, job.id, sess.round or 0)
            if state.fixed_at is None:
                return None
            members = members_of(s, job.id, member.round, member.attempt)
            context = f"{job.id}:{member.round}:{member.attempt}"
            return Members(context, {m.device: m.public_key for m in members})

    def upload_masked(self, *, session_id: str, device_id: str, data: bytes) -> None:
        """Take the session's masked vector: the session succeeds, and the round sums once all are in.
        409 before the members are fixed, before the key, or twice; 400 for a vector of the wrong size."""
        with self.tx() as s:
            sess, job = _open_secure_session(s, session_id, device_id)
            member = s.get(SecAggMember, sess.id)
            if member is None:
                raise FailedPrecondition(
                    f"session {session_id} uploads before its key: POST its public key, then wait for the "
                    "members to be fixed"
                )
            if member.masked is not None:
                raise AlreadyExists(f"session {session_id} has already uploaded its masked update")
            if secagg_round(s, job.id, member.round).fixed_at is None:
                raise FailedPrecondition(
                    f"the members of round {member.round} are not fixed yet: GET "
                    f"/v1/sessions/{session_id}/secagg/members until they are"
                )
            read_masked(data, Layout.from_json(member.layout))  # exactly 8 bytes per entry
            member.masked, member.masked_bytes = data, len(data)
            sess.state, sess.reason, sess.updated_at = "succeeded", "", utcnow()
            sess.examples = member.examples
            s.flush()
            advance_round(s, job, self.aggregate)  # type: ignore[attr-defined]  # Store's
            refresh_job(s, job)


def _open_secure_session(s: Session, session_id: str, device_id: str) -> tuple[JobSession, Job]:
    """The device's open session of a secure round in its job's current round."""
    sess = get_row(s, JobSession, session_id)
    if sess is None:
        raise NotFound(f"no session {session_id!r}")
    if sess.device_id != device_id:
        raise PermissionDenied("this session belongs to another device")
    job = s.get(Job, sess.job_id)
    assert job is not None  # foreign key
    if secure_spec(job) is None or sess.round is None:
        raise FailedPrecondition(f"job {job.id} does not use secure aggregation")
    if sess.state not in ACTIVE_SESSION_STATES:
        raise FailedPrecondition(
            f"session is {sess.state}, not running" + (f": {sess.reason}" if sess.reason else "")
        )
    current = current_round(s, job.id)
    if current is None or current.number != sess.round or current.state != "running":
        raise FailedPrecondition(f"round {sess.round} of job {job.id} is not running")
    return sess, job


def _check_agrees(other: SecAggMember, public_key: bytes, layout: Layout, config: dict[str, Any]) -> None:
    """Every member of a round sends the same layout and a compatible config, and its own key."""
    if other.public_key == public_key:
        raise InvalidArgument(f"this public key is already {other.device}'s: make a fresh key pair")
    if Layout.from_json(other.layout) != layout:
        raise InvalidArgument(f"the update's layout differs from {other.device}'s (same job, same tensors)")
    differs = disagreement(other.adapter_config, config)
    if differs is not None:
        raise InvalidArgument(f"adapter_config differs from {other.device}'s on {differs}")
