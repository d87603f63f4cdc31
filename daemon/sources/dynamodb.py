"""DynamoDB Streams source: shard discovery and lineage, one reader per shard, iterator renewal (DESIGN rule 5).

* Discovery: `DescribeStream` page by page (`ExclusiveStartShardId`; botocore has no paginator for it), at start,
  every `discovery_interval_seconds`, and as soon as a shard is finished.
* Lineage: a shard is read only when its parent is finished: read to its end *and* applied and checkpointed
  (`SHARD_END`, learnt through `acknowledge`), or no longer listed by the stream (trimmed after 24 h). So a
  child's record never reaches the sink before a record of its parent, whatever the shards' interleaving. A
  listed shard without a checkpoint whose child has one (or is being read) counts as finished: a parent is never
  read after its child (a parent whose row was forgotten, or a closed shard skipped by `start = "latest"`).
* Late children: DescribeStream may list a closed shard before its children. While the stream is `ENABLED` (or
  `ENABLING`), a finished shard with no known child keeps the source "not caught up" and the shards are listed
  again soon, backing off from `CHILD_WAIT_FIRST_SECONDS` to `CHILD_WAIT_MAX_SECONDS` (at most the discovery
  interval), until a child is listed. A `DISABLED` / `DISABLING` stream (stream turned off, table deleted) gets
  no more shards: there a finished shard's end is the end.
* Finished shards' checkpoint rows (`SHARD_END`) are forgotten once the stream no longer lists the shard (it is
  past the 24-hour retention) and lists one of its children; the pipeline deletes them (`take_forgotten`).
* A reader follows `NextShardIterator`; an empty page is not the end of a shard, only a missing
  `NextShardIterator` is. Calls on one shard are at least `min_get_records_interval_seconds` apart, and
  `poll_interval_seconds` after an empty page. Throttling (`LimitExceededException`), 5xx and connection
  failures back off with full jitter.
* Iterators expire 15 minutes after they are issued: one that waited longer than `iterator_refresh_seconds`
  (back-pressure) is renewed, and so is one refused with `ExpiredIteratorException`, from the last sequence
  number read (`AFTER_SEQUENCE_NUMBER`), so nothing is skipped and nothing read twice.
* A shard position that the stream no longer holds (`TrimmedDataAccessException`, or a checkpointed shard that
  vanished before its end was read: a sequence-number or `SHARD_START` checkpoint the stream no longer lists,
  at start as while running) is a loud stop: `StreamTrimmed`, `graph_replicator_stream_expired` = 1.
* Positions are `(zero-padded sequence number,)` per shard (`daemon.model`); `SHARD_START` (a bootstrap's
  hand-off for the shards open when it began) reads the shard from `TRIM_HORIZON`.
* Records arrive as the service's JSON (the daemon's botocore model extras declare `GetRecords`' records a
  document: parsing them by the model cost about 100 us a record, the largest CPU cost of this source), so
  binary values are base64 text, which the value rule accepts as it is.
* Shared shards (`[checkpoint] kind = "dynamodb"`, `shared` given): every listed shard is registered as a
  lease in the table (parents before children, so a child is never taken while its parent's row is missing);
  the source reads only the shards this instance holds (`assign`, called by the lease coordinator), each from
  the checkpoint its lease carries, and never waits locally for a parent it does not hold (the coordinator
  takes a child only when the table shows its parent at `SHARD_END`, whoever read it). Each holding of a shard
  gets a new number, carried by the shard's batches (`ChangeBatch.holding`), so batches read under a holding
  that ended are dropped by the pipeline (`is_current`), even when the shard was taken back in between.
  `start = "latest"` applies when the table holds no lease of the source yet: its closed shards are registered
  at `SHARD_END`, its open ones at the stream's head.
* `KEYS_ONLY` and `OLD_IMAGE` streams carry no new image: the current items are read with a consistent
  `BatchGetItem`. Records become changes through `daemon.mapping.ItemMapper`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from daemon.aws import classify_aws_error, error_code, open_client
from daemon.config import DynamoDBSourceConfig
from daemon.deadletter import DeadLetterFile
from daemon.leases import Lease
from daemon.mapping import TTL_PRINCIPAL, ItemMapper, UnmappableItem
from daemon.model import SHARD_END, SHARD_START, ChangeBatch, GraphChange, Position, SourceStopped
from daemon.observability import METRICS, SourceMetrics
from daemon.sinks.base import full_jitter

log = structlog.get_logger("daemon.source.dynamodb")

SEQUENCE_WIDTH = 40  # DynamoDB sequence numbers have 21 to 40 digits
CAUGHT_UP = ""  # the partition of the batch that only says "caught up"
CAUGHT_UP_EMPTY_PAGES = 2  # empty pages in a row after which an open shard counts as read to its head
CHILD_WAIT_FIRST_SECONDS = 0.1  # first re-listing for the children of a finished shard (DescribeStream: 10/s)
CHILD_WAIT_MAX_SECONDS = 5.0  # ... doubling up to this (or the discovery interval, if shorter)
CHILD_WAIT_WARN_SECONDS = 120.0  # a finished shard still without a child after this long is logged as a warning
VANISHED_CONFIRM_SECONDS = (0.5, 2.0)  # re-listings before a checkpointed shard that is not listed stops the source
ENDED_STREAM = ("DISABLED", "DISABLING")  # stream statuses under which no new shard appears


class StreamTrimmed(SourceStopped):
    """A shard position is older than the stream's 24-hour retention: changes were lost to this replica."""


