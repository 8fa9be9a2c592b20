"""Database access: one engine, platform transactions and tenant-scoped transactions.

Tenant scoping has exactly one mechanism: when a tenant session begins a
transaction, one statement sets the transaction-local search path
(`<tenant schema>, extensions`) and role (the tenant's own database role). Both
revert at commit or rollback, so nothing survives on a pooled connection, and
the connection's default search path is empty, so an unqualified name outside a
tenant transaction fails instead of falling through to a shared schema.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util import await_

from ._settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)

SCHEMA_NAME = re.compile(r"^t_[a-z0-9]{6,24}$")
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]{1,62}$")
EXTENSIONS_SCHEMA = "extensions"
_ENTER_TENANT = text(
    "select set_config('search_path', :search_path, true), set_config('role', :role, true)"
)


@dataclass(frozen=True)
class TenantScope:
    """The two names that confine a transaction to one tenant."""

    schema: str
    role: str

    def __post_init__(self) -> None:
        if not SCHEMA_NAME.fullmatch(self.schema):
            raise ValueError(f"'{self.schema}' is not a platform-generated tenant schema name")
        if not ROLE_NAME.fullmatch(self.role):
            raise ValueError(f"'{self.role}' is not a tenant role name")

    @property
    def search_path(self) -> str:
        return f'"{self.schema}", {EXTENSIONS_SCHEMA}'


def enter_tenant(connection: Connection, scope: TenantScope) -> None:
    """Confine the connection's current transaction to `scope` (the one place it is done)."""
    connection.execute(_ENTER_TENANT, {"search_path": scope.search_path, "role": scope.role})


def search_path_sql(schema: str) -> str:
    """`TenantScope.search_path` as an SQL expression, for a statement that reads the schema
    name (the SQL expression `schema`) and sets the search path in the same round trip (the
    spare claim); the caller checks what it set against `TenantScope.search_path`."""
    return f"""('"' || {schema} || '", {EXTENSIONS_SCHEMA}')"""


def enter_tenant_schema(connection: Connection, scope: TenantScope) -> None:
    """Search path only, for the platform's own DDL (migrations run as the schema owner)."""
    connection.execute(
        text("select set_config('search_path', :search_path, true)"),
        {"search_path": scope.search_path},
    )


class TenantSession(Session):
    """A session whose every transaction is confined to `info['tenant_scope']`."""


@event.listens_for(TenantSession, "after_begin")
def _scope_transaction(session: Session, tx: SessionTransaction, connection: Connection) -> None:
    if tx.nested:
        return  # a savepoint inside a transaction this session has already scoped
    scope = session.info.get("tenant_scope")
    if not isinstance(scope, TenantScope):
        raise RuntimeError("a tenant session was opened without a tenant scope")
    enter_tenant(connection, scope)


@event.listens_for(TenantSession, "after_commit")
def _nudge_after_commit(session: Session) -> None:
    published = session.info.pop("published", None)
    database = session.info.get("database")
    if published and isinstance(database, Database):
        database.published(*published)


@event.listens_for(TenantSession, "after_soft_rollback")
def _forget_after_rollback(session: Session, _previous: SessionTransaction) -> None:
    session.info.pop("published", None)


def is_stale_statement(exc: BaseException) -> bool:
    """True when asyncpg refused a cached statement because another process ran DDL."""
    if not isinstance(exc, DBAPIError):
        return False
    cause = getattr(exc.orig, "__cause__", None) or exc.orig
    return isinstance(cause, asyncpg.exceptions.InvalidCachedStatementError) or (
        "cache lookup failed" in str(exc.orig)
    )


_USED_AT = "dentalpin_used_at"


