"""systemd's service notification protocol (`sd_notify`), for `Type=notify` units; the supervisor's voice to
the service manager (see docs/operations.md).

* `READY=1` once the HTTP server listens and the pipelines are started (not when every source is caught up: a
  target that is down must not fail the unit's start, it shows on `/readyz` instead);
* `WATCHDOG=1` every `WATCHDOG_USEC / 2`, sent by a task on the event loop, so a loop that is stuck (a blocking
  call, a busy loop) stops the pings and systemd restarts the process (`WatchdogSec=`, `Restart=on-failure`);
* `STOPPING=1` (with `EXTEND_TIMEOUT_USEC` covering the drain grace period) when a drain begins, after
  readiness has turned false; `STATUS=...` for the one-line state `systemctl status` shows.

Messages are datagrams on the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or an abstract name written
with a leading `@`). Without `$NOTIFY_SOCKET` (not under systemd: a container, a terminal, a test) every call is
a no-op. Like `sd_notify(unset_environment=1)`, the variables are removed from the environment once read, so
child processes (the embedded FalkorDB engine) do not inherit them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

import structlog

log = structlog.get_logger("daemon.sdnotify")

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes | None:
    """The `AF_UNIX` address a `$NOTIFY_SOCKET` value names: a filesystem path, or an abstract name (`@name`,
    returned as bytes starting with NUL). None for values this protocol does not use (empty, relative paths,
    and `vsock:` addresses, which are for virtual machines)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between `WATCHDOG=1` pings: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises. None
    when no watchdog is asked for, or when `$WATCHDOG_PID` names another process."""
    raw = environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


class SystemdNotifier:
    """Sends notifications to the service manager; every method is safe (a no-op) when not under systemd.

    Construct it once at start-up: it reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` from
    `environ` (default `os.environ`) and, when `unset_environment` is true, removes them from it.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None, *, unset_environment: bool = True) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(raw)
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET is not a path or an abstract socket name; not notifying", notify_socket=raw)
        self.watchdog_interval = watchdog_interval(env) if self.address is not None else None
        if unset_environment:
            for key in _ENV_KEYS:
                env.pop(key, None)
        self._socket: socket.socket | None = None
        self._failed = False
        self.last_status: str | None = None

    @property
    def enabled(self) -> bool:
        """True when there is a service manager to notify."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (`KEY=value` lines) as one datagram; True when it was sent."""
        if self.address is None or not fields:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:  # log once: a missing listener must not flood the log every watchdog period
                log.warning("cannot notify the service manager", error=str(exc), address=repr(self.address))
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (`READY=1`), with an optional status line."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
            self.last_status = status
        return self.notify(*fields)

    def stopping(self, status: str | None = None, *, extend_timeout_seconds: float | None = None) -> bool:
        """Shutdown has begun (`STOPPING=1`); `extend_timeout_seconds` asks for that much more time to stop."""
        fields = ["STOPPING=1"]
        if extend_timeout_seconds is not None:
            fields.append(f"EXTEND_TIMEOUT_USEC={round(extend_timeout_seconds * 1_000_000)}")
        if status is not None:
            fields.append(_status_field(status))
            self.last_status = status
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        """Update the status line (`STATUS=`), only when it changed."""
        if text == self.last_status:
            return False
        self.last_status = text
        return self.notify(_status_field(text))

    def watchdog(self) -> bool:
        """One keep-alive ping (`WATCHDOG=1`)."""
        return self.notify("WATCHDOG=1")

    async def run_watchdog(
        self,
        status: Callable[[], str] | None = None,
        *,
        on_lag: Callable[[float], None] | None = None,
        interval: float | None = None,
    ) -> None:
        """Ping the watchdog from the event loop until cancelled.

        Each tick sleeps `interval` (default: the watchdog interval, at most 1 s), pings when a watchdog is
        asked for, updates the status line from `status()`, and reports through `on_lag` how much later than
        asked the loop woke up: the event loop's responsiveness. Runs without a service manager too, for
        `on_lag`.
        """
        period = interval or min(1.0, self.watchdog_interval or 1.0)
        if self.watchdog_interval is not None:
            self.watchdog()
        while True:
            asked = time.monotonic()
            await asyncio.sleep(period)
            lag = max(0.0, time.monotonic() - asked - period)
            if self.watchdog_interval is not None:
                self.watchdog()
            if on_lag is not None:
                on_lag(lag)
            if status is not None:
                self.status(status())

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status_field(text: str) -> str:
    """`STATUS=` with the text on one line (a newline would start a new field)."""
    return "STATUS=" + " ".join(text.split())
