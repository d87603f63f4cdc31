"""Snapshot of a DynamoDB source: every shard's position first, then the table by parallel Scan segments.

Room in the design: bootstrap steps 1 and 2 for `kind = "dynamodb"` sources (a `SnapshotReader`).

* **Position first.** `DescribeStream` (every page) before the scan: a shard that is closed already holds only
  writes the scan will see, so it is handed off as finished (`SHARD_END`); a shard that is open is handed off
  as `SHARD_START`, read from `TRIM_HORIZON` by `run`. Replaying an open shard's older records is harmless: a
  record carries the whole item, records of one item come in order along the shard lineage, so the replay
  ends with each item as it is (the same argument as for streaming, docs/dynamodb.md). `run` must start
  within the stream's 24 hours.
* **Scan** in `scan_segments` parallel segments (`Segment` / `TotalSegments`), strongly consistent by default
  (a write acknowledged before the position is in the copy), each page `read_page_size` items at most. The
  segments share a budget of read capacity: `scan_capacity_share` of the table's provisioned read capacity, or
  `scan_read_units_per_second` (needed to limit an on-demand table); a page's `ConsumedCapacity` is paid before
  the next page of any segment starts.
* Items become elements through the source's own rules (`daemon.mapping.ItemMapper`), exactly as a stream
  INSERT would: vertex items are yielded as they come, edge items wait in a disk spool until the scan is over,
  and every endpoint that no item defines is yielded as a bare vertex (no label, no property) at the end of
  the vertex pass. So every edge's endpoints are in the vertex pass (`dangling` stays 0), and edges say
  `merge_endpoints`, as a streamed edge item does. An item no rule matches is counted; one a rule cannot map
  goes to the dead-letter file (stage `snapshot`) with its segment and the reason.
* Two items that map to the same vertex id: the first one read wins and the others are counted in
  `duplicates` (streaming would keep the last one written; such rules are a config mistake).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog

from daemon.aws import open_client
from daemon.bootstrap.records import BootstrapError, SnapshotEdge, SnapshotVertex
from daemon.bootstrap.retry import with_retries
from daemon.bootstrap.spool import Spool
from daemon.config import BootstrapConfig, DynamoDBSourceConfig
from daemon.deadletter import DeadLetterFile
from daemon.mapping import ItemMapper, UnmappableItem
from daemon.model import SHARD_END, SHARD_START, Position
from daemon.sources.dynamodb import list_shards, shard_closed

log = structlog.get_logger("daemon.bootstrap.dynamodb")

SCAN_ATTEMPTS = 20  # throttled pages are retried this many times with full jitter before the bootstrap stops


class ReadBudget:
    """Read capacity units per second shared by the scan segments (None: unlimited).

    A page may overdraw the budget (its cost is known only afterwards); the next page of any segment waits
    until the debt is paid back at the configured rate. One second of units may be saved up."""

    def __init__(self, units_per_second: float | None) -> None:
        self.rate = units_per_second
        self._available = units_per_second or 0.0
        self._stamp = time.monotonic()
        self.waited_seconds = 0.0

    def _refill(self) -> None:
        now = time.monotonic()
        assert self.rate is not None
        self._available = min(self.rate, self._available + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        if self.rate is None:
            return
        while True:
            self._refill()
            if self._available > 0:
                return
            pause = -self._available / self.rate + 0.001
            self.waited_seconds += pause
            await asyncio.sleep(pause)

    def spend(self, units: float) -> None:
        if self.rate is not None:
            self._refill()
            self._available -= units


class _EdgeSpool(Spool[SnapshotEdge]):
    """Edge elements, until the scan is over."""

    def encode(self, edge: SnapshotEdge) -> list[Any]:
        return [edge.id, edge.type, edge.from_id, edge.to_id, edge.props]

    def decode(self, fields: list[Any]) -> SnapshotEdge:
        edge_id, edge_type, from_id, to_id, props = fields
        return SnapshotEdge(edge_id, edge_type, from_id, to_id, props, merge_endpoints=True)


class DynamoDBSnapshotReader:
    def __init__(
        self,
        dynamodb: Any,
        streams: Any,
        cfg: DynamoDBSourceConfig,
        settings: BootstrapConfig,
        *,
        spool_dir: Path | None = None,
        dead_letters: DeadLetterFile | None = None,
    ) -> None:
        self.dynamodb = dynamodb
        self.streams = streams
        self.cfg = cfg
        self.source = cfg.name
        self.settings = settings
        self.mapper = ItemMapper(cfg)
        self.dead_letters = dead_letters
        self.spool_dir = spool_dir
        self.dangling = 0  # always: bare endpoint vertices are added
        self.dead_lettered = 0
        self.unmatched = 0  # items no rule maps
        self.duplicates = 0  # vertex items whose id an earlier item had
        self.items_read = 0
        self.read_units = 0.0
        self.read_seconds = 0.0  # wall time of the scan
        self.budget: ReadBudget | None = None
        self.table = cfg.table
        self._edges: _EdgeSpool | None = None

    # -------------------------------------------------------------------------------------- position

    async def position_before(self) -> dict[str, Position]:
        stream_arn = await self._stream_arn()
        shards, description = await list_shards(
            lambda params: with_retries(lambda: self.streams.describe_stream(**params), what="DescribeStream"),
            stream_arn,
        )
        self.table = self.table or description.get("TableName")
        positions = {shard_id: SHARD_END if shard_closed(shard) else SHARD_START for shard_id, shard in shards.items()}
        if SHARD_START not in positions.values():
            raise BootstrapError(
                f"source {self.source!r}: the stream {stream_arn} has no open shard yet (a stream just enabled "
                "lists one within seconds); run bootstrap again in a minute"
            )
        log.info(
            "stream position recorded",
            source=self.source,
            stream=stream_arn,
            open_shards=sum(p == SHARD_START for p in positions.values()),
            closed_shards=sum(p == SHARD_END for p in positions.values()),
        )
        return positions

    async def _stream_arn(self) -> str:
        if self.table is None:
            assert self.cfg.stream_arn is not None
            return self.cfg.stream_arn
        table = (await with_retries(lambda: self.dynamodb.describe_table(TableName=self.table), what="DescribeTable"))[
            "Table"
        ]
        self.budget = ReadBudget(self._read_rate(table))
        arn = self.cfg.stream_arn or table.get("LatestStreamArn")
        spec = table.get("StreamSpecification") or {}
        if not arn or not spec.get("StreamEnabled", True):
            raise BootstrapError(
                f"source {self.source!r}: table {self.table!r} has no stream enabled; enable one (StreamViewType "
                "NEW_AND_OLD_IMAGES) before bootstrapping, so the changes made during the copy are not lost"
            )
        return str(arn)

    def _read_rate(self, table: dict[str, Any]) -> float | None:
        s = self.settings
        if s.scan_read_units_per_second is not None:
            return s.scan_read_units_per_second
        provisioned = (table.get("ProvisionedThroughput") or {}).get("ReadCapacityUnits") or 0
        if provisioned > 0:
            return provisioned * s.scan_capacity_share
        on_demand = (table.get("OnDemandThroughput") or {}).get("MaxReadRequestUnits") or 0
        if on_demand > 0:
            return on_demand * s.scan_capacity_share
        log.warning(
            "on-demand table without a read limit: the scan is not rate limited; set "
            "bootstrap.scan_read_units_per_second to leave capacity to the application",
            source=self.source,
            table=self.table,
        )
        return None

    # ---------------------------------------------------------------------------------------- vertices

    async def vertices(self) -> AsyncIterator[list[SnapshotVertex]]:
        if self.table is None:
            raise BootstrapError(f"source {self.source!r}: set `table` to bootstrap (a Scan needs the table name)")
        if self.budget is None:
            self.budget = ReadBudget(self.settings.scan_read_units_per_second)
        self._edges = _EdgeSpool(self.spool_dir, name="dynamodb-edges")
        segments = self.settings.scan_segments
        pages: asyncio.Queue[tuple[int, list[dict[str, Any]]] | BaseException | None] = asyncio.Queue(
            maxsize=2 * segments
        )
        started = time.perf_counter()
        tasks = [asyncio.create_task(self._scan_segment(i, segments, pages)) for i in range(segments)]
        vertex_ids: set[str] = set()
        endpoints: set[str] = set()
        running = segments
        try:
            while running:
                entry = await pages.get()
                if entry is None:
                    running -= 1
                    continue
                if isinstance(entry, BaseException):
                    raise entry
                segment, items = entry
                page = self._map_page(segment, items, vertex_ids, endpoints)
                if page:
                    yield page
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.read_seconds += time.perf_counter() - started
        bare = [SnapshotVertex(vertex_id, ()) for vertex_id in endpoints - vertex_ids]
        for i in range(0, len(bare), self.settings.read_page_size):
            yield bare[i : i + self.settings.read_page_size]
        log.info(
            "table scanned",
            source=self.source,
            items=self.items_read,
            vertices=len(vertex_ids),
            bare_endpoints=len(bare),
            edges=self._edges.count,
            unmatched=self.unmatched,
            duplicate_vertex_ids=self.duplicates,
            read_units=round(self.read_units, 1),
            budget_wait_seconds=round(self.budget.waited_seconds, 2),
            seconds=round(self.read_seconds, 2),
        )

    async def _scan_segment(
        self, segment: int, total: int, out: asyncio.Queue[tuple[int, list[dict[str, Any]]] | BaseException | None]
    ) -> None:
        s = self.settings
        params: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": s.scan_consistent_read,
            "ReturnConsumedCapacity": "TOTAL",
            "Limit": s.read_page_size,
        }
        if total > 1:
            params.update(Segment=segment, TotalSegments=total)
        try:
            while True:
                assert self.budget is not None
                await self.budget.acquire()
                response = await with_retries(
                    lambda: self.dynamodb.scan(**params), what=f"Scan segment {segment}", attempts=SCAN_ATTEMPTS
                )
                units = float((response.get("ConsumedCapacity") or {}).get("CapacityUnits") or 0.0)
                self.budget.spend(units)
                self.read_units += units
                items = response.get("Items") or []
                if items:
                    await out.put((segment, items))
                last = response.get("LastEvaluatedKey")
                if not last:
                    break
                params["ExclusiveStartKey"] = last
            await out.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await out.put(exc)

    def _map_page(
        self, segment: int, items: list[dict[str, Any]], vertex_ids: set[str], endpoints: set[str]
    ) -> list[SnapshotVertex]:
        assert self._edges is not None
        page: list[SnapshotVertex] = []
        edges: list[SnapshotEdge] = []
        self.items_read += len(items)
        for item in items:
            try:
                element = self.mapper.element(item)
            except UnmappableItem as exc:
                self._dead_letter(segment, item, exc.reason)
                continue
            if element is None:
                self.unmatched += 1
            elif element.vertex:
                if element.id in vertex_ids:
                    self.duplicates += 1
                    continue
                vertex_ids.add(element.id)
                page.append(SnapshotVertex(element.id, (element.name,), element.properties or {}))
            else:
                assert element.from_id is not None and element.to_id is not None
                endpoints.add(element.from_id)
                endpoints.add(element.to_id)
                edges.append(
                    SnapshotEdge(element.id, element.name, element.from_id, element.to_id, element.properties or {})
                )
        self._edges.add(edges)
        return page

    def _dead_letter(self, segment: int, item: dict[str, Any], reason: str) -> None:
        self.dead_lettered += 1
        log.error("table item cannot be mapped", source=self.source, segment=segment, reason=reason)
        if self.dead_letters is not None:
            self.dead_letters.write(
                stage="snapshot",
                source=self.source,
                reason=reason,
                entries=[{"table": self.table, "segment": segment, "item": item}],
            )

    # ------------------------------------------------------------------------------------------- edges

    async def edges(self) -> AsyncIterator[list[SnapshotEdge]]:
        if self._edges is None:
            raise RuntimeError("edges() before the vertex pass")
        for page in self._edges.chunks(self.settings.read_page_size):  # a local file: well under 1 ms a page
            yield page
            await asyncio.sleep(0)

    def close(self) -> None:
        if self._edges is not None:
            self._edges.close()


async def open_dynamodb_snapshot_reader(
    stack: AsyncExitStack,
    cfg: DynamoDBSourceConfig,
    settings: BootstrapConfig,
    *,
    spool_dir: Path | None = None,
    dead_letters: DeadLetterFile | None = None,
) -> DynamoDBSnapshotReader:
    """A reader of the table a `dynamodb` source config names, its clients bound to `stack`."""
    common = {"region": cfg.region, "profile": cfg.profile, "timeout_seconds": max(cfg.request_timeout_seconds, 60.0)}
    dynamodb = await open_client(stack, "dynamodb", endpoint=cfg.endpoint, **common)
    streams = await open_client(stack, "dynamodbstreams", endpoint=cfg.streams_endpoint or cfg.endpoint, **common)
    reader = DynamoDBSnapshotReader(dynamodb, streams, cfg, settings, spool_dir=spool_dir, dead_letters=dead_letters)
    stack.callback(reader.close)
    return reader
