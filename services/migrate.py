"""Apply the control plane's Alembic migrations (at start, and by `splitft control migrate`)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from splitft_control.settings import ControlSettings
from splitft_control.store import Store, make_engine

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for `url` over the packaged migrations (no alembic.ini to ship or find)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest schema; a no-op when it is already there."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    logger.info("database schema is up to date (%s)", engine.url.render_as_string(hide_password=True))


def migrated_store(settings: ControlSettings) -> Store:
    """The store the settings name, its data dir created and its schema brought up to date."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    upgrade(engine)
    return Store(engine)
