"""The embedded default: servers under the data dir that keep their data between runs."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from dentalpin.platform._embedded import POSTGRESQL, STATE_FILE, VALKEY, services
from dentalpin.platform._settings import Settings, async_url

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="embedded servers are POSIX-only")


def _running(pid: int) -> bool:
    # Daemons are reparented to init; a slow-reaping init leaves a zombie for a while.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pids(data_dir: Path) -> dict[str, int]:
    state = json.loads((data_dir / STATE_FILE).read_text())
    return {name: service["pid"] for name, service in state["services"].items()}


async def _sql(database_url: str, *statements: str) -> list[object]:
    engine = create_async_engine(async_url(database_url))
    try:
        async with engine.begin() as conn:
            results = [await conn.execute(text(sql)) for sql in statements]
            return list(results[-1].scalars()) if results[-1].returns_rows else []
    finally:
        await engine.dispose()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under tmp_path: as root PostgreSQL runs as another user that must
    # traverse the parents, and pytest makes its temp root private again whenever
    # an xdist worker starts.
    with tempfile.TemporaryDirectory(prefix="dentalpin-embedded-") as tmp:
        yield Path(tmp) / "data"


async def test_embedded_services_persist_and_stop(data_dir: Path) -> None:
    settings = Settings(database_url=None, redis_url=None, data_dir=data_dir)

    with services(settings) as urls:
        assert urls.embedded == (POSTGRESQL, VALKEY)
        assert urls.redis_url.startswith("redis://127.0.0.1:")
        first_pids = _pids(data_dir)
        assert all(_running(pid) for pid in first_pids.values())

        assert await _sql(urls.database_url, "SELECT 41 + 1") == [42]
        await _sql(
            urls.database_url,
            "CREATE TABLE kept (note text)",
            "INSERT INTO kept VALUES ('still here')",
        )
        client = redis.Redis.from_url(urls.redis_url)
        client.set("kept", "still here")
        assert client.get("kept") == b"still here"
        client.close()

    assert not (data_dir / STATE_FILE).exists()
    assert not any(_running(pid) for pid in first_pids.values())
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(urls.redis_url, socket_connect_timeout=1).ping()

    with services(settings) as again:
        assert again.embedded == (POSTGRESQL, VALKEY)
        assert await _sql(again.database_url, "SELECT note FROM kept") == ["still here"]
        client = redis.Redis.from_url(again.redis_url)
        assert client.get("kept") == b"still here"
        client.close()
        second_pids = _pids(data_dir)

    assert not (data_dir / STATE_FILE).exists()
    assert not any(_running(pid) for pid in second_pids.values())
