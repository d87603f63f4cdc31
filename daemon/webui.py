"""The pages a person opens on the daemon's HTTP server: a status page at `/` and a graph view at `/graph`.

Both are static files shipped in the package (`daemon/static/`, with cytoscape.js vendored under
`daemon/static/vendor/`: nothing is fetched from the internet at run time) whose scripts read JSON endpoints:

* `/status` (the supervisor's document) and `/status/history`: a ring buffer of each source's lag and applied
  count, sampled by `LagHistory` every `interval` seconds over the last `window` seconds (5 s over 15 min by
  default), for the page's sparklines.
* `/graph/data?id=V[&depth=1][&limit=200][&sink=NAME]`: vertex V's neighbourhood in a sink (default: the first
  configured), read with fixed statements whose values (the ids) travel as parameters, never spliced into the
  text; on FalkorDB they run as `GRAPH.RO_QUERY`, which the engine refuses to let write (`GraphSink.read`).
  At most `limit` edges (`truncated` says when more were there), breadth first up to `depth` hops.

The pages put data into the DOM with `textContent` only, and every answer carries a Content-Security-Policy that
allows scripts, styles and requests from the daemon itself and nothing else. The server binds to loopback
unless `daemon.http_address` says otherwise; `daemon.graph_view = false` turns the graph view off where the
port is reachable by people who should not read the replica.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from daemon.names import decode_falkordb_name, encode_falkordb_name

if TYPE_CHECKING:
    from daemon.cypher import Dialect
    from daemon.sinks.base import GraphSink

log = structlog.get_logger("daemon.webui")

STATIC_DIR = Path(__file__).parent / "static"
MAX_DEPTH = 3
MAX_LIMIT = 1000
DEFAULT_LIMIT = 200
GRAPH_QUERY_SECONDS = 15.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class LagHistory:
    """Each source's recent lag and applied count, one sample every `interval` seconds over `window` seconds."""

    def __init__(self, interval: float = 5.0, window: float = 900.0) -> None:
        self.interval, self.window = interval, window
        self._size = max(2, int(window / interval))
        self.samples: dict[str, deque[tuple[float, float, int, bool]]] = {}

    def sample(self, status: Mapping[str, Any], now: float | None = None) -> None:
        """Record one sample of every source in a `/status` document."""
        now = time.time() if now is None else now
        for source in status.get("sources", ()):
            ring = self.samples.setdefault(source["source"], deque(maxlen=self._size))
            ring.append(
                (round(now, 3), float(source.get("lag_seconds") or 0.0), int(source.get("changes_applied") or 0),
                 bool(source.get("caught_up")))
            )  # fmt: skip

    async def run(self, status: Callable[[], Mapping[str, Any]]) -> None:
        """Sample `status()` until cancelled; a failing status call is logged and sampled again later."""
        while True:
            try:
                self.sample(status())
            except Exception as exc:
                log.warning("cannot sample the status for the lag history", error=str(exc)[:300])
            await asyncio.sleep(self.interval)

    def document(self) -> dict[str, Any]:
        """The `/status/history` answer: per source, [unix time, lag seconds, changes applied, caught up]."""
        return {
            "interval_seconds": self.interval,
            "window_seconds": self.window,
            "sources": {name: [list(s) for s in ring] for name, ring in self.samples.items()},
        }