def _check_liveness(engine: AsyncEngine, bypass_s: float) -> None:
    """Ping a pooled connection before lending it, unless it came back within `bypass_s`
    (HikariCP's "alive bypass window"): a connection in use a moment ago is alive, and
    under load a ping on every checkout costs as much as the work (SQLAlchemy's pre-ping
    on asyncpg is three round trips). A dead connection found by the ping is replaced,
    and every connection older than it too (a restarted server killed them all); one that
    died inside the window fails its first statement, which invalidates the pool the same
    way."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info[_USED_AT] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _lend(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        used = record.info.get(_USED_AT)
        if used is None or time.monotonic() - used < bypass_s:
            return  # just connected, or returned moments ago
        try:
            await_(dbapi_connection.driver_connection.fetchrow(";"))
        except Exception as exc:  # closed, reset, or left mid-protocol by the server: not lent
            raise InvalidatePoolError(f"pooled connection found dead: {exc!r}") from exc


class Database:
    """The process's connection pool and the ways to borrow from it."""

    def __init__(
        self, url: URL, settings: Settings, *, server_settings: dict[str, str] | None = None
    ):
        url = url.update_query_dict(
            {"prepared_statement_cache_size": str(settings.statement_cache_size)}
        )
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_recycle=settings.connection_max_lifetime_s,
            # The most recently returned connection is lent first: the busy few keep their
            # prepared statements and plans warm, the rest idle until they are recycled.
            pool_use_lifo=True,
            connect_args={
                # asyncpg's own cache, for the statements the event relay sends it directly
                # (SQLAlchemy's, above, holds everything else).
                "statement_cache_size": settings.statement_cache_size,
                "server_settings": {
                    "search_path": "",
                    "application_name": "dentalpin",
                    **(server_settings or {}),
                },
            },
        )
        _check_liveness(self.engine, settings.db_alive_bypass_s)
        self.on_published: Callable[[set[TenantScope]], None] | None = None
        """Called after a tenant transaction that published events commits (the relay nudge)."""
        self._platform_sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._tenant_sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=TenantSession
        )

    def published(self, *scopes: TenantScope | None) -> None:
        """Nudge the relay for events these tenants' committed transactions published
        (None: nothing was). Never raises: a dead broker must not fail a request whose
        data is committed."""
        tenants = {scope for scope in scopes if scope is not None}
        if self.on_published is None or not tenants:
            return
        try:
            self.on_published(tenants)
        except Exception:  # pragma: no cover - defensive; the sweep delivers anyway
            log.exception("nudging the event relay failed")

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.sqlalchemy_url(), settings)

    @asynccontextmanager
    async def platform(self) -> AsyncIterator[AsyncSession]:
        """A transaction on platform tables (always schema-qualified)."""
        async with self._platform_sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def tenant(self, scope: TenantScope) -> AsyncIterator[AsyncSession]:
        """A transaction confined to one tenant's schema and role."""
        session = self._tenant_sessions(info=self._tenant_info(scope))
        async with session, session.begin():
            yield session

    def tenant_session(self, scope: TenantScope) -> AsyncSession:
        """An unstarted tenant session, for callers that manage the transaction."""
        return self._tenant_sessions(info=self._tenant_info(scope))

    def session_on(self, connection: AsyncConnection, scope: TenantScope | None) -> AsyncSession:
        """A session joined to an open connection's transaction (lifecycle hooks)."""
        factory = self._tenant_sessions if scope else self._platform_sessions
        info: dict[str, Any] = self._tenant_info(scope) if scope else {}
        return factory(bind=connection, info=info, join_transaction_mode="create_savepoint")

    def _tenant_info(self, scope: TenantScope) -> dict[str, Any]:
        return {"tenant_scope": scope, "database": self}

    async def run_in_tenant(
        self, scope: TenantScope, work: Callable[[AsyncSession], Awaitable[T]]
    ) -> T:
        """Run one unit of work for a tenant, retried once if a cached statement went stale.

        Another process's DDL (a module upgrade) can invalidate asyncpg's prepared
        statements; the failed transaction is gone, so the whole unit is re-run.
        """
        try:
            async with self.tenant(scope) as session:
                return await work(session)
        except DBAPIError as exc:
            if not is_stale_statement(exc):
                raise
        async with self.tenant(scope) as session:
            return await work(session)

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose every statement commits at once (job records, DDL probes)."""
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
