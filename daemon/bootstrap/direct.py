"""Writing snapshot records through the normal sink machinery: large batched openCypher statements.

Room in the design: bootstrap step 6, the path for targets without the Neptune bulk loader (FalkorDB, Neptune
Analytics, whose import API differs), and the residual of the loader path (what CSV cannot carry). Records
become ordinary `GraphChange`s (`daemon.bootstrap.records`), planned by the streaming `Planner` and applied by
the streaming `PlanApplier` with its classified retries, bisection and dead letters, only in bigger batches
(`bootstrap.write_batch_size`). Every statement is an idempotent MERGE keyed by the element id, so the stream
replay that follows may touch the same elements again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from daemon.deadletter import DeadLetterFile
from daemon.scheduler import Planner
from daemon.sinks.base import GraphSink, PlanApplier, RetryPolicy

COMPACT_TIMEOUT_S = 600.0


class DirectWriter:
    def __init__(
        self,
        sink: GraphSink,
        *,
        source: str,
        batch_size: int,
        concurrency: int,
        retry: RetryPolicy,
        dead_letters: DeadLetterFile,
        edge_type_cache_size: int = 200_000,
        planner: Any = None,
    ) -> None:
        self.sink = sink
        self.applier = PlanApplier(
            sink,
            source=source,
            batch_size=batch_size,
            concurrency=asyncio.Semaphore(concurrency),
            retry=retry,
            dead_letters=dead_letters,
        )
        # an RDF sink gets `daemon.rdf.RdfPlanner` (quads), every other sink the openCypher planner
        self.planner = planner or Planner(sink.dialect, self.applier.lookup_edge_types, edge_type_cache_size)
        self.changes_applied = 0
        self.changes_dead_lettered = 0
        self.plan_seconds = 0.0
        self.apply_seconds = 0.0

    async def apply(self, changes: Iterable[Any]) -> int:
        """Plan and apply one chunk of changes; returns the changes applied (the rest were dead-lettered or
        needed no statement)."""
        changes = list(changes)
        if not changes:
            return 0
        started = time.perf_counter()
        plan = await self.planner.plan(changes)
        planned = time.perf_counter()
        applied = await self.applier.apply(plan)
        self.plan_seconds += planned - started
        self.apply_seconds += time.perf_counter() - planned
        self.changes_applied += applied
        self.changes_dead_lettered += len(changes) - applied - len(plan.skipped)
        return applied


async def compact_embedded_engine(sink: GraphSink, max_seconds: float = COMPACT_TIMEOUT_S) -> bool:
    """After a bulk write into the embedded FalkorDB engine, rewrite its append-only file (BGREWRITEAOF) and
    wait for the rewrite: the AOF otherwise holds every statement of the copy, which the engine would replay
    (re-executing each query) on every start. Returns False when the sink is not an embedded engine."""
    engine: Any = getattr(sink, "engine", None)
    if engine is None or not engine.running:
        return False
    return bool(await engine.compact(wait=True, timeout=max_seconds))  # the engine's own client has its password
