"""The control plane's store: every read and write of its state, over SQLAlchemy (SQLite or PostgreSQL).

One `Store` class, assembled from one mixin per concern (API keys, edges, devices, jobs, the device
side of sessions); the same test suite runs it against both databases (tests/unit/control/test_store.py).
Methods take keyword-only arguments and return plain ORM rows detached from their session, so
routes never hold a database session across awaits.
"""

from __future__ import annotations

from sqlalchemy import Engine

from splitft_control.store.base import (
    ACTIVE_SESSION_STATES,
    FINAL_JOB_STATES,
    get_row,
    hash_secret,
    make_engine,
    new_id,
    new_secret,
    refresh_job,
    sessions_of,
)
from splitft_control.store.devices import DeviceStore
from splitft_control.store.edges import EdgeStore
from splitft_control.store.expiry import ExpiryStore
from splitft_control.store.jobs import JobStore
from splitft_control.store.keys import ApiKeyStore
from splitft_control.store.plans import PlanStore
from splitft_control.store.resume import ResumeStore
from splitft_control.store.rounds import Aggregate, RoundStore
from splitft_control.store.secagg import SecAggStore
from splitft_control.store.sessions import DeviceSessionStore

__all__ = [
    "ACTIVE_SESSION_STATES",
    "FINAL_JOB_STATES",
    "Store",
    "get_row",
    "hash_secret",
    "make_engine",
    "new_id",
    "new_secret",
    "refresh_job",
    "sessions_of",
]


class Store(
    ApiKeyStore,
    EdgeStore,
    DeviceStore,
    JobStore,
    ResumeStore,
    ExpiryStore,
    DeviceSessionStore,
    RoundStore,
    SecAggStore,
    PlanStore,
):
    """Every read and write of the control plane's state, on one engine. `aggregate` turns a
    federated round's uploads into its global adapter (default: `splitft_control.aggregation`)."""

    def __init__(self, engine: Engine, aggregate: Aggregate | None = None) -> None:
        super().__init__(engine)
        if aggregate is None:
            from splitft_control.aggregation import aggregate_archives

            aggregate = aggregate_archives
        self.aggregate = aggregate
