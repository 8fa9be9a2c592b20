"""Test fixtures: real PostgreSQL and Redis, a database of our own per test session.

When DATABASE_URL / REDIS_URL are not set, embedded servers are started for the
whole run (once, in the xdist controller) and their URLs are handed to workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from dentalpin.platform._nudge import FAILED_DELIVERY
from dentalpin.platform._runtime import Platform
from dentalpin.platform._settings import Settings
from dentalpin.tenants import migrate_platform, sync_catalogue

_services: contextlib.ExitStack | None = None


class _DeliveryFailures(logging.Handler):
    """Collects the in-process relay's delivery failures, which it only logs (a publish must
    not fail because its delivery did), so a test cannot pass while its deliveries fail."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(FAILED_DELIVERY):
            self.failures.append(message)


@pytest.fixture(autouse=True)
def _no_hidden_delivery_failures(request: pytest.FixtureRequest) -> Iterator[None]:
    handler = _DeliveryFailures()
    logger = logging.getLogger("dentalpin.platform._nudge")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.failures and request.node.get_closest_marker("delivery_failures_expected") is None:
        pytest.fail(
            "in-process event deliveries failed during the test (mark it "
            "`delivery_failures_expected` if that is the point):\n" + "\n".join(handler.failures)
        )


def pytest_configure(config: pytest.Config) -> None:
    global _services
    if hasattr(config, "workerinput"):
        return  # xdist worker: the controller already exported the URLs
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        return
    from dentalpin.platform._embedded import services

    data_dir = Path(os.environ.get("DENTALPIN_TEST_DATA_DIR", ".dentalpin/test")).resolve()
    _services = contextlib.ExitStack()
    urls = _services.enter_context(services(Settings(data_dir=data_dir)))
    os.environ["DATABASE_URL"] = urls.database_url
    os.environ["REDIS_URL"] = urls.redis_url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _services is not None:
        _services.close()


def _server_dsn(database: str = "postgres") -> str:
    url = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


class TestDatabases:
    """Creates databases (and tenant-role prefixes) for tests, and removes them afterwards."""

    def __init__(self) -> None:
        self.created: list[tuple[str, str]] = []

    async def create(self) -> tuple[str, str]:
        token = secrets.token_hex(4)
        name, prefix = f"dptest_{token}", f"dpt{token}_"
        conn = await asyncpg.connect(_server_dsn())
        try:
            await conn.execute(f'create database "{name}"')
        finally:
            await conn.close()
        self.created.append((name, prefix))
        return _server_dsn(name), prefix

    async def drop_all(self) -> None:
        conn = await asyncpg.connect(_server_dsn())
        try:
            for name, prefix in self.created:
                await conn.execute(f'drop database if exists "{name}" with (force)')
                roles = await conn.fetch(
                    "select rolname from pg_roles where rolname like $1", prefix + "%"
                )
                for role in roles:
                    await conn.execute(f'drop role if exists "{role["rolname"]}"')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def databases() -> AsyncIterator[TestDatabases]:
    dbs = TestDatabases()
    yield dbs
    await dbs.drop_all()


async def make_platform(dbs: TestDatabases, data_dir: Path) -> Platform:
    url, prefix = await dbs.create()
    settings = Settings(
        database_url=url,
        redis_url=os.environ.get("REDIS_URL"),
        data_dir=data_dir,
        role_prefix=prefix,
        environment="test",
        lifecycle_lock_wait_s=5,
        ddl_lock_timeout_ms=2000,
    )
    platform = Platform.create(settings)
    await migrate_platform(platform)
    await sync_catalogue(platform)
    return platform


@pytest.fixture(scope="session")
async def platform(
    databases: TestDatabases, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    """A migrated platform database shared by the tests of one worker (use unique slugs)."""
    platform = await make_platform(databases, tmp_path_factory.mktemp("data"))
    yield platform
    await platform.close()


@pytest.fixture
async def fresh_platform(databases: TestDatabases, tmp_path: Path) -> AsyncIterator[Platform]:
    """A platform database of its own, for tests that look at every tenant."""
    platform = await make_platform(databases, tmp_path)
    yield platform
    await platform.close()


def unique_slug(prefix: str = "clinic") -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def slug() -> str:
    return unique_slug()
