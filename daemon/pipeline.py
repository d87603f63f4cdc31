"""One source's pipeline: source task -> bounded queue -> apply loop -> checkpoint.

The apply loop takes a window (everything queued, up to `window_max_changes`, and on to the end of the source
commit it is in: Neptune writes a property update as REMOVE old and ADD new in either order within a commit,
and only whole commits make the result independent of page and window sizes), plans it into layers of
batches, applies the plan, and only then writes each partition's last position in the window as its
checkpoint: a low watermark that never passes an unapplied change (DESIGN rule 2). Then it tells the source
what is applied (`acknowledge`), which is how a DynamoDB source learns that a parent shard is finished and its
children may start. A bounded queue makes a slow sink slow the poller down instead of growing memory (rule 7).

With leases (`ownership`: the source's `LeaseCoordinator`), nothing is written for a partition this instance may
no longer write. A source with one partition (Neptune, a file) stops at once (`FencedOff`, `LeaseLost`): the
supervisor stands it by. A sharded source (DynamoDB shards shared across instances) goes on with the shards it
still holds: a window drops the batches of shards it lost or read under an earlier holding (the source tags
each batch with the holding it was read under), gives up shards whose write deadline passed, and when a
deadline passes in the middle of a window it rewinds the window's shards to their checkpoints instead of
skipping what was not applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from typing import Any, Protocol

import structlog

from daemon.leases import FencedOff
from daemon.model import SHARD_END, ChangeBatch, Position
from daemon.observability import METRICS
from daemon.scheduler import Planner
from daemon.sinks.base import PlanApplier

log = structlog.get_logger("daemon.pipeline")

COMMIT_WINDOW_FACTOR = 10  # a window grows to at most this many times `window_max_changes` to end on a commit
# While the source is behind (`ChangeBatch.more`), a window waits this long at most for each next batch before it
# is applied with what it has: a catch-up is applied in full windows, not in whatever was queued when the last
# window ended (fewer layers and statements), and a source that stalls (retries) holds nothing back for long.
BEHIND_WAIT_SECONDS = 0.25


class Source(Protocol):
    name: str
    state: str
    polling: bool

    async def run(self, out: asyncio.Queue[ChangeBatch], resume: dict[str, Position]) -> None:
        """Read from the checkpointed position of each partition (`resume`) and put batches on `out`."""

    def acknowledge(self, applied: dict[str, Position]) -> None:
        """These partitions' positions are applied and checkpointed."""


class ShardedSource(Source, Protocol):
    """A source whose partitions are leased one by one (a DynamoDB source on the shared lease table)."""

    def is_current(self, batch: ChangeBatch) -> bool:
        """The batch was read under this instance's current holding of its partition."""

    def rewind(self, partitions: Iterable[str]) -> None:
        """Read these held partitions again from their checkpoints (a window of them was not fully applied)."""


class Ownership(Protocol):
    """What the pipeline needs of a lease coordinator (`daemon.lease_coordinator.LeaseCoordinator`)."""

    def may_write(self, partition: str) -> bool: ...

    def deadline(self, partition: str) -> float | None: ...

    async def lease_lost(self, partition: str) -> None: ...


class CheckpointStore(Protocol):
    """What the pipeline needs of a checkpoint store: `SQLiteLeaseStore`, or the supervisor's lease-holding view of
    the DynamoDB store (its writes raise `daemon.leases.LeaseLost` when the lease moved)."""

    async def load(self, source: str) -> dict[str, Position]: ...

    async def save_many(self, source: str, positions: dict[str, Position]) -> Iterable[str] | None:
        """Write the positions; return the partitions written when that can be fewer than all of them (a
        sharded source's lost leases), else None."""

    async def forget(self, source: str, partitions: list[str]) -> None: ...


