"""Open the registry database and bring its schema to the current Alembic head.

Every open runs pending migrations, so a user's registry survives package upgrades with no
manual step. SQLite (the default) lives at $TUNELOOP_HOME/tuneloop.db; `TUNELOOP_DB_URL`
selects any SQLAlchemy URL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from tuneloop.config.home import db_url
from tuneloop.errors import RegistryError

MIGRATIONS = Path(__file__).parent / "migrations"


def _alembic_config(connection):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration revision shipped with this package."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(None))
    return script.get_current_head() or ""


def migrate(engine: Engine) -> None:
    """Upgrade the schema to head if it is behind (a no-op on an up-to-date database)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with engine.begin() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        if current == head_revision():
            return
        command.upgrade(_alembic_config(conn), "head")


SQLITE_BUSY_TIMEOUT_S = 30
"""How long a SQLite writer waits for another process's write to finish before giving up."""


def shown_url(url: str) -> str:
    """The URL with any password masked, fit for an error message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "<unparsable URL>"


def database_error(err: BaseException, url: str, doing: str = "registry database") -> RegistryError:
    """One line for a database failure: the driver's own first line, never SQL or a traceback.

    SQLAlchemy's message spans lines (the statement, its parameters, a link); the user
    needs what went wrong and which database.
    """
    orig = getattr(err, "orig", None) if isinstance(err, DBAPIError) else None
    lines = str(orig if orig is not None else err).strip().splitlines()
    reason = lines[0].strip() if lines else type(err).__name__
    if isinstance(err, OperationalError) and "locked" in reason:
        reason += (
            f" (another process held it for over {SQLITE_BUSY_TIMEOUT_S} s; "
            "try again when it finishes)"
        )
    return RegistryError(f"{doing} {shown_url(url)}: {reason}")


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url)
    except (SQLAlchemyError, ImportError, ValueError) as err:
        raise database_error(err, url, "cannot open registry database") from None
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            cur.close()

    try:
        migrate(engine)
    except SQLAlchemyError as err:
        doing = "cannot open" if isinstance(err, OperationalError) else "cannot migrate"
        raise database_error(err, url, f"{doing} registry database") from None
    return engine


_ENGINE_LOCK = threading.RLock()


def get_engine(url: str | None = None) -> Engine:
    """The (cached) engine for `url` or the configured registry, migrated to head. One
    thread at a time: Alembic's migration context is process-global, and a server's
    background writer opens the registry while request threads may too."""
    with _ENGINE_LOCK:
        return _engine_for(url or db_url())


@contextmanager
def transaction(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error; database errors pass
    through as SQLAlchemy raised them, for callers that retry on a conflict."""
    factory = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error.

    Any database error (locked, gone, a constraint) becomes one `RegistryError` line, so
    the CLI never shows a driver traceback.
    """
    resolved = url or db_url()
    try:
        with transaction(resolved) as session:
            yield session
    except SQLAlchemyError as err:
        raise database_error(err, resolved) from None
