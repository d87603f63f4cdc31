"""What every sink shares: the engine interface, and applying a `Plan` with retries, bisection and dead letters.

A `GraphSink` only knows how to run one statement over a list of rows on its engine and how to classify the
errors that come back. `PlanApplier` does the rest (DESIGN rule 6):

* layers run one after another, and the phases of a layer one after another; the batches of one phase run
  concurrently, at most `concurrency` at a time, each cut into chunks of `batch_size` rows;
* a retryable failure (conflict, throttling, 5xx, timeout, dropped connection, read-only during failover) is
  retried with exponential backoff and full jitter, forever: a sink that is down stops progress, it does not
  lose changes. After `attempts_before_split` failures a chunk is split in halves, because smaller batches
  conflict less;
* a failure that rejects the data splits the chunk in halves until the single mutation that fails is found;
  a mutation of one change goes to the dead-letter file, and a mutation coalesced from several is applied
  again one change at a time, so that exactly the changes the target refuses are dead-lettered and the good
  parts apply; the rest of the chunk is applied;
* a chunk whose request would exceed the sink's size limit (`BatchTooLarge`, raised before anything is sent)
  is sent in halves; a single row is always sent;
* any other failure (access denied, an unexpected exception) is raised: the supervisor restarts the pipeline
  from its checkpoint with backoff, and nothing is dead-lettered for it;
* with leases (`fence` set by the pipeline for each window), every batch call is checked against the window's
  write deadline just before it is sent and is abandoned when the deadline passes: `FencedOff` (see
  docs/architecture.md, "Leases and self-fencing").
Rows in one layer are independent, so splitting never reorders dependent changes.

Nothing the applier gives up on counts as applied: changes the planner rejected (reserved or impossible names)
and changes of an edge type the target cannot index are dead-lettered; statements that find their element with
MATCH report the ids they matched, and a change whose element (or endpoint) is not in the target is counted in
`records_no_effect_total` by reason and written to the dead-letter file.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from daemon.cypher import Dialect
from daemon.deadletter import DeadLetterFile
from daemon.leases import FencedOff, monotonic
from daemon.model import GraphChange
from daemon.observability import METRICS
from daemon.scheduler import EDGE_DELETE, EDGE_PROPS, EDGE_UPSERT, Batch, Mutation, Plan

log = structlog.get_logger("daemon.sink")
T = TypeVar("T")
EDGE_SHAPES = frozenset({EDGE_UPSERT, EDGE_PROPS, EDGE_DELETE, "enulls"})  # shape[1] is the edge type
Replan = Callable[[list[GraphChange]], Awaitable[Plan]]


@dataclass(frozen=True, slots=True)
class ErrorClass:
    """What a failure means. Retryable: try again later. Data rejected: the target refuses these rows for good,
    so bisect to the poison change and dead-letter it. Neither (access denied, a bug): raise, and the supervisor
    restarts the pipeline with backoff; dead-lettering everything would be the wrong answer to those."""

    retryable: bool
    reason: str  # a bounded label value: conflict, throttling, server_error, timeout, connection, ...
    data_rejected: bool = False


def full_jitter(attempt: int, initial_seconds: float, max_seconds: float, max_exponent: int = 30) -> float:
    """A retry delay with full jitter: uniform in [0, min(max, initial * 2**attempt)]."""
    return random.uniform(0, min(max_seconds, initial_seconds * 2 ** min(attempt, max_exponent)))


RETRY = {
    reason: ErrorClass(True, reason)
    for reason in (
        "conflict",
        "throttling",
        "server_error",
        "server_busy",
        "timeout",
        "connection",
        "read_only",
        "access_expired",
    )
}
REJECTED = ErrorClass(False, "rejected", data_rejected=True)
# Retryable failures that say the target cannot take writes now (memory, disk): not ready from the first one.
UNHEALTHY_AT_ONCE = frozenset({"resource"})
RETRY["resource"] = ErrorClass(True, "resource")
RETRY["unknown"] = ErrorClass(True, "unknown")


class BatchTooLarge(Exception):
    """Raised by `GraphSink.execute` before sending, when the request for more than one row would exceed the
    sink's request size limit; the applier sends the rows in halves instead (nothing was sent, nothing failed)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"batch request of {size:,} bytes exceeds the limit of {limit:,} bytes")


def check_request_size(size: int, limit: int, rows: list[dict[str, Any]]) -> None:
    """Refuse to send a batch request of `size` bytes over `limit` unless it carries a single row (`BatchTooLarge`:
    the applier then sends the rows in halves)."""
    if size > limit and len(rows) > 1:
        raise BatchTooLarge(size, limit)