class Pipeline:
    def __init__(
        self,
        source: Source,
        planner: Planner,
        applier: PlanApplier,
        checkpoints: CheckpointStore | None,
        *,
        queue_size: int,
        window_max_changes: int,
        ownership: Ownership | None = None,
        sharded: bool = False,
    ) -> None:
        self.source = source
        self.name = source.name
        self.planner = planner
        self.applier = applier
        self.checkpoints = checkpoints  # None until the supervisor opened a shared store
        self.ownership = ownership  # None: one owner, always writable; else checked before every sink write
        self.sharded = sharded  # partitions are leased one by one (the source is a `ShardedSource`)
        self.standby = False  # another instance holds this source's lease
        self.queue_size = queue_size
        self.window_max = window_max_changes
        self.positions: dict[str, Position] = {}  # the checkpointed low watermark of each partition
        self.caught_up = False  # the source saw the head and everything read is applied and checkpointed
        self.applying = False
        self._writing: set[str] = set()  # partitions of the window being applied
        self._window_done = asyncio.Event()  # set at the end of each window (for `quiesce`)
        self.progress = asyncio.Event()  # set by a window that ends caught up (`--exit-when-idle` waits on it)
        self.last_applied_commit_ms = 0
        self.changes_applied = 0
        self.crashed: str | None = None  # why the last run crashed, until a window is applied again
        self._stopping = asyncio.Event()
        self._latency_commit: dict[str, int] = {}  # partition -> commit time of its last applied change
        self._m_depth = METRICS.queue_depth.labels(source=self.name)
        METRICS.queue_capacity.labels(source=self.name).set(queue_size)

    def request_stop(self) -> None:
        """Finish the window in flight, checkpoint it, and return from `run`."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def stored_positions(self) -> dict[str, Position]:
        """The checkpoint a run starts from, as stored (shown in `/status` before the first window)."""
        assert self.checkpoints is not None
        return await self.checkpoints.load(self.name)

    async def run(self, before_apply: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run until stopped; raises what the source or the sink raised (the supervisor restarts it).
        `before_apply` (the sink's start) runs while the source reads its first pages, before the first window."""
        assert self.checkpoints is not None
        self.positions = await self.checkpoints.load(self.name)
        if self.sharded:  # other instances' shards are theirs to show
            assert self.ownership is not None
            self.positions = {p: pos for p, pos in self.positions.items() if self.ownership.may_write(p)}
        for partition, position in self.positions.items():
            self._export_checkpoint(partition, position)
        queue: asyncio.Queue[ChangeBatch] = asyncio.Queue(maxsize=self.queue_size)
        source_task = asyncio.create_task(self.source.run(queue, dict(self.positions)), name=f"source:{self.name}")
        try:
            if before_apply is not None:
                await before_apply()
            while not self._stopping.is_set():
                window = await self._next_window(queue, source_task)
                if window is None:
                    break
                await self._apply_window(window)
        finally:
            source_task.cancel()
            with suppress(asyncio.CancelledError):
                await source_task

    async def _next_window(
        self, queue: asyncio.Queue[ChangeBatch], source_task: asyncio.Task[None]
    ) -> list[ChangeBatch] | None:
        first = await self._next_batch(queue, source_task)
        if first is None:
            return None
        window = [first]
        count = len(first.changes)
        while count < self.window_max and not queue.empty():
            batch = queue.get_nowait()
            window.append(batch)
            count += len(batch.changes)
        while count < self.window_max and window[-1].more:  # behind: the next page is on its way
            batch = await self._next_batch(queue, source_task, raise_source_error=False, at_most=BEHIND_WAIT_SECONDS)
            if batch is None:
                break
            window.append(batch)
            count += len(batch.changes)
        # Finish the commit the window ends in (its rest is on the next page), unless it is huge.
        while not window[-1].commit_complete and count < self.window_max * COMMIT_WINDOW_FACTOR:
            batch = await self._next_batch(queue, source_task, raise_source_error=False)
            if batch is None:
                break  # apply what was read; the source's error comes with the next window
            window.append(batch)
            count += len(batch.changes)
        self._m_depth.set(queue.qsize())
        return window

    async def _next_batch(
        self,
        queue: asyncio.Queue[ChangeBatch],
        source_task: asyncio.Task[None],
        *,
        raise_source_error: bool = True,
        at_most: float | None = None,
    ) -> ChangeBatch | None:
        """The next batch; None when the pipeline is stopping, the source ended (raising what it raised) or
        `at_most` seconds passed (the wait is not cancelled from outside: a batch taken off the queue is never
        lost to a timeout)."""
        if not queue.empty():
            return queue.get_nowait()
        getter = asyncio.ensure_future(queue.get())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, stop, source_task}, timeout=at_most, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if source_task in done and raise_source_error:
            source_task.result()  # raises what the source raised
        return None

    async def _apply_window(self, window: list[ChangeBatch]) -> None:
        last = window[-1]
        if self.ownership is not None:
            window = await self._writable(window)
        changes = [c for batch in window for c in batch.changes]
        self.applying = True
        self._writing = {batch.partition for batch in window}
        try:
            if changes:
                plan = await self.planner.plan(changes)
                if plan.skipped:
                    METRICS.records_skipped.labels(source=self.name, reason="edge_not_in_target").inc(len(plan.skipped))
                try:
                    self.changes_applied += await self.applier.apply(plan)
                except FencedOff:
                    if not self.sharded:
                        raise
                    await self._retreat(window)
                    return
            reached: dict[str, Position] = {}
            for batch in window:
                if batch.position is not None:
                    reached[batch.partition] = batch.position
            moved = {part: pos for part, pos in reached.items() if self.positions.get(part) != pos}
            if moved:
                written = await self.checkpoints.save_many(self.name, moved)
                if written is not None:  # some leases were lost at the write: those partitions are not ours
                    moved = {part: moved[part] for part in written}
                self.positions.update(moved)
                for partition, position in moved.items():
                    self._export_checkpoint(partition, position)
                self.source.acknowledge(moved)
            await self._forget(getattr(self.source, "take_forgotten", None))
        finally:
            self.applying = False
            self._writing = set()
            self._window_done.set()
        self.crashed = None
        now = time.time()
        if changes:
            self.last_applied_commit_ms = max(c.commit_ms for c in changes)
            for commit_ms in {c.commit_ms for c in changes if c.commit_ms}:
                METRICS.end_to_end_latency.labels(source=self.name).observe(max(0.0, now - commit_ms / 1000))
        # The source sends its caught-up marker after every page it read, so a window ending with it is the head.
        self.caught_up = last.caught_up
        if self.caught_up:
            self.progress.set()
        self._export_latency(window, now)

    async def quiesce(self, partition: str) -> None:
        """Return once no window writing `partition` is being applied (a lease handed over waits for this)."""
        while partition in self._writing:
            self._window_done.clear()
            await self._window_done.wait()
        quiesce_branches = getattr(self.source, "quiesce", None)  # a fan-out: its event sinks' windows too
        if quiesce_branches is not None:
            await quiesce_branches(partition)

    async def _writable(self, window: list[ChangeBatch]) -> list[ChangeBatch]:
        """The window's batches this instance may write, and the applier's fence for them. One partition: any
        partition not writable stops the pipeline (`FencedOff`). Sharded: batches of partitions no longer held,
        or read under an earlier holding, are dropped, and a held partition past its deadline is given up."""
        ownership = self.ownership
        assert ownership is not None
        kept: list[ChangeBatch] = []
        given_up: set[str] = set()
        for batch in window:
            if batch.position is None and not batch.changes:
                kept.append(batch)  # only says "caught up"
            elif self.sharded and not self.source.is_current(batch):  # type: ignore[attr-defined]
                continue
            elif ownership.may_write(batch.partition):
                kept.append(batch)
            elif self.sharded:
                given_up.add(batch.partition)
            else:
                raise FencedOff(f"source {self.name!r} partition {batch.partition!r}: lease not held; stopping writes")
        for partition in given_up:
            log.warning("write deadline passed; shard given up", source=self.name, partition=partition)
            await ownership.lease_lost(partition)
        partitions = {batch.partition for batch in kept if batch.changes}

        def fence() -> float | None:
            deadlines = [ownership.deadline(partition) for partition in partitions]
            if any(deadline is None for deadline in deadlines):
                raise FencedOff(f"source {self.name!r}: a lease of this window was lost; batch call not sent")
            return min(deadlines, default=None)  # type: ignore[type-var]

        self.applier.fence = fence
        return kept

    async def _retreat(self, window: list[ChangeBatch]) -> None:
        """A write deadline passed in the middle of the window: the partitions past their deadline are given up,
        the others read again from their checkpoints (none of the window is checkpointed)."""
        assert self.ownership is not None
        partitions = {batch.partition for batch in window if batch.changes or batch.position is not None}
        lost = {partition for partition in partitions if not self.ownership.may_write(partition)}
        log.warning(
            "write deadline passed during a window; its shards are read again from their checkpoints",
            source=self.name,
            given_up=sorted(lost),
            rewound=sorted(partitions - lost),
        )
        for partition in lost:
            await self.ownership.lease_lost(partition)
        self.source.rewind(partitions - lost)  # type: ignore[attr-defined]

    async def _forget(self, take_forgotten: Any) -> None:
        """Delete the checkpoint rows of partitions the source says are gone for good (a DynamoDB source's
        finished shards past the stream's retention)."""
        gone = take_forgotten() if take_forgotten is not None else []
        if gone:
            await self.checkpoints.forget(self.name, gone)
            for partition in gone:
                self.positions.pop(partition, None)

    def _export_latency(self, window: list[ChangeBatch], now: float) -> None:
        """Per partition: now minus the commit time of its last applied change; 0 for all once caught up. A
        partition that ended (a finished shard) loses its series, so label values stay bounded."""
        for batch in window:
            if batch.position == SHARD_END:
                self._latency_commit.pop(batch.partition, None)
                with suppress(KeyError):
                    METRICS.stream_latency.remove(self.name, batch.partition)
                continue
            if batch.position is None and self._latency_commit:
                continue  # a caught-up marker of a partitioned source: not a partition of its own
            commit = max((c.commit_ms for c in batch.changes), default=0)
            if commit or batch.partition not in self._latency_commit:
                self._latency_commit[batch.partition] = commit
        for partition, commit_ms in self._latency_commit.items():
            lag = 0.0 if self.caught_up or not commit_ms else max(0.0, now - commit_ms / 1000)
            METRICS.stream_latency.labels(source=self.name, partition=partition).set(lag)

    def _export_checkpoint(self, partition: str, position: Position) -> None:
        # Numeric gauges for Neptune's (commitNum, opNum); DynamoDB sequence numbers are too long for a float.
        if isinstance(position[0], int):
            METRICS.checkpoint_commit.labels(source=self.name, partition=partition).set(position[0])
            if len(position) > 1:
                METRICS.checkpoint_op.labels(source=self.name, partition=partition).set(position[1])
        METRICS.checkpoint_timestamp.labels(source=self.name).set(time.time())

    def status(self) -> dict[str, Any]:
        lag = 0.0
        if not self.caught_up and self.last_applied_commit_ms:
            lag = max(0.0, time.time() - self.last_applied_commit_ms / 1000)
        return {
            "source": self.name,
            "state": "standby" if self.standby else self.source.state,
            "position": _position_text(self.positions),
            "caught_up": self.caught_up,
            "lag_seconds": round(lag, 3),
            "changes_applied": self.changes_applied,
            "sink": self.applier.sink.name,
            "sink_healthy": self.applier.healthy,
            "restarting_after": self.crashed,
        }


def _position_text(positions: dict[str, Position]) -> list[int | str] | dict[str, list[int | str]] | None:
    """One partition's position as a list (Neptune, files); several as a map of partition -> position."""
    if not positions:
        return None
    if list(positions) == [""]:
        return list(positions[""])
    return {partition: list(position) for partition, position in sorted(positions.items())}
