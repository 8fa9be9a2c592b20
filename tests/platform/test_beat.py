"""Exactly one beat leads (`_beat`): the lock itself against real PostgreSQL, then two real
`dentalpin beat` processes sending to a real Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from dentalpin.platform._beat import BeatLeadership
from dentalpin.platform._relay import pipeline_stats
from dentalpin.platform._runtime import Platform
from tests.platform.processes import Process, terminate_backends

SWEEP_S = 0.2


def _leadership(platform: Platform, on_lost: Callable[[], None]) -> BeatLeadership:
    settings = platform.settings.model_copy(
        update={"beat_standby_retry_s": 0.1, "beat_lock_check_s": 0.2}
    )
    return BeatLeadership(settings, on_lost=on_lost)


def _never() -> None:
    raise AssertionError("the lock was lost")


async def _wait(check: Callable[[], bool], what: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_second_beat_stands_by_naming_the_leader_and_takes_over_when_it_ends(
    platform: Platform, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="dentalpin.platform._beat")
    leader, standby = _leadership(platform, _never), _leadership(platform, _never)
    leader.acquire()
    waiting = threading.Thread(target=standby.acquire)
    waiting.start()
    try:
        await _wait(lambda: "standing by" in caplog.text, "the standby to say so")
        await asyncio.sleep(0.5)  # several tries of the standby
        assert waiting.is_alive(), "two beats lead"
        assert f"another beat leads: {leader.name}" in caplog.text
        beat = (await pipeline_stats(platform))["beat"]
        assert beat["leader"].startswith(f"{leader.name} (backend pid ")
        assert beat["standbys"] == 1
    finally:
        leader.release()
    await _wait(lambda: not waiting.is_alive(), "the standby to lead", within=5)
    assert f"beat: leading ({standby.name}" in caplog.text
    standby.release()
    assert (await pipeline_stats(platform))["beat"] == {"leader": None, "standbys": 0}


async def test_a_leader_whose_lock_connection_is_cut_stops(platform: Platform):
    lost = threading.Event()
    leader = _leadership(platform, lost.set)
    leader.acquire()
    try:
        assert await terminate_backends(platform, leader.name) == 1
        await _wait(lost.is_set, "the leader to give up")
    finally:
        leader.release()
    # The lock was released with the connection: another beat leads at once.
    follower = _leadership(platform, _never)
    await asyncio.wait_for(asyncio.to_thread(follower.acquire), 5)
    follower.release()


def _beat(platform: Platform, prefix: str, workdir: Path) -> Process:
    env = {
        **os.environ,
        "DATABASE_URL": platform.settings.database_url or "",
        "REDIS_URL": platform.settings.redis_url or "",
        "DENTALPIN_ROLE_PREFIX": platform.settings.role_prefix,
        "DENTALPIN_DATA_DIR": str(workdir),
        "DENTALPIN_ENVIRONMENT": "test",
        "DENTALPIN_CELERY_KEY_PREFIX": prefix,
        "DENTALPIN_EVENTS_SWEEP_EVERY_S": str(SWEEP_S),
        "DENTALPIN_BEAT_STANDBY_RETRY_S": "0.2",
        "DENTALPIN_BEAT_LOCK_CHECK_S": "0.5",
    }
    workdir.mkdir()
    beat = Process("beat", [sys.executable, "-m", "dentalpin", "beat"], env, workdir)
    beat.spawn()
    return beat


async def test_of_two_beat_processes_one_schedules_and_the_other_takes_over_when_it_dies(
    fresh_platform: Platform, tmp_path: Path
):
    platform = fresh_platform
    prefix = f"dpbeat-{secrets.token_hex(4)}:"
    client = redis.Redis.from_url(platform.settings.redis_url or "redis://127.0.0.1:6379/0")
    queue = f"{prefix}periodic"
    first = _beat(platform, prefix, tmp_path / "a")
    second: Process | None = None
    try:
        await _wait(lambda: "beat: leading" in first.output(), "the first beat to lead", 60)
        second = _beat(platform, prefix, tmp_path / "b")
        standing = f"another beat leads: dentalpin-beat {os.uname().nodename}"
        await _wait(lambda: standing in second.output(), "the second beat to stand by", 60)
        assert f"pid {first.proc.pid}" in second.output()

        # One beat's worth of sweeps, not two.
        client.delete(queue)
        window = 3.0
        await asyncio.sleep(window)
        sent = client.llen(queue)
        assert window / SWEEP_S * 0.5 <= sent <= window / SWEEP_S * 1.4, sent

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        await _wait(lambda: "beat: leading" in second.output(), "the second beat to lead", 30)
        client.delete(queue)
        await asyncio.sleep(1.0)
        assert client.llen(queue) >= 2, "the new leader schedules"
        assert second.proc.poll() is None
    finally:
        first.stop()
        if second is not None:
            second.stop()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