class GraphSink(ABC):
    """One target engine."""

    dialect: Dialect
    name: str
    kind: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (and start an embedded engine); idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (and stop an embedded engine)."""

    @abstractmethod
    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run `statement` with `$rows` and return its result rows; raise on any failure."""

    @abstractmethod
    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a read statement and return its rows as dicts."""

    async def read(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a statement that must not write (the graph view), where the engine can be told so; raises
        `ConnectionError` while the sink is not connected."""
        return await self.query(statement, params)

    @abstractmethod
    def classify(self, exc: BaseException) -> ErrorClass:
        """Say whether a failure of `execute` is worth retrying, and why it happened."""

    async def ensure_edge_type(self, edge_type: str) -> None:  # noqa: B027 - optional hook
        """Prepare for relationships of a type (FalkorDB indexes each type's id property)."""

    async def edge_types(self, edge_ids: list[str]) -> dict[str, str]:
        """The relationship type of each given edge id present in the target."""
        from daemon.cypher import edge_type_lookup_statement

        found: dict[str, str] = {}
        for start in range(0, len(edge_ids), 1000):
            rows = await self.query(edge_type_lookup_statement(self.dialect), {"ids": edge_ids[start : start + 1000]})
            for row in rows:
                found[row["id"]] = row["type"]
        return found


@dataclass(slots=True)
class RetryPolicy:
    initial_seconds: float = 0.1
    max_seconds: float = 10.0
    attempts_before_split: int = 4

    def delay(self, attempt: int) -> float:
        return full_jitter(attempt, self.initial_seconds, self.max_seconds)