class SharedShards(Protocol):
    """The lease table as a source whose shards are shared across instances sees it (the supervisor's
    `daemon.supervisor.ShardLeases`)."""

    async def register(self, shards: Mapping[str, tuple[str, ...]], positions: Mapping[str, Position]) -> None:
        """Create the leases of shards the table does not know yet, with their parents and first positions."""

    async def known(self) -> bool:
        """The table holds at least one lease of this source."""

    def finished(self) -> set[str]:
        """Shards the table shows at `SHARD_END` (as the coordinator last read it)."""


async def list_shards(
    describe: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], stream_arn: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every shard `DescribeStream` lists, page by page (`ExclusiveStartShardId`; botocore has no paginator for
    it), by id; and the last page's `StreamDescription`. `describe` makes one call with the given parameters."""
    shards: dict[str, dict[str, Any]] = {}
    start: str | None = None
    while True:
        params: dict[str, Any] = {"StreamArn": stream_arn}
        if start is not None:
            params["ExclusiveStartShardId"] = start
        description = (await describe(params))["StreamDescription"]
        for shard in description.get("Shards", []):
            shards[shard["ShardId"]] = shard
        start = description.get("LastEvaluatedShardId")
        if not start:
            return shards, description


def shard_closed(shard: dict[str, Any]) -> bool:
    """A listed shard that gets no more records (its range has an end)."""
    return "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})


def position_of(sequence_number: str) -> Position:
    return (sequence_number.zfill(SEQUENCE_WIDTH),)


def sequence_of(position: Position) -> str:
    return str(position[0]).lstrip("0") or "0"


