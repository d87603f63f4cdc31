"""A supervisor running in this process on a thread of its own, for tests and tools that talk to its HTTP server
(tests/test_webui.py, tests/stand/screenshots.py): its status page samples lag every `history_interval`
seconds instead of every 5 s, so that sparklines fill within a test."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from daemon.config import load_config
from daemon.supervisor import Supervisor
from daemon.webui import LagHistory
from tests.stand.harness import wait_for


class LiveDaemon:
    """`run` (not `--exit-when-idle`) of a config whose `http_address` is set; `stop` drains it."""

    def __init__(self, config: Path, *, history_interval: float = 0.2, history_window: float = 120.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.supervisor = Supervisor(load_config(config))
        assert self.supervisor.http is not None, "the config must set daemon.http_address"
        self.supervisor.http.webui.history = LagHistory(history_interval, history_window)
        self.code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-daemon", daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.loop.run_until_complete(self.supervisor.run())
        except BaseException as exc:
            self.error = exc
        finally:
            self.loop.close()

    def start(self) -> LiveDaemon:
        self._thread.start()
        wait_for(lambda: self.error is not None or self.supervisor.http.port != 0, 30, "the HTTP server")
        if self.error is not None:
            raise self.error
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.supervisor.http.port}"

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of a GET (an HTTP error status is returned, not raised)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get_json(self, path: str) -> tuple[int, Any]:
        code, _, body = self.get(path)
        return code, orjson.loads(body)

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the daemon's event loop (where its sinks live) and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def wait_caught_up(self, timeout: float = 60) -> dict[str, Any]:
        def caught_up() -> dict[str, Any] | None:
            code, status = self.get_json("/status")
            return status if code == 200 and all(s["caught_up"] for s in status["sources"]) else None

        return wait_for(caught_up, timeout, "every source caught up", interval=0.1)

    def stop(self) -> int | None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.supervisor.request_drain)
            self._thread.join(60)
        if self.error is not None:
            raise self.error
        return self.code
