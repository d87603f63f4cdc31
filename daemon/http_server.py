"""The daemon's HTTP server: /metrics, /healthz, /readyz, /status, and the pages of `daemon.webui` (the status page
at / and the graph view at /graph).

Its own module so that aiohttp's server is imported only when `daemon.http_address` is set (or by
`bootstrap --metrics-address`): its callers import it there, and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from daemon.webui import LagHistory, WebUI

if TYPE_CHECKING:
    from daemon.sinks.base import GraphSink


class HttpServer:
    """aiohttp server for the metrics registry, liveness, readiness, a JSON status document, and the status page
    and graph view (`daemon.webui`; the graph view reads `sinks`)."""

    def __init__(
        self,
        address: str,
        ready: Callable[[], tuple[bool, list[str]]],
        status: Callable[[], dict[str, Any]],
        registry: CollectorRegistry,
        sinks: Mapping[str, GraphSink] | None = None,
        graph_view: bool = True,
        history: LagHistory | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self._ready, self._status, self._registry = ready, status, registry
        self.webui = WebUI(status, sinks if sinks is not None else {}, history, graph_view=graph_view)
        self._runner: web.AppRunner | None = None
        self.started = time.time()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status_handler)
        self.webui.install(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets  # the real port when 0 was asked for
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self.webui.start()

    async def stop(self) -> None:
        await self.webui.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self._registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "uptime_seconds": round(time.time() - self.started, 3)})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reasons = self._ready()
        return web.json_response({"ready": ready, "reasons": reasons}, status=200 if ready else 503)

    async def _status_handler(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(self._status(), option=orjson.OPT_INDENT_2), content_type="application/json"
        )
