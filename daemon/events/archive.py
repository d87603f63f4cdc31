"""The `s3` event sink: an archive of CloudEvents, one gzip newline-delimited JSON object per window.

Room in the design: an event sink beside Kinesis, SQS and the rest (docs/events.md "S3"), fed by its own
`ArchiveLane` of the fan-out, with the same retries, metrics and dead letters (`EventDelivery`). What sets it
apart is that a replay must overwrite the objects it wrote before instead of adding new ones, so an object's
key and contents are a function of the stream, never of timing or of where a run resumed:

* **Key.** `<prefix>source=<source>/date=<YYYY-MM-DD>/[partition=<shard>/]<first>-<last>.ndjson.gz`: the
  commit date of the window's events (UTC; `unknown` when the source gives no time) and the positions of its
  first and last events, each part zero-padded so keys sort in stream order (`position_text`). A DynamoDB
  source's windows are per shard.
* **Window rule.** A window starts at the first routed event after the lane's checkpoint and is cut **before**
  the group of events (all events of one source record, so one position, always stay together) that would
  take it past `object_max_events` or `object_max_bytes` (uncompressed), or whose commit date differs; and at
  a shard's end. These cuts depend on the events from the window's start alone.
* **Checkpoint only at cuts.** The lane's checkpoint never passes an event of the window still open (it stays
  at the position just before the window), and is written right after each object, before the next object is
  begun. So a restart begins every partition at a window's start and, by the rule above, cuts the same windows
  again, with the same keys and contents (gzip with no timestamp: byte-identical).
* **Cuts made by time.** A window that does not fill is written once it is `flush_seconds` old (and, with `run
  --exit-when-idle`, as soon as the source is caught up), so a sparse route (TTL deletions of a busy table)
  neither delays its events nor holds its checkpoint back for long: a checkpoint older than the stream's
  retention would stop the source. Such a cut is not a function of the stream, so the object records it: on
  the first window of a partition after a start, the lane lists the keys that begin at that window's first
  position, and when an earlier run wrote one (and stopped before its checkpoint), the window is cut at that
  object's last position again. Only that first window needs the listing: every object is checkpointed before
  the next is begun, so at most one object per partition lies beyond the checkpoint.
* An event larger than `object_max_bytes` is dead-lettered (reason `too_large`) before it joins a window;
  throttling (`SlowDown`), 5xx, `RequestTimeout`, timeouts and connection errors are retried with full jitter;
  anything else (`NoSuchBucket`, `AccessDenied`) ends the run and the supervisor restarts it with backoff.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.events.cloudevents import Route, events_of
from daemon.events.fanout import EventLane
from daemon.events.sinks import Entry, EventSink, encode
from daemon.model import SHARD_END, ChangeBatch, Position
from daemon.sinks.base import RETRY, ErrorClass

if TYPE_CHECKING:
    from daemon.config import S3SinkConfig

POSITION_WIDTH = 20  # digits of each integer part of a position (a Neptune commitNum is at most 19)
SUFFIX = ".ndjson.gz"
# S3 error codes worth retrying (besides any 5xx and 429, which `classify_aws_error` retries).
_S3_RETRYABLE = {"SlowDown": "throttling", "RequestTimeout": "timeout", "InternalError": "server_error",
                 "ServiceUnavailable": "server_error", "OperationAborted": "conflict"}  # fmt: skip


def position_text(position: Sequence[int | str]) -> str:
    """A position as key text that sorts like the position: integers zero-padded, sequence numbers (already
    zero-padded strings) as they are, parts joined by dots."""
    return ".".join(f"{p:0{POSITION_WIDTH}d}" if isinstance(p, int) else str(p) for p in position)


def event_date(event: dict[str, Any]) -> str:
    """The UTC commit date of an event (its `time`), or `unknown`."""
    stamp = event.get("time")
    return stamp[:10] if stamp else "unknown"


def window_prefix(prefix: str, source: str, date: str, partition: str) -> str:
    return f"{prefix}source={source}/date={date}/" + (f"partition={partition}/" if partition else "")


def object_key(prefix: str, source: str, first: dict[str, Any], last: dict[str, Any]) -> str:
    """The key of the object holding the events `first` .. `last` (one partition, one date)."""
    data = first["data"]
    where = window_prefix(prefix, source, event_date(first), data.get("partition", ""))
    return f"{where}{position_text(data['position'])}-{position_text(last['data']['position'])}{SUFFIX}"


class S3Sink(EventSink):
    """`PutObject` of one window: the events as newline-delimited JSON, gzip-compressed (no timestamp in the
    header, so the same events make the same bytes)."""

    kind = "s3"
    keyed = False  # one call = one object, in order
    max_records = 1 << 62  # the lane cuts windows; a delivery call is never split further
    max_call_bytes = 1 << 62

    def __init__(
        self,
        name: str,
        *,
        source: str,
        bucket: str,
        prefix: str,
        region: str,
        endpoint: str | None,
        profile: str | None,
        timeout: float,
        object_max_bytes: int,
        compression_level: int = 6,
    ) -> None:
        self.name, self.source, self.bucket, self.prefix = name, source, bucket, prefix
        self.region, self.endpoint, self.profile, self.timeout = region, endpoint, profile, timeout
        self.max_record_bytes = object_max_bytes
        self.compression_level = compression_level
        self.client: Any = None
        self._stack: AsyncExitStack | None = None
        self._built: tuple[list[Entry], str, bytes] | None = None  # the last object, kept for a retried call
        self.objects_written = 0

    async def start(self) -> None:
        if self.client is not None:
            return
        from daemon.bootstrap.s3 import open_s3_client

        stack = AsyncExitStack()
        self.client = await open_s3_client(
            stack, endpoint=self.endpoint, region=self.region, profile=self.profile, timeout_seconds=self.timeout
        )
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack, self.client, self._built = None, None, None

    def entry(self, event: dict[str, Any]) -> Entry:
        return Entry(event, encode(event), "")

    async def build(self, entries: list[Entry]) -> tuple[str, bytes]:
        """The key and gzip body of the object holding `entries` (compressed off the event loop)."""
        if self._built is not None and self._built[0] is entries:
            return self._built[1], self._built[2]
        key = object_key(self.prefix, self.source, entries[0].event, entries[-1].event)
        text = b"\n".join([e.body for e in entries]) + b"\n"
        body = await asyncio.to_thread(gzip.compress, text, self.compression_level, mtime=0)
        self._built = (entries, key, body)
        return key, body

    async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
        key, body = await self.build(entries)
        await self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType="application/gzip",  # (not Content-Encoding: a download stays the .gz its name says)
            Metadata={"events": str(len(entries)), "first-id": entries[0].event["id"],
                      "last-id": entries[-1].event["id"]},
        )  # fmt: skip
        self._built = None
        self.objects_written += 1
        return [None] * len(entries)

    async def window_end(self, date: str, partition: str, first: str) -> str | None:
        """The last position (as key text) of an object already written that begins at `first`, if any."""
        start = window_prefix(self.prefix, self.source, date, partition) + first + "-"
        answer = await self.client.list_objects_v2(Bucket=self.bucket, Prefix=start, MaxKeys=10)
        ends = [o["Key"][len(start) : -len(SUFFIX)] for o in answer.get("Contents", []) if o["Key"].endswith(SUFFIX)]
        return max(ends) if ends else None

    def classify(self, exc: BaseException) -> ErrorClass:
        from daemon.aws import classify_aws_error, error_code

        code = error_code(exc)
        if code in _S3_RETRYABLE:
            return RETRY[_S3_RETRYABLE[code]]
        found = classify_aws_error(exc)
        if found.data_rejected:  # S3 refuses no object for its bytes: a refusal is the bucket's or the config's
            return ErrorClass(False, "client_error")
        return found


@dataclass(slots=True)
class _Window:
    """The open window of one partition."""

    date: str
    before: Position | None  # the last position handed over before it: the checkpoint while it is open
    cut_at: str | None  # an earlier run's object begins where this one does and ends here: cut here again
    opened: float = field(default_factory=time.monotonic)
    entries: list[Entry] = field(default_factory=list)
    size: int = 0


class ArchiveLane(EventLane):
    """An `s3` sink's branch of a source: windows cut by the rule in the module docstring, an object each."""

    sink: S3Sink

    def __init__(
        self,
        source: str,
        sink: S3Sink,
        route: Route,
        *,
        object_max_events: int,
        object_max_bytes: int,
        flush_seconds: float,
        exit_when_idle: bool = False,
        **lane: Any,
    ) -> None:
        super().__init__(source, sink, route, **lane)
        self.max_events, self.max_bytes, self.flush_seconds = object_max_events, object_max_bytes, flush_seconds
        self.exit_when_idle = exit_when_idle  # write a window at once when caught up: the run is about to end
        self.windows: dict[str, _Window] = {}
        self.seen: dict[str, Position] = {}  # per partition, the last position handed to this lane
        self.looked_up: set[str] = set()  # partitions whose first window since the start was looked up in S3

    @property
    def idle(self) -> bool:
        return super().idle and not self.windows

    async def run(self, checkpoints: Any, on_applied: Any) -> None:
        self.windows, self.seen, self.looked_up = {}, {}, set()  # a restart reads from the checkpoints again
        self._store, self._told = checkpoints, on_applied
        while True:
            batch = await self._next()
            if batch is None:  # a window is `flush_seconds` old
                self.busy = True
                now = time.monotonic()
                for partition in [p for p, w in self.windows.items() if now - w.opened >= self.flush_seconds]:
                    await self._flush(partition)
            else:
                window = self._gather(batch)
                for b in window:
                    await self._take(b)
                self.caught_up = window[-1].caught_up
                if self.caught_up and self.exit_when_idle and self.queue.empty():  # the run is about to end
                    for partition in list(self.windows):
                        await self._flush(partition)
                reached = {p: pos for p, pos in self.seen.items() if p not in self.windows}
                reached.update({p: w.before for p, w in self.windows.items() if w.before is not None})
                await self._checkpoint(checkpoints, on_applied, reached)
            self.busy = False
            if self.stopping:
                return  # a drain: open windows are read again from the checkpoint by the next run

    async def _next(self) -> ChangeBatch | None:
        """The next batch, or None once the oldest open window is `flush_seconds` old."""
        if not self.windows:
            return await self.queue.get()
        wait = self.flush_seconds - (time.monotonic() - min(w.opened for w in self.windows.values()))
        if wait <= 0:
            return None
        if not self.queue.empty():
            return self.queue.get_nowait()
        with suppress(TimeoutError):
            return await asyncio.wait_for(self.queue.get(), wait)
        return None

    async def _take(self, batch: ChangeBatch) -> None:
        partition = batch.partition
        if batch.changes:
            entries = self.delivery.entries(events_of(self.source, batch.changes, self.route))  # too large: dead
            start = 0
            while start < len(entries):
                position = entries[start].event["data"]["position"]
                end = start + 1
                while end < len(entries) and entries[end].event["data"]["position"] == position:
                    end += 1
                await self._add(partition, entries[start:end])
                start = end
        if batch.position is not None:
            self.seen[partition] = batch.position
            if batch.position == SHARD_END and partition in self.windows:
                await self._flush(partition)  # the shard has no more records: a cut every run makes

    async def _add(self, partition: str, group: list[Entry]) -> None:
        """Add the events of one source record to the partition's window, cutting before them if they do not
        fit."""
        first = group[0].event
        text, date = position_text(first["data"]["position"]), event_date(first)
        size = sum(e.size + 1 for e in group)
        window = self.windows.get(partition)
        if window is not None and (
            date != window.date
            or (
                text > window.cut_at
                if window.cut_at is not None
                else len(window.entries) + len(group) > self.max_events or window.size + size > self.max_bytes
            )
        ):
            await self._flush(partition)
            window = None
        if window is None:
            cut_at = None
            if partition not in self.looked_up:
                await self.sink.start()
                cut_at = await self.delivery.retrying(lambda: self.sink.window_end(date, partition, text))
                self.looked_up.add(partition)
            window = self.windows[partition] = _Window(date, self.seen.get(partition), cut_at)
        window.entries.extend(group)
        window.size += size
        self.seen[partition] = tuple(first["data"]["position"])
        if window.cut_at is not None and text >= window.cut_at:
            await self._flush(partition)

    async def _flush(self, partition: str) -> None:
        """Write the partition's window as one object, then checkpoint everything handed over up to here."""
        window = self.windows.pop(partition)
        self.fence_window({partition})
        await self.sink.start()
        await self.delivery.deliver_entries(window.entries)
        await self._checkpoint(self._store, self._told, {partition: self.seen[partition]})

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "objects_written": self.sink.objects_written,
            "open_window_events": sum(len(w.entries) for w in self.windows.values()),
        }


def archive_lane(
    name: str, source: str, cfg: S3SinkConfig, route: Route, *, exit_when_idle: bool, **lane: Any
) -> ArchiveLane:
    """The lane of the `[sinks.NAME] kind = "s3"` table `cfg` for one source (`fan_out`)."""
    sink = S3Sink(
        name,
        source=source,
        bucket=cfg.bucket,
        prefix=cfg.prefix,
        region=cfg.region,
        endpoint=cfg.endpoint,
        profile=cfg.profile,
        timeout=cfg.request_timeout_seconds,
        object_max_bytes=cfg.object_max_bytes,
        compression_level=cfg.compression_level,
    )
    return ArchiveLane(
        source,
        sink,
        route,
        object_max_events=cfg.object_max_events,
        object_max_bytes=cfg.object_max_bytes,
        flush_seconds=cfg.flush_seconds,
        exit_when_idle=exit_when_idle,
        **lane,
    )
