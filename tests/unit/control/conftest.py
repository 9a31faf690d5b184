"""The store fixtures of the control-plane units: one migrated database per backend and module
(SQLite, and PostgreSQL where it answers), emptied before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from splitft_control import migrate
from splitft_control.store import Store, make_engine
from tests.support.control_fixtures import STORE_TABLES, postgres_database, postgres_unreachable_reason


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A migrated database per backend, shared by the module (migrating per test would dominate)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("store") / "control.db"
        yield from _migrated(f"sqlite:///{path}")
        return
    reason = postgres_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    with postgres_database() as url:
        yield from _migrated(url)


def _migrated(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()  # PostgreSQL refuses to drop a database with open connections


@pytest.fixture
def store(engine: Engine) -> Store:
    """The shared database, emptied: each test starts from nothing."""
    with engine.begin() as conn:
        for table in STORE_TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
    return Store(engine)
