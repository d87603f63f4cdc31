"""Fan-out: one source read once, feeding its graph pipeline and every event sink, each with its own checkpoint.

`FanOutSource` stands in for the source in the source's `Pipeline` (the graph sink, `sinks[0]`, unchanged: its
checkpoint stays under the source's name). Its `run` reads every branch's checkpoint, starts the real source
from the **lowest** of them (per partition; a partition some branch has no checkpoint for is read from the
source's start), and hands each batch to every branch: the pipeline's queue and one bounded buffer per event
sink (`EventLane`). A branch is handed only the changes after its own checkpoint, so a restart replays to each
sink exactly what it had not acknowledged. Each `EventLane` turns its changes into CloudEvents, delivers them
(`EventDelivery`) and then checkpoints its low watermark under `SOURCE@SINK` in the same store
(`lane_key`; `@` cannot occur in a source name).

A slow or failing event sink fills its buffer (`buffer_batches`) and then the source waits for it: the other
branches go on for as long as that buffer lasts and then wait too, so no branch ever skips a change or loses
its progress (each checkpoint is its own). The source is told a position is applied (`acknowledge`, which is
how a DynamoDB parent shard finishes) only once every branch has it. A branch that fails for good (a
non-retryable error) ends the run; the supervisor restarts the whole source from the checkpoints.

A source with event sinks only (`graph=False`, run by `daemon.events.eventonly.EventOnlyPipeline`) has no graph
branch: the lowest checkpoint is its event sinks' alone, and nothing is put on the pipeline's queue.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any

import structlog

from daemon.deadletter import DeadLetterFile
from daemon.events.cloudevents import Route, events_of
from daemon.events.sinks import EventDelivery, EventSink
from daemon.leases import FencedOff
from daemon.model import LANE_SEPARATOR, SHARD_END, ChangeBatch, Position
from daemon.observability import METRICS
from daemon.sinks.base import RetryPolicy

log = structlog.get_logger("daemon.events.fanout")


def lane_key(source: str, sink: str) -> str:
    """The checkpoint key of an event sink's branch of a source."""
    return f"{source}{LANE_SEPARATOR}{sink}"


def after(batch: ChangeBatch, checkpoint: Position | None) -> ChangeBatch | None:
    """What of `batch` a branch checkpointed at `checkpoint` has not applied: None when nothing (a caught-up
    marker is kept, without a position, so it never moves a checkpoint back)."""
    if checkpoint is None or batch.position is None or batch.position > checkpoint:
        if checkpoint is None or not batch.changes or batch.changes[0].position > checkpoint:
            return batch
        changes = [c for c in batch.changes if c.position > checkpoint]
        return ChangeBatch(batch.partition, changes, batch.position, batch.caught_up, batch.head_position,
                           batch.commit_complete, batch.holding, batch.more)  # fmt: skip
    if batch.caught_up:
        return ChangeBatch(batch.partition, [], None, caught_up=True, head_position=batch.head_position)
    return None