class PlanApplier:
    """Applies plans to one sink for one source."""

    def __init__(
        self,
        sink: GraphSink,
        *,
        source: str,
        batch_size: int,
        concurrency: asyncio.Semaphore,
        retry: RetryPolicy,
        dead_letters: DeadLetterFile,
        replan: Replan | None = None,
    ) -> None:
        self.sink = sink
        self.source = source
        self.batch_size = batch_size
        self._slots = concurrency
        self.retry = retry
        self.dead_letters = dead_letters
        # Plans one change on its own: a rejected mutation of several changes is retried change by change, so
        # that only the changes the target refuses are dead-lettered (the planner's `plan`).
        self.replan = replan
        # The write deadline of the window being applied (on `daemon.leases.monotonic`), None without leases;
        # raises `FencedOff` when a partition of the window is no longer writable. Set by the pipeline.
        self.fence: Callable[[], float | None] | None = None
        self.healthy = True  # False while the sink keeps failing with retryable errors
        self.failing_reason: str | None = None  # why it is not healthy
        self.not_applied: dict[int, GraphChange] = {}  # of the plan being applied: dead-lettered, no effect, skipped
        self._decomposed: set[int] = set()  # mutations of the plan being applied that were retried change by change
        # Sink calls in flight (batches, edge-type lookups and indexes alike) -> when each was sent (perf_counter)
        self._calls_in_flight: dict[int, float] = {}
        self._call_ids = itertools.count()
        labels = {"source": source, "sink": sink.name}
        self._m_batch_seconds = METRICS.batch_duration.labels(sink=sink.name)
        self._m_batch_size = METRICS.batch_size.labels(sink=sink.name)
        self._m_applied = METRICS.records_applied.labels(**labels)
        self._m_inflight = METRICS.inflight_batches.labels(sink=sink.name)
        self._m_up = METRICS.sink_up.labels(sink=sink.name)

    def oldest_call_seconds(self) -> float:
        """How long the oldest sink call in flight has gone unanswered (0 when none): a target that stopped
        answering (a paused engine, a hung connection) shows here long before the call's own timeout."""
        if not self._calls_in_flight:
            return 0.0
        return time.perf_counter() - min(self._calls_in_flight.values())

    async def _unanswered(self, call: Awaitable[T]) -> T:
        """Await one sink call, counted in flight until it answers (`oldest_call_seconds`)."""
        key = next(self._call_ids)
        self._calls_in_flight[key] = time.perf_counter()
        try:
            return await call
        finally:
            del self._calls_in_flight[key]

    async def apply(self, plan: Plan) -> int:
        """Apply every layer in order; return when every change is applied, dead-lettered or found to take no
        effect. Returns the number of changes applied (the plan's changes less all the others)."""
        self.not_applied.clear()
        self._decomposed.clear()
        try:
            await self._apply_plan(plan)
        except* FencedOff as fenced:  # from a task group: the first one says it
            raise fenced.exceptions[0] from None
        applied = plan.n_changes - len(self.not_applied)
        self._m_applied.inc(applied)
        return applied

    async def _apply_plan(self, plan: Plan) -> None:
        for change in plan.skipped:
            self.not_applied[id(change)] = change
        for change, reason in plan.rejected:
            self._dead_letter_changes([change], "plan", reason)
        refused: set[str] = set()  # edge types the target cannot index: their changes are dead-lettered
        for layer in plan.layers:
            edge_types = {b.shape[1] for phase in layer for b in phase if b.shape[0] in EDGE_SHAPES} - refused
            for edge_type in edge_types:
                try:
                    await self._with_retry(lambda t=edge_type: self.sink.ensure_edge_type(t), "ensure_edge_type")
                except Exception as exc:
                    if not self.sink.classify(exc).data_rejected:
                        raise
                    refused.add(edge_type)
                    self._refuse_edge_type(plan, edge_type, exc)
            for phase in layer:
                await self._run_phase([b for b in phase if b.shape[0] not in EDGE_SHAPES or b.shape[1] not in refused])

    def _refuse_edge_type(self, plan: Plan, edge_type: str, exc: BaseException) -> None:
        mutations = {id(m): m for b in plan.batches() if b.shape[0] in EDGE_SHAPES and b.shape[1] == edge_type
                     for m in b.mutations}  # fmt: skip
        for m in mutations.values():
            self._dead_letter_changes(m.changes, "apply", f"rejected: edge type cannot be indexed: {_short(exc)}", m.id)

    async def _run_phase(self, phase: list[Batch]) -> None:
        size = self.batch_size
        chunks: list[tuple[Batch, list[dict[str, Any]], Sequence[Mutation]]] = []
        for batch in phase:
            rows = batch.rows
            if len(rows) <= size:  # the batch's own lists, not a copy (most batches)
                chunks.append((batch, rows, batch.mutations))
            else:
                chunks.extend(
                    (batch, rows[i : i + size], batch.mutations[i : i + size]) for i in range(0, len(rows), size)
                )
        if len(chunks) == 1:
            await self._run_chunk(*chunks[0])
            return
        async with asyncio.TaskGroup() as group:  # the first chunk in this task, started first as before
            for chunk in chunks[1:]:
                group.create_task(self._run_chunk(*chunk))
            await self._run_chunk(*chunks[0])

    async def lookup_edge_types(self, edge_ids: list[str]) -> dict[str, str]:
        """`GraphSink.edge_types`, retried like any other sink call (the planner's lookup for unseen edges)."""
        return await self._with_retry(lambda: self.sink.edge_types(edge_ids), "edge_types")

    async def _with_retry(self, action: Callable[[], Awaitable[T]], what: str) -> T:
        attempt = 0
        while True:
            try:
                result = await self._unanswered(action())
                self._succeeded()
                return result
            except Exception as exc:
                cls = self.sink.classify(exc)
                if not cls.retryable:
                    raise
                attempt += 1
                await self._backoff(cls, attempt, exc, what)

    def _succeeded(self) -> None:
        self.healthy, self.failing_reason = True, None
        self._m_up.set(1)

    def _count_retry(self, cls: ErrorClass) -> None:
        METRICS.retries.labels(sink=self.sink.name, reason=cls.reason).inc()
        METRICS.sink_errors.labels(sink=self.sink.name, error_type=cls.reason, stage="apply").inc()

    async def _backoff(self, cls: ErrorClass, attempt: int, exc: BaseException, what: str) -> None:
        self._count_retry(cls)
        if attempt >= self.retry.attempts_before_split or cls.reason in UNHEALTHY_AT_ONCE:
            self.healthy, self.failing_reason = False, f"{cls.reason}: {_short(exc, 200)}"
            self._m_up.set(0)
        delay = self.retry.delay(attempt)
        log.warning(
            "sink call failed, retrying",
            sink=self.sink.name,
            what=what,
            reason=cls.reason,
            attempt=attempt,
            delay=round(delay, 3),
            error=_short(exc),
        )
        await asyncio.sleep(delay)

    async def _run_chunk(self, batch: Batch, rows: list[dict[str, Any]], mutations: Sequence[Mutation]) -> None:
        attempt = 0
        while True:
            try:
                async with self._slots:
                    self._m_inflight.inc()
                    started = time.perf_counter()
                    try:
                        results = await self._unanswered(self._execute_fenced(batch.statement, rows))
                    finally:
                        self._m_inflight.dec()
                self._m_batch_seconds.observe(time.perf_counter() - started)
                self._m_batch_size.observe(len(rows))
                self._succeeded()
                if batch.no_effect is not None:
                    self._check_effect(batch.no_effect, rows, mutations, results)
                return
            except FencedOff:
                raise
            except BatchTooLarge as exc:
                log.info("batch sent in halves", sink=self.sink.name, rows=len(rows), reason=str(exc))
                await self._split(batch, rows, mutations)
                return
            except Exception as exc:
                cls = self.sink.classify(exc)
                if cls.retryable:
                    attempt += 1
                    if attempt >= self.retry.attempts_before_split and len(rows) > 1:
                        self._count_retry(cls)
                        await self._split(batch, rows, mutations)
                        return
                    await self._backoff(cls, attempt, exc, "batch")
                    continue
                METRICS.sink_errors.labels(sink=self.sink.name, error_type=cls.reason, stage="apply").inc()
                if not cls.data_rejected:
                    raise
                if len(rows) > 1:
                    await self._split(batch, rows, mutations)
                    return
                await self._rejected(mutations[0], exc, cls)
                return

    async def _execute_fenced(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One batch call; with leases, sent only before the window's write deadline and abandoned at it."""
        deadline = self.fence() if self.fence is not None else None
        if deadline is None:
            return await self.sink.execute(statement, rows)
        remaining = deadline - monotonic()
        if remaining <= 0:
            raise FencedOff(f"source {self.source!r}: write deadline passed; batch call not sent")
        bound = asyncio.timeout(remaining)
        try:
            async with bound:
                return await self.sink.execute(statement, rows)
        except TimeoutError:
            if bound.expired():
                raise FencedOff(f"source {self.source!r}: write deadline passed during a batch call") from None
            raise

    async def _split(self, batch: Batch, rows: list[dict[str, Any]], mutations: Sequence[Mutation]) -> None:
        half = len(rows) // 2
        await self._run_chunk(batch, rows[:half], mutations[:half])
        await self._run_chunk(batch, rows[half:], mutations[half:])

    def _check_effect(
        self, reason: str, rows: list[dict[str, Any]], mutations: Sequence[Mutation], results: list[dict[str, Any]]
    ) -> None:
        """Rows a statement did not report as matched took no effect: say so, and do not count them as applied."""
        matched = results[0].get("matched") if results else None
        if not isinstance(matched, list):
            return  # a sink that does not report (nothing to check)
        if len(matched) == len(rows):
            return
        found = set(matched)
        for row, mutation in zip(rows, mutations, strict=True):
            if row["id"] not in found:
                METRICS.records_no_effect.labels(source=self.source, reason=reason).inc(len(mutation.changes))
                self._dead_letter_changes(mutation.changes, "apply", f"no_effect: {reason}", mutation.id, count=False)

    async def _rejected(self, mutation: Mutation, exc: BaseException, cls: ErrorClass) -> None:
        """The target refused a single mutation. One change: dead-letter it. Several (a coalesced run): apply them
        one at a time, so that only the ones the target refuses are dead-lettered and the good parts apply."""
        if id(mutation) in self._decomposed:
            return  # its changes were already applied or dead-lettered one by one
        if len(mutation.changes) == 1 or self.replan is None:
            self._dead_letter_changes(mutation.changes, "apply", f"{cls.reason}: {_short(exc)}", mutation.id)
            return
        self._decomposed.add(id(mutation))
        log.warning(
            "a coalesced mutation was rejected; applying its changes one at a time",
            sink=self.sink.name,
            element=mutation.id,
            changes=len(mutation.changes),
            error=_short(exc),
        )
        for change in mutation.changes:
            await self._apply_plan(await self.replan([change]))

    def _dead_letter_changes(
        self, changes: Sequence[GraphChange], stage: str, reason: str, element: str | None = None, *, count: bool = True
    ) -> None:
        """Write changes not applied yet to the dead-letter file (once each) and leave them out of "applied"."""
        fresh = [c for c in changes if id(c) not in self.not_applied]
        if not fresh:
            return
        for c in fresh:
            self.not_applied[id(c)] = c
        self.dead_letters.write(
            stage=stage,
            source=self.source,
            reason=reason,
            sink=self.sink.name,
            entries=[{"position": list(c.position), "change": c.describe()} for c in fresh],
        )
        if count:
            METRICS.records_dead_lettered.labels(source=self.source, stage=stage).inc(len(fresh))
        log.error(
            "change not applied, written to the dead-letter file",
            sink=self.sink.name,
            element=element or fresh[0].id,
            positions=[list(c.position) for c in fresh[:5]],
            reason=reason,
            dead_letter_file=str(self.dead_letters.path),
        )


def _short(exc: BaseException, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."