class GraphRequestError(Exception):
    """A `/graph/data` request that cannot be answered: the HTTP status and a message for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Neighbourhood:
    """Reads a vertex and the vertices within `depth` hops of it from one sink, read-only."""

    def __init__(self, sink: GraphSink) -> None:
        self.sink = sink
        d: Dialect = sink.dialect
        self._falkordb = d.name == "falkordb"
        ident = (lambda v: f"{v}.{d.id_key}") if self._falkordb else (lambda v: f"id({v})")
        self._centre = f"MATCH {d.node('c', '$id')} RETURN labels(c) AS labels, properties(c) AS props LIMIT 1"
        self._steps = {
            outgoing: f"UNWIND $ids AS i MATCH {d.node('a', 'i')}{arrow}(m) RETURN i AS near, {ident('e')} AS id, "
            f"type(e) AS type, properties(e) AS props, {ident('m')} AS far, labels(m) AS far_labels, "
            "properties(m) AS far_props LIMIT "
            for outgoing, arrow in ((True, "-[e]->"), (False, "<-[e]-"))
        }
        # What the engine reports that is not the data's: FalkorDB's base label and id property, Neptune's `~id`.
        self._hidden_labels = {d.base_label} if self._falkordb and d.base_label else set()
        self._hidden_key = encode_falkordb_name(d.id_property) if self._falkordb else "~id"

    async def read(self, vertex_id: str, depth: int = 1, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
        rows = await self.sink.read(self._centre, {"id": vertex_id})
        if not rows:
            raise GraphRequestError(404, f"no vertex with id {vertex_id!r} in sink {self.sink.name!r}")
        nodes: dict[Any, dict[str, Any]] = {vertex_id: self._node(vertex_id, rows[0]["labels"], rows[0]["props"], 0)}
        edges: dict[Any, dict[str, Any]] = {}
        frontier, truncated = [vertex_id], False
        for hop in range(1, depth + 1):
            found: list[Any] = []
            for outgoing, statement in self._steps.items():
                # Up to len(edges) of the rows are edges seen already (back towards the centre): ask for enough
                # rows to find one new edge more than the limit leaves room for, so that `truncated` says that
                # there was more, never that there might be.
                step = await self.sink.read(statement + str(limit + 1), {"ids": frontier})
                for row in step:
                    source, target = (row["near"], row["far"]) if outgoing else (row["far"], row["near"])
                    key = row["id"] if row["id"] is not None else (source, target, row["type"])
                    if key in edges:
                        continue
                    if len(edges) == limit:
                        truncated = True
                        break
                    edges[key] = self._edge(row, source, target)
                    if row["far"] not in nodes:
                        nodes[row["far"]] = self._node(row["far"], row["far_labels"], row["far_props"], hop)
                        found.append(row["far"])
            frontier = found
            if not frontier or truncated:
                break
        return {
            "sink": self.sink.name,
            "kind": self.sink.kind,
            "id": vertex_id,
            "depth": depth,
            "limit": limit,
            "truncated": truncated,
            "nodes": list(nodes.values()),
            "edges": list(edges.values()),
        }

    def _node(self, vertex_id: Any, labels: list[str] | None, props: Mapping[str, Any] | None, hop: int) -> dict:
        shown = [self._name(label) for label in labels or () if label not in self._hidden_labels]
        return {"id": vertex_id, "labels": shown, "properties": self._properties(props), "hop": hop}

    def _edge(self, row: Mapping[str, Any], source: Any, target: Any) -> dict[str, Any]:
        return {
            "id": row["id"],
            "type": self._name(row["type"]),
            "source": source,
            "target": target,
            "properties": self._properties(row["props"]),
        }

    def _properties(self, props: Mapping[str, Any] | None) -> dict[str, Any]:
        return {self._name(k): v for k, v in (props or {}).items() if k != self._hidden_key}

    def _name(self, name: str) -> str:
        return decode_falkordb_name(name) if self._falkordb else name


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise GraphRequestError(400, f"{name} must be a whole number from {low} to {high}, got {text!r}") from None
    if not low <= value <= high:
        raise GraphRequestError(400, f"{name} must be a whole number from {low} to {high}, got {value}")
    return value


def _json(document: Any, status: int = 200) -> web.Response:
    # OPT_NON_STR_KEYS, default=str: property values an engine returns that JSON has no type for are shown as text
    body = orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


class WebUI:
    """Registers the pages and their JSON endpoints on the daemon's aiohttp application."""

    def __init__(
        self,
        status: Callable[[], Mapping[str, Any]],
        sinks: Mapping[str, GraphSink],
        history: LagHistory | None = None,
        *,
        graph_view: bool = True,
    ) -> None:
        self._status, self._sinks, self._graph_view = status, sinks, graph_view
        self.history = history or LagHistory()
        self._sampler: asyncio.Task[None] | None = None

    def install(self, app: web.Application) -> None:
        app.router.add_get("/", self._page("index.html"))
        app.router.add_get("/graph", self._page("graph.html"))
        app.router.add_get("/graph/data", self._graph_data)
        app.router.add_get("/status/history", self._history)
        app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False, append_version=False)
        app.on_response_prepare.append(self._headers)

    def start(self) -> None:
        self._sampler = asyncio.create_task(self.history.run(self._status), name="lag-history")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)

    @staticmethod
    def _page(name: str) -> Callable[[web.Request], Any]:
        async def page(request: web.Request) -> web.FileResponse:
            return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})

        return page

    async def _history(self, request: web.Request) -> web.Response:
        return _json(self.history.document())

    async def _graph_data(self, request: web.Request) -> web.Response:
        try:
            if not self._graph_view:
                raise GraphRequestError(404, "the graph view is turned off here (daemon.graph_view = false)")
            vertex_id = request.query.get("id", "")
            if not vertex_id:
                raise GraphRequestError(400, "give a vertex id: /graph/data?id=VERTEX_ID")
            if not self._sinks:
                raise GraphRequestError(404, "this daemon has no sink")
            name = request.query.get("sink") or next(iter(self._sinks))
            sink = self._sinks.get(name)
            if getattr(sink, "rdf", False):
                raise GraphRequestError(400, f"sink {name!r} is an RDF store: query it with SPARQL (docs/rdf.md)")
            if sink is None:
                raise GraphRequestError(404, f"no sink named {name!r}; sinks: {', '.join(self._sinks)}")
            depth = _int_param(request, "depth", 1, 1, MAX_DEPTH)
            limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            try:
                document = await asyncio.wait_for(
                    Neighbourhood(sink).read(vertex_id, depth, limit), timeout=GRAPH_QUERY_SECONDS
                )
            except GraphRequestError:
                raise
            except TimeoutError:
                raise GraphRequestError(504, f"sink {name!r} did not answer within {GRAPH_QUERY_SECONDS:g} s") from None
            except ConnectionError as exc:
                raise GraphRequestError(503, f"sink {name!r} is not reachable now: {str(exc)[:300]}") from None
            except Exception as exc:
                log.warning("graph view query failed", sink=name, error=str(exc)[:300])
                raise GraphRequestError(502, f"sink {name!r}: {type(exc).__name__}: {str(exc)[:300]}") from None
        except GraphRequestError as exc:
            return _json({"error": str(exc), "sinks": list(self._sinks)}, status=exc.status)
        return _json({**document, "sinks": list(self._sinks)})