class _Buffer(asyncio.Queue[ChangeBatch]):
    """A lane's bounded buffer of source batches that also counts the changes it holds (for `/status`)."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)  # type: ignore[misc]
        self.changes = 0

    def _put(self, item: ChangeBatch) -> None:
        super()._put(item)  # type: ignore[misc]
        self.changes += len(item.changes)

    def _get(self) -> ChangeBatch:
        item: ChangeBatch = super()._get()  # type: ignore[misc]
        self.changes -= len(item.changes)
        return item


class EventLane:
    """One event sink's branch of a source: bounded buffer -> CloudEvents -> delivery -> checkpoint. With a
    shared checkpoint store (`ownership`: the source's lease coordinator) every batch call and checkpoint write
    waits on the source's lease being writable: a lane of an instance that lost the lease stops at once
    (`FencedOff`), like the graph sink's writes."""

    def __init__(
        self,
        source: str,
        sink: EventSink,
        route: Route,
        *,
        buffer_batches: int,
        window_max_events: int,
        retry: RetryPolicy,
        dead_letters: DeadLetterFile,
    ) -> None:
        self.source, self.sink, self.route = source, sink, route
        self.key = lane_key(source, sink.name)
        self.buffer_batches = buffer_batches
        self.window_max = window_max_events
        self.delivery = EventDelivery(sink, source=source, retry=retry, dead_letters=dead_letters)
        self.queue: _Buffer = _Buffer(maxsize=buffer_batches)
        self.positions: dict[str, Position] = {}
        self.ownership: Any = None  # the source's lease coordinator (DynamoDB store), else None
        self.last_commit_ms = 0  # commit time of the newest change delivered (or routed away)
        self.delivering_commit_ms = 0  # commit time of the first change of the window being delivered
        self._gathered_commit_ms = 0  # commit time of the newest change handed over so far
        self.caught_up = False
        self.busy = False
        self.forget: list[str] = []  # finished shards whose rows this branch deletes after its next window
        self.stopping = False  # a drain: return after the window being delivered
        self.changes_taken = 0  # changes this branch took from its buffer into a window since start (pre-route)
        self.shards: Any = None  # a sharded source (DynamoDB shards shared across instances): for `is_current`
        self.writing: set[str] = set()  # partitions of the window being delivered (for `quiesce`)
        self._window_done = asyncio.Event()
        self._m_depth = METRICS.event_buffer_depth.labels(source=source, sink=sink.name)

    @property
    def idle(self) -> bool:
        """Caught up with everything handed to it delivered and checkpointed."""
        return self.caught_up and not self.busy and self.queue.empty()

    async def run(self, checkpoints: Any, on_applied: Any) -> None:
        while True:
            window = self._gather(await self.queue.get())
            last = window[-1]
            if self.shards is not None:
                window = await self._writable(window)
            partitions = {b.partition for b in window if b.changes or b.position is not None}
            self.writing = partitions
            try:
                events = events_of(self.source, [c for b in window for c in b.changes], self.route)
                self.fence_window(partitions)
                if events:
                    await self.sink.start()
                    try:
                        await self.delivery.deliver(events)
                    except FencedOff:
                        if self.shards is None:
                            raise
                        await self._retreat(partitions)
                        window = []
                reached = {b.partition: b.position for b in window if b.position is not None}
                await self._checkpoint(checkpoints, on_applied, reached)
            finally:
                self.writing = set()
                self._window_done.set()
            self.caught_up = last.caught_up
            self.busy = False
            if self.stopping:
                return  # a drain: this window is delivered and checkpointed

    async def _writable(self, window: list[ChangeBatch]) -> list[ChangeBatch]:
        """Sharded: the window's batches read under this instance's current holding of a shard it may still
        write (the others are another instance's now, or read again under a new holding: dropped, as the graph
        pipeline drops them)."""
        kept = []
        for batch in window:
            if batch.position is None and not batch.changes:
                kept.append(batch)  # only says "caught up"
            elif self.shards.is_current(batch) and self.ownership.may_write(batch.partition):
                kept.append(batch)
        return kept

    async def _retreat(self, partitions: set[str]) -> None:
        """Sharded: a shard's write deadline passed during the delivery: the window is not checkpointed; the
        shards past it are given up, the others read again from their checkpoints (replays, nothing skipped)."""
        lost = {p for p in partitions if not self.ownership.may_write(p)}
        log.warning("write deadline passed during an event window; its shards are read again from their checkpoints",
                    source=self.source, sink=self.sink.name, given_up=sorted(lost),
                    rewound=sorted(partitions - lost))  # fmt: skip
        for partition in lost:
            await self.ownership.lease_lost(partition)
        self.shards.rewind(partitions - lost)

    async def quiesce(self, partition: str) -> None:
        """Return once no window of `partition` is being delivered or checkpointed (a hand-over waits for it)."""
        while partition in self.writing:
            self._window_done.clear()
            await self._window_done.wait()

    def _gather(self, first: ChangeBatch) -> list[ChangeBatch]:
        """`first` and what else is buffered, up to `window_max_events` changes; the lane is busy from here."""
        window = [first]
        self.busy = True
        count = len(first.changes)
        while count < self.window_max and not self.queue.empty():
            window.append(self.queue.get_nowait())
            count += len(window[-1].changes)
        self.changes_taken += count
        self._m_depth.set(self.queue.qsize())
        with_changes = [b.changes for b in window if b.changes]
        if with_changes:  # for the lag: the oldest change now being delivered, the newest once it is checkpointed
            self.delivering_commit_ms = self.delivering_commit_ms or with_changes[0][0].commit_ms
            self._gathered_commit_ms = with_changes[-1][-1].commit_ms
        return window

    def fence_window(self, partitions: set[str]) -> None:
        """With a shared checkpoint store: raise `FencedOff` now, and before each batch call of this window's
        delivery, unless this instance may still write every partition of it (the source's lease)."""
        if self.ownership is None:
            return
        self.delivery.fence = lambda: self._fence(partitions)
        self._fence(partitions)

    def _fence(self, partitions: set[str]) -> None:
        for partition in partitions:
            if not self.ownership.may_write(partition):
                raise FencedOff(f"event sink {self.key!r} partition {partition!r}: the source's lease is not writable")

    async def _checkpoint(self, checkpoints: Any, on_applied: Any, reached: dict[str, Position]) -> None:
        """Save the positions that moved (and tell the fan-out); then drop the rows of finished shards."""
        moved = {p: pos for p, pos in reached.items() if self.positions.get(p) != pos}
        if moved:
            written = await checkpoints.save_many(self.key, moved)
            if written is not None:  # a sharded source: the shards whose lease was lost at the write are not ours
                moved = {p: moved[p] for p in written}
            self.positions.update(moved)
            on_applied(self.key, moved)
        self.last_commit_ms = max(self.last_commit_ms, self._gathered_commit_ms)
        self.delivering_commit_ms = 0
        if self.forget:
            gone, self.forget = self.forget, []
            await checkpoints.forget(self.key, gone)
            for partition in gone:
                self.positions.pop(partition, None)

    def status(self) -> dict[str, Any]:
        """This event sink in `/status` (docs/events.md): where it is, how far behind, what it holds and did."""
        caught_up = self.idle
        # How far behind the source: from the oldest change being delivered, else the newest one delivered.
        behind = self.delivering_commit_ms or self.last_commit_ms
        lag = 0.0 if caught_up or not behind else max(0.0, time.time() - behind / 1000)
        delivery = self.delivery
        return {
            "sink": self.sink.name,
            "kind": self.sink.kind,
            "checkpoint_key": self.key,
            "state": "down" if not delivery.healthy else "retrying" if delivery.backing_off else "ok",
            "position": {p: list(pos) for p, pos in sorted(self.positions.items())} or None,
            "lag_seconds": round(lag, 3),
            "buffered_batches": self.queue.qsize(),
            "buffered_events": self.queue.changes,
            "events_sent": delivery.sent,
            "events_retried": delivery.retried,
            "events_dead_lettered": delivery.dead_lettered,
            "healthy": delivery.healthy,
            "failing_reason": delivery.failing_reason,
            "caught_up": caught_up,
        }


class FanOutSource:
    """The source of a pipeline with event sinks (see the module docstring); a `daemon.pipeline.Source`."""

    def __init__(self, inner: Any, lanes: list[EventLane], checkpoints: Any = None, *, graph: bool = True) -> None:
        self.inner = inner
        self.name = inner.name
        self.lanes = lanes
        self.graph = graph  # False: event sinks only, nothing is put on the pipeline's queue (`EventOnlyPipeline`)
        self.on_progress: Any = None  # called with the partitions' new lowest positions (every branch has them)
        self.checkpoints = checkpoints  # the store the pipeline uses (set by the supervisor)
        self.ownership: Any = None  # the source's lease coordinator with the DynamoDB store (set by the supervisor)
        self._applied: dict[str, dict[str, Position]] = {}  # branch -> partition -> applied position
        self._acknowledged: dict[str, Position] = {}
        self._starts: dict[str, dict[str, Position]] = {}  # branch -> partition -> its checkpoint when read from
        self._stopping = False
        self.sharded = False  # DynamoDB shards shared across instances (`share`)
        self._held: set[str] = set()  # sharded: the shards this instance holds
        self._ends: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> str:
        return str(self.inner.state)

    @property
    def polling(self) -> bool:
        return bool(self.inner.polling)

    @property
    def idle(self) -> bool:
        """Every event sink has delivered and checkpointed everything read so far."""
        return all(lane.idle for lane in self.lanes)

    async def run(self, out: asyncio.Queue[ChangeBatch], resume: dict[str, Position]) -> None:
        assert self.checkpoints is not None
        starts: dict[str, dict[str, Position]] = {self.name: dict(resume)} if self.graph else {}
        self._starts = starts
        for lane in self.lanes:
            lane.positions = await self.checkpoints.load(lane.key)
            lane.caught_up = False
            lane.queue = _Buffer(maxsize=lane.buffer_batches)  # a restart drops what the last run buffered
            lane.ownership = self.ownership
            lane.shards = self if self.sharded else None
            starts[lane.key] = dict(lane.positions)
        self._applied = {branch: dict(positions) for branch, positions in starts.items()}
        self._acknowledged = {}
        partitions = set().union(*starts.values())
        combined = {p: min(s[p] for s in starts.values()) for p in partitions if all(p in s for s in starts.values())}
        if self.graph and combined != resume:
            log.info("fan-out: reading from the slowest branch's checkpoint", source=self.name,
                     resume={p: list(pos) for p, pos in combined.items()})  # fmt: skip
        feed: asyncio.Queue[ChangeBatch] = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self.inner.run(feed, combined), name=f"source:{self.name}:read")
        workers = [
            asyncio.create_task(lane.run(self.checkpoints, self._on_applied), name=f"lane:{lane.key}")
            for lane in self.lanes
        ]
        watched = {reader, *workers}
        try:
            while True:
                if reader.done() and feed.empty():
                    reader.result()  # raises what the source raised
                    break  # the source ended (a file read to its end)
                getter = asyncio.ensure_future(feed.get())
                done, _ = await asyncio.wait({getter, *watched}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    for task in done - {reader}:
                        task.result()  # an event sink's branch failed: raise it (the pipeline restarts)
                        if self._stopping:
                            return  # a drain: the branch stopped after its window (the others finish theirs below)
                        raise RuntimeError(f"event sink branch {task.get_name()} ended")
                    watched.discard(reader)
                    continue
                batch = getter.result()
                if self.graph and (mine := after(batch, starts[self.name].get(batch.partition))) is not None:
                    await self._put(out, mine, watched)
                for lane in self.lanes:
                    if (theirs := after(batch, starts[lane.key].get(batch.partition))) is not None:
                        await self._put(lane.queue, theirs, watched)
            while not self.idle:  # the input ended: let the event sinks finish before returning
                done, _ = await asyncio.wait(workers, timeout=0.05)
                for task in done:
                    task.result()
                    raise RuntimeError(f"event sink branch {task.get_name()} ended")
        finally:
            if self._stopping:  # a drain: each event sink finishes (and checkpoints) the window it is delivering
                reader.cancel()
                busy = [w for lane, w in zip(self.lanes, workers, strict=True) if lane.busy and not w.done()]
                if busy:
                    log.info("drain: event sinks finish the windows they are delivering", source=self.name,
                             sinks=[lane.sink.name for lane in self.lanes if lane.busy])  # fmt: skip
                    await asyncio.wait(busy)  # bounded by the drain grace: the supervisor cancels us after it
            for task in [reader, *workers]:
                task.cancel()
            for task in [reader, *workers]:
                with suppress(asyncio.CancelledError):
                    await task

    async def _put(self, queue: asyncio.Queue[ChangeBatch], batch: ChangeBatch, watched: set[asyncio.Task]) -> None:
        """Put, or raise what a branch raised while waiting for room (a failed branch frees no room)."""
        if not queue.full():
            queue.put_nowait(batch)
            return
        putter = asyncio.ensure_future(queue.put(batch))
        try:
            while not putter.done():
                done, _ = await asyncio.wait({putter, *watched}, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {putter}:
                    task.result()  # raises what a failed branch raised; the reader may end normally
                    watched.discard(task)
        finally:
            if not putter.done():
                putter.cancel()

    def request_stop(self) -> None:
        """A drain: once the pipeline stops this source, the event sinks finish their windows first."""
        self._stopping = True
        for lane in self.lanes:
            lane.stopping = True

    def acknowledge(self, applied: dict[str, Position]) -> None:
        self._on_applied(self.name, applied)

    # ------------------------------------------------------------- a sharded source (DynamoDB shards shared)

    def share(self, shared: Any) -> None:
        """Shards shared across instances: the source reads each held shard from the lowest position of the graph
        sink and every event sink on its lease (`start_of`), and registers new shards with a first position for
        every event sink too."""
        self.sharded = True
        self.inner.share(shared)
        self.inner.start_of = self.start_of

    def _branch_positions(self, lease: Any) -> dict[str, Position | None]:
        """Each branch's position on a shard as its lease item holds it (None: none yet)."""
        positions: dict[str, Position | None] = {self.name: lease.position} if self.graph else {}
        for lane in self.lanes:
            positions[lane.key] = lease.branches.get(lane.sink.name)
        return positions

    def start_of(self, lease: Any) -> Position | None:
        """Where a held shard is read from: the lowest branch position; the shard's start when a branch has none."""
        positions = list(self._branch_positions(lease).values())
        if any(position is None for position in positions):
            return None
        return min(positions)  # type: ignore[type-var]

    def _adopt(self, partition: str, lease: Any) -> None:
        """Each branch is handed only what follows its own position on the shard as the table holds it now."""
        for branch, position in self._branch_positions(lease).items():
            for table in (self._starts.setdefault(branch, {}), self._applied.setdefault(branch, {})):
                if position is None:
                    table.pop(partition, None)
                else:
                    table[partition] = position
        for lane in self.lanes:
            position = lease.branches.get(lane.sink.name)
            if position is None:
                lane.positions.pop(partition, None)
            else:
                lane.positions[partition] = position
        self._acknowledged.pop(partition, None)

    def assign(self, held: Any) -> None:
        """The shards this instance holds now (the lease coordinator's map): a newly held one is read from its
        lease's positions; one taken over with every event sink at its end but not the shard (its last owner
        stopped in between) is finished here (`LeasedCheckpoints.end_if_all_ended`)."""
        for partition, lease in held.items():
            if partition not in self._held:
                self._adopt(partition, lease)
                if lease.position != SHARD_END and self.start_of(lease) == SHARD_END:
                    end = getattr(self.checkpoints, "end_if_all_ended", None)
                    if end is not None:
                        task = asyncio.create_task(end(partition), name=f"shard-end:{self.name}:{partition}")
                        self._ends.add(task)
                        task.add_done_callback(self._ends.discard)
        self._held = set(held)
        self.inner.assign(held)

    def is_current(self, batch: ChangeBatch) -> bool:
        return bool(self.inner.is_current(batch))

    def rewind(self, partitions: Any) -> None:
        """Read these held shards again, each branch from its position in the table now."""
        partitions = set(partitions)
        held = self.ownership.held if self.ownership is not None else {}
        for partition in partitions:
            if partition in held:
                self._adopt(partition, held[partition])
        self.inner.rewind(partitions)

    async def quiesce(self, partition: str) -> None:
        """Return once no event sink is delivering or checkpointing a window of `partition`."""
        for lane in self.lanes:
            await lane.quiesce(partition)

    def take_forgotten(self) -> list[str]:
        """The source's finished shards past the stream's retention (every branch applied them to their end): the
        pipeline deletes the source's rows, each event sink its own at the end of its next window."""
        take = getattr(self.inner, "take_forgotten", None)
        gone = take() if take is not None else []
        for lane in self.lanes:
            lane.forget.extend(gone)
        return gone

    def _on_applied(self, branch: str, applied: dict[str, Position]) -> None:
        """Tell the source what every branch has applied (the lowest position of each partition)."""
        self._applied.setdefault(branch, {}).update(applied)
        branches = list(self._applied.values())
        common: dict[str, Position] = {}
        for partition in applied:
            if all(partition in b for b in branches):
                low = min(b[partition] for b in branches)
                if self._acknowledged.get(partition) != low:
                    common[partition] = low
        if common:
            self._acknowledged.update(common)
            self.inner.acknowledge(common)
            if self.on_progress is not None:
                self.on_progress(common)

    def status(self) -> list[dict[str, Any]]:
        return [lane.status() for lane in self.lanes]

    async def close(self) -> None:
        """Close every event sink's connections (the supervisor's last step)."""
        for lane in self.lanes:
            with suppress(Exception):
                await lane.sink.close()


def build_event_sink(name: str, cfg: Any) -> EventSink:
    """The event sink object for one `[sinks.NAME]` table of an event kind."""
    from daemon.config import (
        EventBridgeSinkConfig,
        KinesisSinkConfig,
        SNSSinkConfig,
        SQSSinkConfig,
        WebhookSinkConfig,
    )
    from daemon.events.sinks import EventBridgeSink, KinesisSink, SNSSink, SQSSink, WebhookSink

    timeout = cfg.request_timeout_seconds
    if isinstance(cfg, KinesisSinkConfig | SQSSinkConfig | SNSSinkConfig | EventBridgeSinkConfig):
        aws = {"region": cfg.region, "endpoint": cfg.endpoint, "profile": cfg.profile, "timeout": timeout}
        if isinstance(cfg, KinesisSinkConfig):
            return KinesisSink(name, stream=cfg.stream, **aws)
        if isinstance(cfg, SNSSinkConfig):
            return SNSSink(name, topic_arn=cfg.topic_arn, **aws)
        if isinstance(cfg, EventBridgeSinkConfig):
            return EventBridgeSink(name, event_bus=cfg.event_bus, **aws)
        return SQSSink(name, queue_url=cfg.queue_url, **aws)
    if isinstance(cfg, WebhookSinkConfig):
        return WebhookSink(
            name,
            url=cfg.url,
            secret=cfg.secret_value(),
            events_per_request=cfg.events_per_request,
            max_request_bytes=cfg.max_request_bytes,
            timeout=timeout,
            text_template=cfg.text_template,
        )
    raise TypeError(f"not an event sink config: {type(cfg).__name__}")


def fan_out(
    source: Any, source_cfg: Any, config: Any, dead_letters: DeadLetterFile, *, exit_when_idle: bool = False
) -> Any:
    """The source itself when it feeds only its graph sink; else a `FanOutSource` with a lane per event sink, and
    no graph branch when the source has no graph sink (`exit_when_idle`: the run ends once caught up, so an
    archive writes its open windows then)."""
    from daemon.config import S3SinkConfig

    if not source_cfg.event_sinks:
        return source
    lanes = []
    for name in source_cfg.event_sinks:
        cfg = config.sinks[name]
        route = cfg.route
        lane: dict[str, Any] = {
            "buffer_batches": cfg.buffer_batches,
            "window_max_events": cfg.window_max_events,
            "retry": RetryPolicy(cfg.retry_initial_seconds, cfg.retry_max_seconds, cfg.attempts_before_unhealthy),
            "dead_letters": dead_letters,
        }
        routing = Route.of(route.types, route.labels, route.properties, route.event_names, route.ttl)
        if isinstance(cfg, S3SinkConfig):
            from daemon.events.archive import archive_lane

            lanes.append(archive_lane(name, source_cfg.name, cfg, routing, exit_when_idle=exit_when_idle, **lane))
        else:
            lanes.append(EventLane(source_cfg.name, build_event_sink(name, cfg), routing, **lane))
    return FanOutSource(source, lanes, graph=source_cfg.sink is not None)
