"""Embedded Oxigraph sink (`kind = "oxigraph"`), the RDF default: a pyoxigraph store (RocksDB) on disk under the
data directory, written in-process, like the embedded FalkorDB for property graphs.

It takes the `INSERT DATA` / `DELETE DATA` batches of `daemon.rdf.RdfPlanner` through `PlanApplier` (retries,
bisection, dead letters): an insert batch is one `Store.extend` (atomic), a delete batch one `DELETE DATA` update
(one transaction); both are idempotent, so a replay after a crash converges. A call returns once RocksDB wrote
the change to its write-ahead log, so a killed daemon (SIGKILL, OOM) loses nothing it checkpointed; the log is
not fsynced per batch (pyoxigraph has no switch for it, and `Store.flush`, which writes a new table file, costs
about 50 ms a call), so an operating-system crash or power loss can lose the last writes after their checkpoint:
bootstrap again after one (docs/rdf.md). Store calls block, so they run in worker threads (the store is safe to
share between threads).

`query` answers SPARQL (SELECT rows of terms in N-Triples form, ASK as `{"ask": bool}`, CONSTRUCT/DESCRIBE as
subject/predicate/object rows): what `graph-replicator query` prints for such a sink. RocksDB lets one process
open the store, so `query` works on a store no daemon has open (the CLI says so otherwise).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pyoxigraph import QueryBoolean, QuerySolutions, Store

from daemon.rdf import DELETE, INSERT, sparql_data_block
from daemon.sinks.base import REJECTED, RETRY, ErrorClass, GraphSink

__all__ = ["OxigraphSink", "RdfSink", "solution_rows"]


class RdfSink(GraphSink):
    """A sink of quads (`daemon.rdf`): its `execute` takes `INSERT DATA` / `DELETE DATA` and rows of `{"quad"}`."""

    rdf = True
    dialect = None  # type: ignore[assignment]  # no Cypher dialect: the RDF planner plans for it

    async def count_quads(self) -> int:
        rows = await self.query("SELECT (COUNT(*) AS ?n) WHERE { { ?s ?p ?o } UNION { GRAPH ?g { ?s ?p ?o } } }")
        return int(_literal_value(rows[0]["n"]))


class OxigraphSink(RdfSink):
    kind = "oxigraph"

    def __init__(self, name: str, *, path: Path, timeout_seconds: float = 60.0, concurrency: int = 4) -> None:
        self.name = name
        self.path = path
        self._store: Store | None = None
        self._opening = asyncio.Lock()  # sources sharing the sink start it concurrently; RocksDB opens once

    async def start(self) -> None:
        async with self._opening:
            if self._store is None:
                self.path.mkdir(parents=True, exist_ok=True)
                self._store = await asyncio.to_thread(Store, str(self.path))

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            await asyncio.to_thread(store.flush)
        del store  # the last reference: RocksDB releases its lock on the directory

    def _opened(self) -> Store:
        if self._store is None:
            raise ConnectionError(f"sink {self.name!r} is not started")
        return self._store

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        store = self._opened()
        quads = [row["quad"] for row in rows]
        if statement == INSERT:
            await asyncio.to_thread(_insert, store, quads)
        elif statement == DELETE:
            await asyncio.to_thread(_delete, store, quads)
        else:
            raise ValueError(f"not an RDF batch statement: {statement!r}")
        return []

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        store = self._opened()
        return await asyncio.to_thread(lambda: solution_rows(store.query(statement)))

    def classify(self, exc: BaseException) -> ErrorClass:
        if isinstance(exc, SyntaxError | ValueError | TypeError):
            return REJECTED  # the statement text is ours: a refusal is about the data in it
        if isinstance(exc, OSError):
            return RETRY["resource"]  # disk full, I/O error: not ready, retried
        return ErrorClass(False, "error")


def _insert(store: Store, quads: list[Any]) -> None:
    store.extend(quads)


def _delete(store: Store, quads: list[Any]) -> None:
    # the text is built in the worker thread too, off the event loop; one update is one transaction, and at about
    # 15 us a quad it beats `Store.remove` a quad at a time (about 40 us, a transaction each)
    store.update(f"DELETE DATA {sparql_data_block(quads)}")


def solution_rows(result: Any) -> list[dict[str, Any]]:
    """A pyoxigraph query result as rows: terms in N-Triples form (None when unbound)."""
    if isinstance(result, QueryBoolean):
        return [{"ask": bool(result)}]
    if isinstance(result, QuerySolutions):
        names = [v.value for v in result.variables]
        return [{name: None if s[name] is None else str(s[name]) for name in names} for s in result]
    return [{"subject": str(t.subject), "predicate": str(t.predicate), "object": str(t.object)} for t in result]


def _literal_value(text: str) -> str:
    """The lexical form of a literal in N-Triples form ("3"^^<...integer> -> 3)."""
    return text[1 : text.rindex('"')] if text.startswith('"') else text