@dataclass(slots=True)
class Shard:
    id: str
    parent: str | None
    closed: bool
    state: str = "waiting"  # waiting -> reading -> ended (read to its end) -> finished (end applied)
    caught_up: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class DynamoDBStreamSource:
    def __init__(
        self, cfg: DynamoDBSourceConfig, *, dead_letters: DeadLetterFile, shared: SharedShards | None = None
    ) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._dead_letters = dead_letters
        self._mapper = ItemMapper(cfg)
        # Event sinks describe each record from its own words (`GraphChange.origin`); without them the images
        # are not kept past translation (a window of them would be held, and walked by the collector, for nothing).
        self._keep_origin = bool(cfg.event_sinks)
        self.state = "starting"
        self.polling = False
        self._m = SourceMetrics(cfg.name)
        self._skipped: dict[str, Any] = {}  # reason -> graph_replicator_records_skipped_total{source, reason}
        self._shards: dict[str, Shard] = {}
        self._resume: dict[str, Position] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._rediscover = False  # a shard finished since the last discovery: its children may not be known yet
        self._childless: dict[str, float] = {}  # finished shards with no known child -> since when (monotonic)
        self._child_wait = CHILD_WAIT_FIRST_SECONDS
        self._warned_childless: set[str] = set()
        self._forgotten: list[str] = []  # checkpoint rows the pipeline should delete (`take_forgotten`)
        self._signalled_caught_up = False
        self._failing: set[str] = set()
        self._stream_arn = ""
        self._table = cfg.table
        self._view_type = "NEW_AND_OLD_IMAGES"
        self._streams: Any = None
        self._dynamodb: Any = None
        self._shared = shared  # None: this instance reads every shard
        self._held: Mapping[str, Lease] = {}  # the shards this instance holds (the coordinator's live map)
        self._holding: dict[str, int] = {}  # held shard -> the number of its current holding
        self._holdings = 0
        self._registered: set[str] = set()  # shards whose lease this run registered
        self._forgetting: set[str] = set()  # finished shards already handed to the pipeline to forget
        # Where a held shard is read from: its lease's checkpoint; with event sinks (`FanOutSource.share`), the
        # lowest of the graph's and every event sink's position on the lease.
        self.start_of: Callable[[Lease], Position | None] = lambda lease: lease.position

    # ------------------------------------------------------------------------------------------- run

    async def run(self, out: asyncio.Queue[ChangeBatch], resume: dict[str, Position]) -> None:
        """Discover shards and read each one when its parent is finished, forever."""
        cfg = self._cfg
        self._resume = dict(resume)
        self._shards, self._readers = {}, {}
        self._signalled_caught_up = False
        self._childless, self._child_wait, self._forgotten = {}, CHILD_WAIT_FIRST_SECONDS, []
        first_start = not resume
        if self._shared is not None:  # the table, not this process, says where each held shard is
            starts = {p: self.start_of(lease) for p, lease in self._held.items()}
            self._resume = {p: position for p, position in starts.items() if position is not None}
            self._registered = set()
        async with AsyncExitStack() as stack:
            common = {"region": cfg.region, "profile": cfg.profile, "timeout_seconds": cfg.request_timeout_seconds}
            self._dynamodb = await open_client(stack, "dynamodb", endpoint=cfg.endpoint, **common)
            self._streams = await open_client(
                stack, "dynamodbstreams", endpoint=cfg.streams_endpoint or cfg.endpoint, **common
            )
            try:
                await self._open_stream()
                if self._shared is not None:
                    first_start = not await self._shared.known()
                discovered_once = False
                while True:
                    await self._discover(latest=first_start and cfg.start == "latest" and not discovered_once)
                    discovered_once = True
                    if self._shared is not None:  # listing works: ready, even holding no shard to read
                        self.polling = True
                    self._start_readers(out)
                    await self._maybe_caught_up(out)
                    await self._wait_for_work()
            except SourceStopped:
                self.state = "failed" if self.state != "expired" else self.state
                raise
            finally:
                for task in self._readers.values():
                    task.cancel()
                await asyncio.gather(*self._readers.values(), return_exceptions=True)
                for state in ("waiting", "reading", "finished"):
                    METRICS.shards.labels(source=self.name, state=state).set(0)

    def share(self, shared: SharedShards) -> None:
        """Read only the shards this instance holds in the lease table (before `run`)."""
        self._shared = shared

    def assign(self, held: Mapping[str, Lease]) -> None:
        """The shards this instance holds now (the lease coordinator's map, kept and read live): start reading
        newly held ones from their leases' checkpoints, stop reading the ones no longer held."""
        self._held = held
        for shard_id in [s for s in self._holding if s not in held]:
            del self._holding[shard_id]
            self._stop_reader(shard_id)
            shard = self._shards.get(shard_id)
            if shard is not None and shard.state == "reading":
                shard.state, shard.caught_up = "waiting", False
            if self._resume.get(shard_id) != SHARD_END:
                self._resume.pop(shard_id, None)
        for shard_id, lease in held.items():
            if shard_id not in self._holding:
                start = self.start_of(lease)
                self._hold(shard_id, start)
                if start != SHARD_END and self.state == "caught_up":
                    self.state = "polling"  # a shard to read up to its head first
        self._signalled_caught_up = False
        self._wake.set()

    def is_current(self, batch: ChangeBatch) -> bool:
        """The batch was read under this instance's current holding of its shard (always, unshared)."""
        return self._shared is None or self._holding.get(batch.partition) == batch.holding

    def rewind(self, partitions: Iterable[str]) -> None:
        """Read these held shards again from their checkpoints (a window of them was not applied in full)."""
        for shard_id in partitions:
            lease = self._held.get(shard_id)
            if lease is not None and shard_id in self._holding:
                self._stop_reader(shard_id)
                self._hold(shard_id, self.start_of(lease))
        self._wake.set()

    def _hold(self, shard_id: str, position: Position | None) -> None:
        """A new holding of `shard_id`, read from `position` (the table's checkpoint)."""
        self._holdings += 1
        self._holding[shard_id] = self._holdings
        if position is None:
            self._resume.pop(shard_id, None)
        else:
            self._resume[shard_id] = position
        shard = self._shards.get(shard_id)
        if shard is None:
            self._rediscover = True  # another instance listed it first
        elif position == SHARD_END:
            self._finish(shard)
        else:
            shard.state, shard.caught_up = "waiting", False
            shard.finished.clear()

    def _stop_reader(self, shard_id: str) -> None:
        task = self._readers.pop(shard_id, None)
        if task is not None:
            task.cancel()

    def acknowledge(self, applied: dict[str, Position]) -> None:
        """Shards whose end is applied are finished: their children may start."""
        for shard_id, position in applied.items():
            shard = self._shards.get(shard_id)
            if position == SHARD_END and shard is not None:
                shard.state = "finished"
                shard.finished.set()
                self._resume[shard_id] = SHARD_END
                self._rediscover = True
                self._wake.set()

    def take_forgotten(self) -> list[str]:
        """Partitions whose checkpoint rows may be deleted now (finished shards past the stream's retention);
        each is handed out once."""
        gone, self._forgotten = self._forgotten, []
        return gone

    async def _wait_for_work(self) -> None:
        """Until the next discovery is due, a shard finished, or a reader failed (its error is raised). While a
        finished shard waits for its children to be listed, the next discovery is due sooner (with backoff)."""
        timeout = self._cfg.discovery_interval_seconds
        if self._childless:
            timeout = min(self._child_wait, timeout)
            self._child_wait = min(self._child_wait * 2, CHILD_WAIT_MAX_SECONDS)
        else:
            self._child_wait = CHILD_WAIT_FIRST_SECONDS
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                [waker, *self._readers.values()],
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waker.cancel()
        self._wake.clear()
        for shard_id, task in list(self._readers.items()):
            if task.done():
                del self._readers[shard_id]
                task.result()  # raises what the reader raised

    # ------------------------------------------------------------------------------------- discovery

    async def _open_stream(self) -> None:
        cfg = self._cfg
        if cfg.stream_arn is not None:
            self._stream_arn = cfg.stream_arn
        else:
            table = await self._call(self._dynamodb.describe_table, TableName=cfg.table)
            arn = table["Table"].get("LatestStreamArn")
            spec = table["Table"].get("StreamSpecification") or {}
            if not arn or not spec.get("StreamEnabled", True):
                raise SourceStopped(
                    f"source {self.name!r}: table {cfg.table!r} has no stream enabled; enable one with "
                    "StreamViewType NEW_AND_OLD_IMAGES (or NEW_IMAGE, KEYS_ONLY, OLD_IMAGE) and restart"
                )
            self._stream_arn = arn
        description = (await self._call(self._streams.describe_stream, StreamArn=self._stream_arn, Limit=1))[
            "StreamDescription"
        ]
        self._table = description.get("TableName") or cfg.table
        self._view_type = description.get("StreamViewType", "NEW_AND_OLD_IMAGES")
        key = [k["AttributeName"] for k in sorted(description.get("KeySchema", []), key=lambda k: k["KeyType"])]
        if key and sorted(key) != sorted(cfg.key):
            raise SourceStopped(
                f"source {self.name!r}: key = {cfg.key} but the stream's table key is {key}; templates and "
                "rules were checked against the configured key, so fix `key` and restart"
            )
        log.info("dynamodb stream opened", source=self.name, stream=self._stream_arn, view_type=self._view_type)

    async def _discover(self, *, latest: bool) -> None:
        """Refresh the shard map from DescribeStream (every page)."""
        rediscovering = self._rediscover
        listed, description = await self._list_shards()
        for delay in VANISHED_CONFIRM_SECONDS:
            if not self._vanished(listed):
                break
            # A loud stop makes the operator bootstrap again: make sure the shard is gone, not missed by a listing.
            await asyncio.sleep(delay)
            listed, description = await self._list_shards()
        status = description.get("StreamStatus")
        if status in ENDED_STREAM and not listed:
            raise SourceStopped(f"source {self.name!r}: the stream {self._stream_arn} is {status}")
        added = []
        first_positions: dict[str, Position] = {}  # for the leases of a first start with "latest"
        for shard_id, raw in listed.items():
            closed = shard_closed(raw)
            known = self._shards.get(shard_id)
            if known is not None:
                known.closed = closed
                continue
            shard = self._shards[shard_id] = Shard(shard_id, raw.get("ParentShardId"), closed)
            added.append(shard)
            if self._resume.get(shard_id) == SHARD_END:
                self._finish(shard)
            elif latest and shard_id not in self._resume:
                if closed:  # "latest" at the first start: what closed shards hold is history
                    self._finish(shard)
                    first_positions[shard_id] = SHARD_END
                else:
                    first_positions[shard_id] = ("LATEST",)
                    if self._shared is None:
                        self._resume[shard_id] = ("LATEST",)
        if self._shared is None:
            self._finish_parents_of_started_children(added)
        else:
            await self._register(listed, first_positions)
        for shard_id in self._vanished(listed):
            raise self._trimmed(shard_id, "the stream no longer lists the shard, and its end was not read")
        self._forget_trimmed_finished(listed)
        self._note_childless(status)
        if rediscovering:
            self._rediscover = False
        self._export_shard_counts()

    async def _register(self, listed: dict[str, dict[str, Any]], first_positions: dict[str, Position]) -> None:
        """Register the leases of listed shards not registered yet by this run, parents first."""
        assert self._shared is not None
        new = {shard_id: raw for shard_id, raw in listed.items() if shard_id not in self._registered}
        if not new:
            return
        depth: dict[str, int] = {}

        def depth_of(shard_id: str) -> int:
            if shard_id not in depth:
                depth[shard_id] = 0  # (a cycle in a hostile listing ends here)
                parent = listed.get(shard_id, {}).get("ParentShardId")
                depth[shard_id] = depth_of(parent) + 1 if parent in listed else 0
            return depth[shard_id]

        ordered = sorted(new, key=lambda shard_id: (depth_of(shard_id), shard_id))
        parents = {s: (new[s]["ParentShardId"],) if new[s].get("ParentShardId") else () for s in ordered}
        await self._shared.register(parents, first_positions)
        self._registered.update(new)

    async def _list_shards(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        return await list_shards(lambda params: self._call(self._streams.describe_stream, **params), self._stream_arn)

    def _vanished(self, listed: dict[str, dict[str, Any]]) -> list[str]:
        """Checkpointed shards that the stream stopped listing before their end was read: their records after the
        checkpoint were trimmed (DynamoDB Streams keeps 24 hours), during an outage or while this process ran."""
        vanished = []
        for shard_id, position in self._resume.items():
            if shard_id in listed or position in (SHARD_END, ("LATEST",)):
                continue
            known = self._shards.get(shard_id)
            if known is None or known.state in ("waiting", "reading"):
                vanished.append(shard_id)
        return vanished

    def _finish(self, shard: Shard) -> None:
        shard.state = "finished"
        shard.finished.set()

    def _finish_parents_of_started_children(self, added: list[Shard]) -> None:
        """A newly listed shard without a checkpoint is finished when one of its children has a checkpoint or is
        already read: reading it now would apply its older records after the child's newer ones."""
        changed = True
        while changed:  # up the lineage: a grandparent is finished through its finished parent
            changed = False
            for shard in added:
                if shard.state != "waiting" or shard.id in self._resume:
                    continue
                for child in self._shards.values():
                    if child.parent == shard.id and (child.id in self._resume or child.state != "waiting"):
                        log.info(
                            "shard without a checkpoint after its child was read; counted as finished",
                            source=self.name,
                            shard=shard.id,
                            child=child.id,
                        )
                        self._finish(shard)
                        changed = True
                        break

    def _forget_trimmed_finished(self, listed: dict[str, dict[str, Any]]) -> None:
        """`SHARD_END` rows of shards the stream no longer lists (past its retention) and whose child it lists
        are handed to the pipeline to delete. Nothing needs them: a parent that is not listed blocks no child, and
        a child that was read keeps its parent from being read again if it ever reappears."""
        parents = {raw.get("ParentShardId") for raw in listed.values()}
        finished = {shard_id for shard_id, position in self._resume.items() if position == SHARD_END}
        if self._shared is not None:  # shards other instances finished too (each is deleted once, by anyone)
            finished |= self._shared.finished() - self._forgetting
        gone = sorted(shard_id for shard_id in finished if shard_id not in listed and shard_id in parents)
        for shard_id in gone:
            self._resume.pop(shard_id, None)
            self._shards.pop(shard_id, None)  # finished: its children found it so, and now find no parent
            self._forgetting.add(shard_id)
        if gone:
            log.info("forgetting finished shards past the stream's retention", source=self.name, shards=gone)
            self._forgotten.extend(gone)

    def _note_childless(self, status: str | None) -> None:
        """Track finished shards whose children are not listed yet (see the module notes)."""
        if status in ENDED_STREAM:
            self._childless.clear()
            return
        parents = {shard.parent for shard in self._shards.values()}
        now = time.monotonic()
        childless = {
            shard.id: self._childless.get(shard.id, now)
            for shard in self._shards.values()
            if shard.state == "finished" and shard.id not in parents
        }
        self._childless = childless
        for shard_id, since in childless.items():
            if now - since > CHILD_WAIT_WARN_SECONDS and shard_id not in self._warned_childless:
                self._warned_childless.add(shard_id)
                log.warning(
                    "a finished shard's children are still not listed; waiting for them (the stream is enabled)",
                    source=self.name,
                    shard=shard_id,
                    waited_seconds=round(now - since),
                    stream_status=status,
                )

    def _start_readers(self, out: asyncio.Queue[ChangeBatch]) -> None:
        for shard in self._shards.values():
            if shard.state != "waiting" or shard.id in self._readers:
                continue
            if self._shared is not None:
                if shard.id not in self._holding:
                    continue  # another instance's (the coordinator took it only once its parent was at SHARD_END)
            else:
                parent = self._shards.get(shard.parent) if shard.parent else None
                if parent is not None and not parent.finished.is_set():
                    continue  # the parent's records go first (a parent the stream no longer lists was trimmed)
            shard.state = "reading"
            self._readers[shard.id] = asyncio.create_task(
                self._read_shard(shard, out), name=f"source:{self.name}:{shard.id}"
            )
        self._export_shard_counts()

    def _export_shard_counts(self) -> None:
        counts = {"waiting": 0, "reading": 0, "finished": 0}
        for shard in self._shards.values():
            counts["reading" if shard.state == "ended" else shard.state] += 1
        for state, count in counts.items():
            METRICS.shards.labels(source=self.name, state=state).set(count)

    # ---------------------------------------------------------------------------------------- reading

    async def _read_shard(self, shard: Shard, out: asyncio.Queue[ChangeBatch]) -> None:
        cfg = self._cfg
        holding = self._holding.get(shard.id, 0)
        resume = self._resume.get(shard.id)
        last_read = None if resume in (None, ("LATEST",), SHARD_START) else sequence_of(resume)
        iterator, issued = await self._iterator(shard.id, last_read, latest=resume == ("LATEST",))
        last_call = 0.0
        empty_pages = 0
        while True:
            pause = cfg.min_get_records_interval_seconds - (time.monotonic() - last_call)
            if pause > 0:
                await asyncio.sleep(pause)
            if time.monotonic() - issued > cfg.iterator_refresh_seconds:
                iterator, issued = await self._iterator(shard.id, last_read)
            last_call = time.monotonic()
            try:
                page = await self._call(self._streams.get_records, ShardIterator=iterator, Limit=cfg.limit)
            except _IteratorExpired:
                iterator, issued = await self._iterator(shard.id, last_read)
                continue
            self._m.polls.inc()
            self.polling = True
            self._m.up.set(1)
            records = page.get("Records") or []
            following = page.get("NextShardIterator")
            if records:
                empty_pages = 0
                shard.caught_up = False
                self._signalled_caught_up = False
                self.state = "polling"
                self._m.read.inc(len(records))
                last_read = _last_sequence_number(records, shard.id)
                changes = await self._translate(shard.id, records)
                await out.put(ChangeBatch(shard.id, changes, position_of(last_read), holding=holding))
            if following is None:
                shard.state = "ended"
                await out.put(ChangeBatch(shard.id, [], SHARD_END, holding=holding))
                log.info("shard read to its end", source=self.name, shard=shard.id)
                await shard.finished.wait()
                self._export_shard_counts()
                return
            iterator, issued = following, time.monotonic()
            if not records:
                self._m.empty_polls.inc()
                empty_pages += 1
                # DynamoDB answers empty pages before records too: a closed shard is at its head only at its
                # end, an open one after empty pages in a row.
                if not shard.caught_up and not shard.closed and empty_pages >= CAUGHT_UP_EMPTY_PAGES:
                    shard.caught_up = True
                    await self._maybe_caught_up(out)
                await asyncio.sleep(cfg.poll_interval_seconds)

    async def _maybe_caught_up(self, out: asyncio.Queue[ChangeBatch]) -> None:
        """Say "caught up" once every shard that can be read is read to its head."""
        shards = list(self._shards.values())
        if self._shared is not None:  # only the shards this instance holds (none: nothing to read)
            shards = [shard for shard in shards if shard.id in self._holding]
        elif not shards:
            return
        if self._signalled_caught_up or self._rediscover or self._childless:
            return
        for shard in shards:
            if shard.state == "finished":
                continue
            if shard.state != "reading" or not shard.caught_up:
                return
        self._signalled_caught_up = True
        self.state = "caught_up"
        await out.put(ChangeBatch(CAUGHT_UP, [], None, caught_up=True))

    async def _iterator(self, shard_id: str, after: str | None, *, latest: bool = False) -> tuple[str, float]:
        params: dict[str, Any] = {"StreamArn": self._stream_arn, "ShardId": shard_id}
        if after is not None:
            params.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after)
        else:
            params["ShardIteratorType"] = "LATEST" if latest else "TRIM_HORIZON"
        try:
            response = await self._call(self._streams.get_shard_iterator, **params)
        except _ShardGone as exc:
            raise self._trimmed(shard_id, str(exc.__cause__)) from exc
        return response["ShardIterator"], time.monotonic()

    # ------------------------------------------------------------------------------------ translation

    async def _translate(self, shard_id: str, records: list[dict[str, Any]]) -> list[GraphChange]:
        fetched = await self._current_items(records) if self._view_type in ("KEYS_ONLY", "OLD_IMAGE") else None
        changes: list[GraphChange] = []
        mapper_changes, addition = self._mapper.changes, self._mapper.addition
        keep_origin = self._keep_origin
        for record in records:
            # the common case inline (what `_sequence_number` and `_epoch_ms` accept first), the rest through them
            body = record.get("dynamodb") if record.__class__ is dict else None
            sequence = body.get("SequenceNumber") if body.__class__ is dict else None
            if not (
                sequence.__class__ is str
                and len(sequence) <= SEQUENCE_WIDTH
                and sequence.isascii()
                and sequence.encode().isdigit()  # (bytes' digit test is a table lookup a byte; str's a Unicode one)
            ):
                sequence = _sequence_number(record)
                if sequence is None:
                    reason = "the record has no dynamodb.SequenceNumber (a digit string)"
                    self._dead_letter(shard_id, record, None, reason)
                    continue
                body = record["dynamodb"]
            position = (sequence.zfill(SEQUENCE_WIDTH),)  # `position_of`
            created = body.get("ApproximateCreationDateTime")
            if created.__class__ is float and 0.0 <= created < 9.2e15:
                commit_ms = int(created * 1000)
            else:
                commit_ms = _epoch_ms(created)
            keys = body.get("Keys") or {}
            event = record.get("eventName", "")
            new = body.get("NewImage")
            if fetched is not None and event != "REMOVE":
                new = fetched.get(_key_of(keys))
            identity = record.get("userIdentity")
            ttl = (
                identity.__class__ is dict
                and identity.get("Type") == "Service"
                and identity.get("PrincipalId") == TTL_PRINCIPAL
            )
            old = body.get("OldImage")
            # for event sinks (docs/events.md): the record's own words, by reference
            origin = (
                {"eventName": event, "ttl": ttl, "keys": keys, "newImage": new, "oldImage": old}
                if keep_origin
                else None
            )
            try:
                # the common record's one change in one call; `changes` for the others (and the same outcome)
                change = addition(event, keys, new, old, position, shard_id, commit_ms)
                if change is not None:
                    if origin is not None:
                        change.origin = origin
                    changes.append(change)
                    continue
                outcome = mapper_changes(
                    event,
                    keys=keys,
                    new=new,
                    old=old,
                    position=position,
                    partition=shard_id,
                    commit_ms=commit_ms,
                    ttl=ttl,
                )
            except UnmappableItem as exc:
                self._dead_letter(shard_id, record, position, exc.reason)
                continue
            except (MemoryError, RecursionError):
                raise
            except Exception as exc:  # a record no rule foresaw must not stop the shard on every restart
                reason = f"internal error while mapping the record: {type(exc).__name__}: {str(exc)[:300]}"
                self._dead_letter(shard_id, record, position, reason)
                continue
            if outcome.skipped is not None:
                skipped = self._skipped.get(outcome.skipped)
                if skipped is None:  # the counter of this reason, looked up once
                    skipped = self._skipped[outcome.skipped] = METRICS.records_skipped.labels(
                        source=self.name, reason=outcome.skipped
                    )
                skipped.inc()
            if origin is not None:
                for change in outcome.changes:
                    change.origin = origin
            changes.extend(outcome.changes)
        return changes

    async def _current_items(self, records: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        """The items named by the page's INSERT / MODIFY records as they are now (consistent read)."""
        wanted: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in records:
            if record.get("eventName") != "REMOVE":
                keys = record["dynamodb"]["Keys"]
                wanted[_key_of(keys)] = _binary_keys(keys)
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        pending = list(wanted.values())
        attempt = 0
        while pending:
            chunk, pending = pending[:100], pending[100:]
            response = await self._call(
                self._dynamodb.batch_get_item,
                RequestItems={self._table: {"Keys": chunk, "ConsistentRead": True}},
            )
            for item in response.get("Responses", {}).get(self._table, []):
                found[_key_of({k: item[k] for k in self._cfg.key})] = item
            unprocessed = response.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
            if unprocessed:
                attempt += 1
                await asyncio.sleep(full_jitter(attempt, 0.05, 5.0))
                pending.extend(unprocessed)
        return found

    def _dead_letter(self, shard_id: str, record: Any, position: Position | None, reason: str) -> None:
        self._dead_letters.write(
            stage="translate",
            source=self.name,
            reason=reason,
            entries=[{"position": list(position) if position else None, "partition": shard_id, "record": record}],
        )
        self._m.dead_lettered.inc()
        log.error(
            "stream record cannot be mapped; written to the dead-letter file",
            source=self.name,
            shard=shard_id,
            position=position[0] if position else None,
            reason=reason,
            dead_letter_file=str(self._dead_letters.path),
        )

    # ----------------------------------------------------------------------------------------- calls

    async def _call(self, method: Any, **params: Any) -> Any:
        """One API call, retried with full jitter while the failure is retryable."""
        attempt = 0
        while True:
            try:
                response = await method(**params)
            except Exception as exc:
                code = error_code(exc)
                if code == "ExpiredIteratorException":
                    raise _IteratorExpired() from exc
                if code == "TrimmedDataAccessException":
                    raise self._trimmed(params.get("ShardId", "?"), str(exc)) from exc
                if code == "ResourceNotFoundException" and "ShardId" in params:
                    raise _ShardGone() from exc
                cls = classify_aws_error(exc)
                if not cls.retryable:
                    raise
                attempt += 1
                delay = full_jitter(attempt, 0.1, 10.0, max_exponent=10)
                if self._m.retried(cls.reason, attempt):
                    self.polling = False
                log.warning(
                    "dynamodb streams call failed, retrying",
                    source=self.name,
                    operation=getattr(method, "__name__", "?"),
                    reason=cls.reason,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=str(exc)[:300],
                )
                await asyncio.sleep(delay)
                continue
            return response

    def _trimmed(self, shard_id: str, detail: str) -> StreamTrimmed:
        self.state = "expired"
        METRICS.stream_expired.labels(source=self.name).set(1)
        return StreamTrimmed(
            f"source {self.name!r}: shard {shard_id} of {self._stream_arn} no longer holds the records after "
            f"the checkpoint ({detail}); DynamoDB Streams keeps 24 hours, so changes were lost to this replica. "
            "Bootstrap the target again from a full copy of the table, then restart."
        )


class _IteratorExpired(Exception):
    pass


class _ShardGone(Exception):
    pass


def _key_of(keys: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """A hashable key, the same for a record's keys (binary as base64 text) and an item's (binary as bytes)."""
    return tuple(
        sorted(
            (name, tag, base64.b64encode(raw).decode() if tag == "B" and isinstance(raw, bytes) else raw)
            for name, value in keys.items()
            for tag, raw in value.items()
        )
    )


def _binary_keys(keys: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A record's keys for a request: binary key values back to bytes (botocore would encode text again)."""
    return {
        name: {"B": base64.b64decode(value["B"])} if isinstance(value.get("B"), str) else value
        for name, value in keys.items()
    }


def _epoch_ms(created: Any) -> int:
    """`ApproximateCreationDateTime`: epoch seconds on the wire (the records are a JSON document, see
    `daemon.aws.MODEL_EXTRAS`); a datetime if a client parsed it. Anything unreadable is 0 (no commit time)."""
    try:
        if isinstance(created, int | float) and not isinstance(created, bool):
            millis = int(created * 1000)
        elif hasattr(created, "timestamp"):
            millis = int(created.timestamp() * 1000)
        else:
            return 0
    except (OverflowError, ValueError, TypeError, OSError):
        return 0
    return millis if 0 <= millis < 2**63 else 0


def _sequence_number(record: Any) -> str | None:
    """A record's sequence number, or None when it has no readable one."""
    body = record.get("dynamodb") if isinstance(record, dict) else None
    sequence = body.get("SequenceNumber") if isinstance(body, dict) else None
    if isinstance(sequence, str) and sequence.isascii() and sequence.isdigit() and len(sequence) <= SEQUENCE_WIDTH:
        return sequence
    return None


def _last_sequence_number(records: list[Any], shard_id: str) -> str:
    """Where a page ends: the sequence number of its last record that has one (the next read starts after it)."""
    for record in reversed(records):
        sequence = _sequence_number(record)
        if sequence is not None:
            return sequence
    # Without a position the shard cannot be followed past this page; re-reading it would loop.
    raise SourceStopped(f"shard {shard_id}: a GetRecords page had no record with a readable SequenceNumber")
