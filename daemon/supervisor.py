"""The supervisor: builds sinks and pipelines from the config, keeps them running, drains on SIGTERM.

* Each source's pipeline runs in its own task; a crash (anything but a stream expiry) is logged and the
  pipeline restarts from its checkpoint after an exponential backoff capped at `restart_backoff_max_seconds`;
  the backoff starts again from 1 s after a run that stayed up `HEALTHY_RUN_SECONDS`. From a crash until the
  pipeline applies a window again, readiness is false and says why (a poison change that keeps crashing it
  is visible, not hidden behind restarts).
* A sink call (a batch, an edge-type lookup, an index) unanswered for `UNANSWERED_CALL_SECONDS` (a paused
  engine, a hung connection) makes the daemon not ready with that reason, long before the call's own
  `request_timeout_seconds` ends it.
* An expired stream stops that source for good (state `expired`, `graph_replicator_stream_expired` = 1,
  readiness false) while the process keeps serving metrics so the alert can fire; so does an unreadable line
  in a file source's input (`CaptureError`, state `failed`).
* SIGTERM / SIGINT: readiness turns false, pollers stop, the window in flight finishes and is checkpointed,
  all within `drain_grace_seconds`; then the process exits 0, or 3 when a source applied nothing because its
  sink never became ready (a stop in that state is not a success).
* `--exit-when-idle`: exit 0 once every source is caught up with everything applied and checkpointed
  (exit 3 if a source stopped on an error instead, or its sink was still not ready `idle_start_timeout_seconds`
  after start); before the sinks close, `summary` records what was applied and how many vertices and edges
  each target holds, and which sources never started because their sink never became ready.
* With `[checkpoint] kind = "dynamodb"` several processes may run one config. A DynamoDB source's shards are
  shared: per source a `LeaseCoordinator` holds a lease per shard, the source reads only the shards held
  (`ShardLeases`, `DynamoDBStreamSource.assign`), and the pipeline writes and checkpoints only those, each
  checkpoint conditional on its lease; a shard read to its end is released at once so its children can be
  taken. Such a pipeline runs all the time (an instance holding no shard is ready, with nothing to read); a
  drain finishes the window, checkpoints it and then releases the leases.
* A Neptune or file source has one lease (partition `""`) in the shared table, and the
  pipeline runs only while `may_write("")` holds: the holder applies, the others stand by (ready; `/status`
  state `standby`, `graph_replicator_lease_held` 0). The pipeline checks `may_write` before each window's sink
  writes, every checkpoint write is conditional on the lease, and a lost lease (or a deadline passing) cancels
  the run at once, with no further checkpoint; the process then stands by again. A drain finishes the window,
  checkpoints it and releases the lease, so a standby takes over at its next take round instead of waiting
  for the lease to expire. A standby takes a dead holder's lease within `lease_duration_seconds +
  take_interval_seconds` of the holder's last renewal. `/status` shows per source this instance's `owner_id`
  and `leases`: the coordinator's last view of the table (owner, position, pending steal per partition; no
  table read per request).
* Lease table unreachable at start: `run` serves /healthz, /readyz and /status at once and opens the table
  (created when missing) with retries, backing off up to `restart_backoff_max_seconds`; meanwhile readiness is
  false with `lease table unreachable (...)`, and a SIGTERM exits 0. A failure that retrying cannot fix
  (access denied, bad credentials, a refused request) stops the process with exit code 5 and the reason.
* `--exit-when-idle` with the DynamoDB store: a Neptune or file source also counts as idle on a standby, that
  is when this instance does not hold the source's lease and its last take round saw it owned by another live
  instance (its lease not expired): there is nothing for it to apply, the holder applies. A standby that is to
  take over a dead holder's work must not run with `--exit-when-idle`.
* The supervisor owns the data directory (`daemon.datadir.DataDirLock`) from construction to the end of
  `run`; a second daemon on the same directory is refused. Each source's checkpoint is read before its sink
  is started, so `/status` and the final `stopped` line show the stored positions even while a sink cannot
  start.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from daemon.checkpoint import SQLiteCheckpointStore, SQLiteLeaseStore
from daemon.config import (
    Config,
    DynamoDBCheckpointConfig,
    DynamoDBSourceConfig,
    FalkorDBSinkConfig,
    FileSourceConfig,
    NeptuneAnalyticsSinkConfig,
    NeptuneSinkConfig,
    NeptuneSparqlSourceConfig,
    OxigraphSinkConfig,
    SourceConfig,
    SparqlSinkConfig,
)
from daemon.datadir import DataDirLock
from daemon.deadletter import DeadLetterFile
from daemon.lease_coordinator import LeaseCoordinator
from daemon.leases import FencedOff, Lease, LeaseLost
from daemon.model import LANE_SEPARATOR, SHARD_END, Position, SourceStopped
from daemon.observability import METRICS
from daemon.pipeline import Pipeline, Source
from daemon.scheduler import Planner
from daemon.sdnotify import SystemdNotifier
from daemon.sinks.base import GraphSink, PlanApplier, RetryPolicy

if TYPE_CHECKING:
    from daemon.events.fanout import FanOutSource
    from daemon.http_server import HttpServer

# The modules of sources, sinks, event sinks and the HTTP server are imported when the config uses them, not here:
# the start of a daemon that needs no AWS client, no event sink and no HTTP server does not pay for aiohttp,
# botocore and the rest (docs/performance.md, start-up).

log = structlog.get_logger("daemon.supervisor")

EXIT_OK, EXIT_SOURCE_FAILED, EXIT_LEASE_TABLE = 0, 3, 5
HEALTHY_RUN_SECONDS = 60.0  # a pipeline run that lasted this long resets the restart backoff
UNANSWERED_CALL_SECONDS = 15.0  # a sink call unanswered this long makes the daemon not ready (a stalled target)


def build_sink(name: str, cfg: Any, config: Config) -> GraphSink:
    """The sink object for one `[sinks.NAME]` table."""
    common = {"timeout_seconds": cfg.request_timeout_seconds, "concurrency": cfg.concurrency}
    if isinstance(cfg, FalkorDBSinkConfig):
        from daemon.sinks.falkordb import FalkorDBSink

        return FalkorDBSink(
            name,
            url=cfg.url,
            password=cfg.password.get_secret_value() if cfg.password else None,
            graph=cfg.graph,
            id_property=cfg.id_property,
            base_label=cfg.base_label,
            engine_dir=config.daemon.resolved_data_dir / "falkordb" / name,
            engine_fsync=cfg.engine_fsync,
            **common,
        )
    if isinstance(cfg, OxigraphSinkConfig | SparqlSinkConfig):
        from daemon.sinks.rdf_build import build_rdf_sink

        return build_rdf_sink(name, cfg, config)
    if isinstance(cfg, NeptuneSinkConfig):
        from daemon.sinks.neptune import NeptuneSink

        return NeptuneSink(
            name,
            endpoint=cfg.endpoint,
            region=cfg.region,
            profile=cfg.profile,
            max_request_bytes=cfg.max_request_bytes,
            **common,
        )
    if isinstance(cfg, NeptuneAnalyticsSinkConfig):
        from daemon.sinks.analytics import NeptuneAnalyticsSink

        return NeptuneAnalyticsSink(
            name,
            graph_id=cfg.graph_id,
            region=cfg.region,
            endpoint=cfg.endpoint,
            profile=cfg.profile,
            max_request_bytes=cfg.max_request_bytes,
            **common,
        )
    raise TypeError(f"unknown sink config {type(cfg).__name__}")


def build_source(cfg: SourceConfig, dead_letters: DeadLetterFile) -> Source:
    """The source object for one `[[sources]]` entry."""
    if isinstance(cfg, FileSourceConfig):
        from daemon.sources.file import FileSource

        return FileSource(
            cfg.name,
            path=Path(cfg.path).expanduser().absolute(),
            limit=cfg.limit,
            on_malformed=cfg.on_malformed,
            follow=cfg.follow,
            poll_interval_seconds=cfg.poll_interval_seconds,
            max_record_bytes=cfg.max_record_bytes,
            dead_letters=dead_letters,
            translate=_nquads_translation(cfg) if cfg.format == "nquads" else None,
        )
    if isinstance(cfg, DynamoDBSourceConfig):
        from daemon.sources.dynamodb import DynamoDBStreamSource

        return DynamoDBStreamSource(cfg, dead_letters=dead_letters)
    if isinstance(cfg, NeptuneSparqlSourceConfig):
        from daemon.sources.neptune_sparql import NeptuneSparqlStreamSource

        return NeptuneSparqlStreamSource(cfg, dead_letters=dead_letters)
    from daemon.sources.neptune import NeptuneStreamSource

    return NeptuneStreamSource(cfg, dead_letters=dead_letters)


def _nquads_translation(cfg: FileSourceConfig) -> Any:
    """A file source's record translation for SPARQL stream captures."""
    from daemon.rdf import default_blank_node_prefix
    from daemon.sources.neptune_sparql import translate_sparql_record

    prefix = cfg.blank_node_prefix or default_blank_node_prefix(cfg.name)
    return lambda record: translate_sparql_record(record, prefix)


def _stop_reason(exc: SourceStopped) -> str:
    """The log line's words for a source that stopped for good (the source modules are loaded by then)."""
    neptune, dynamodb = sys.modules.get("daemon.sources.neptune"), sys.modules.get("daemon.sources.dynamodb")
    if neptune is not None and isinstance(exc, neptune.StreamReset):
        return "stream reset"
    if (neptune is not None and isinstance(exc, neptune.StreamExpired)) or (
        dynamodb is not None and isinstance(exc, dynamodb.StreamTrimmed)
    ):
        return "stream expired"
    return "cannot go on"


@dataclass(frozen=True, slots=True)
class Summary:
    """What a `--exit-when-idle` run did: changes applied, wall time, (vertices, edges) per sink (None when the
    count query failed), and why sources that stopped for good did."""

    changes_applied: int
    seconds: float
    graphs: dict[str, tuple[int, int] | None]
    failed: dict[str, str]
    dead_letters: int = 0  # lines this run wrote to the dead-letter file
    dead_letter_file: str = ""
    quads: dict[str, int] = field(default_factory=dict)  # RDF sinks: quads held


def _fanned_out(source: Any) -> FanOutSource | None:
    """The source when it feeds event sinks too (a `FanOutSource`), else None. `daemon.events` is imported only by
    configs with event sinks, so a source cannot be one while that module is not loaded."""
    fanout = sys.modules.get("daemon.events.fanout")
    return source if fanout is not None and isinstance(source, fanout.FanOutSource) else None


def _event_sinks(pipeline: Pipeline) -> dict[str, Any]:
    """`/status` of a source's event sinks (docs/events.md), when it has any."""
    source = _fanned_out(pipeline.source)
    return {"event_sinks": source.status()} if source is not None else {}


class LeasedCheckpoints:
    """A shared (DynamoDB) store seen by one source's pipeline: writes go with the coordinator's held leases, and
    a `LeaseLost` drops the lease in the coordinator (so `may_write` turns False at once). With one partition it
    then propagates (the pipeline stops); with shards, each shard's checkpoint is written on its own (all at
    once), a lost one is left out of what `save_many` returns, a failing one is retried while its lease is
    writable and given up after, and a shard checkpointed at `SHARD_END` is released at once. An event sink's
    rows (`SOURCE@SINK`, one-partition sources) are written only while the source's lease is writable, each in
    a transaction with a check of that lease (`DynamoDBCheckpointStore.save_many`).

    A sharded source with event sinks (`sinks`): each event sink's position on a shard is an attribute of the
    shard's lease item (`save_shard_branch`, conditional on our holding like the shard's own checkpoint), so
    `load("SOURCE@SINK")` reads them from the lease items. The shard's own checkpoint becomes `SHARD_END` (which
    frees the lease and makes its children ready) only once the graph sink (`graph`) and every event sink have
    delivered the shard's end: a branch that gets there before the others is told its end is saved and the
    graph's stays where it was in the table (a new owner replays its tail, nothing is skipped)."""

    def __init__(
        self,
        store: Any,
        coordinator: LeaseCoordinator,
        *,
        sharded: bool = False,
        graph: bool = True,
        sinks: tuple[str, ...] = (),
    ) -> None:
        self.store, self.coordinator, self.sharded = store, coordinator, sharded
        self.graph, self.sinks = graph, sinks
        self._graph_ended: set[str] = set()  # shards whose end the graph sink applied (its row waits for the sinks)
        self._ending: set[str] = set()  # shards whose own SHARD_END is being written

    def _sink_of(self, key: str) -> str | None:
        """The event sink of a `SOURCE@SINK` key of this source; None for the source's own key."""
        prefix = self.coordinator.source + LANE_SEPARATOR
        return key[len(prefix) :] if key.startswith(prefix) else None

    async def load(self, source: str) -> dict[str, Any]:
        sink = self._sink_of(source) if self.sharded and self.sinks else None
        if sink is None:
            return await self.store.load(source)
        leases = await self.store.list_leases(self.coordinator.source)
        return {lease.partition: lease.branches[sink] for lease in leases if sink in lease.branches}

    async def save_many(self, source: str, positions: dict[str, Any]) -> list[str] | None:
        sink = self._sink_of(source)
        if sink is not None and not self.sharded:  # an event sink's SOURCE@SINK row, under the source's lease
            for partition in positions:
                if not self.coordinator.may_write(partition):
                    raise FencedOff(f"{source!r} partition {partition!r}: the source's lease is not writable")
            await self._fenced(self.store.save_many, source, positions, self.coordinator.held)
            return None
        if not self.sharded:
            sent = self.coordinator.now()
            await self._fenced(self.store.save_many, source, positions, self.coordinator.held)
            for partition in positions:
                self.coordinator.written(partition, sent)
            return None
        partitions = list(positions)
        saved = await asyncio.gather(*(self._save_shard(source, p, positions[p], sink) for p in partitions))
        return [partition for partition, ok in zip(partitions, saved, strict=True) if ok]

    async def forget(self, source: str, partitions: list[str]) -> None:
        if not self.sharded:
            await self._fenced(self.store.forget, source, partitions, self.coordinator.held)
            return
        source = self.coordinator.source  # an event sink's positions live on the shard's lease item: delete that
        for partition in partitions:  # finished shards past the stream's retention; any instance may delete them
            try:
                await self.store.forget(source, [partition], self.coordinator.held)
            except LeaseLost as exc:
                log.info("finished shard not forgotten: its row changed", source=source, partition=partition,
                         owner=exc.actual_owner)  # fmt: skip

    async def _save_shard(self, source: str, partition: str, position: Position, sink: str | None = None) -> bool:
        if position == SHARD_END and self.sinks:
            return await self._save_end(partition, sink)
        return await self._write_shard(partition, position, sink)

    async def _save_end(self, partition: str, sink: str | None) -> bool:
        """One branch delivered the shard's end: record it (an event sink's on the lease item, the graph's here),
        and write the shard's own `SHARD_END` (releasing it) once every branch has."""
        if sink is not None:
            if not await self._write_shard(partition, SHARD_END, sink):
                return False
        elif not self.coordinator.may_write(partition):
            await self.coordinator.lease_lost(partition)
            return False
        else:
            self._graph_ended.add(partition)
        await self.end_if_all_ended(partition)
        return True

    async def end_if_all_ended(self, partition: str) -> None:
        """Write the shard's own `SHARD_END` (and release it) if the graph sink and every event sink delivered
        its end; also run for a shard taken over with every branch already there (its last owner stopped between
        the last branch's end and the shard's)."""
        lease = self.coordinator.held.get(partition)
        if lease is None or partition in self._ending or lease.position == SHARD_END:
            return
        graph_done = not self.graph or partition in self._graph_ended
        if graph_done and all(lease.branches.get(sink) == SHARD_END for sink in self.sinks):
            self._ending.add(partition)
            try:
                await self._write_shard(partition, SHARD_END, None)
            finally:
                self._ending.discard(partition)
                self._graph_ended.discard(partition)

    async def _write_shard(self, partition: str, position: Position, sink: str | None) -> bool:
        """Write one shard's checkpoint (`sink` None) or one event sink's position on it, retried while its lease
        is writable; False when the lease is lost."""
        source = self.coordinator.source
        attempt = 0
        while True:
            if not self.coordinator.may_write(partition):
                await self.coordinator.lease_lost(partition)
                return False
            sent = self.coordinator.now()
            try:
                if sink is None:
                    await self.store.save_many(source, {partition: position}, self.coordinator.held)
                else:
                    await self.store.save_shard_branch(self.coordinator.held[partition], sink, position)
            except LeaseLost:
                log.warning("lease lost at checkpoint; shard dropped", source=source, partition=partition, sink=sink)
                await self.coordinator.lease_lost(partition)
                return False
            except (KeyError, FencedOff):
                await self.coordinator.lease_lost(partition)
                return False
            except Exception as exc:  # the table's own retries are spent: go on trying while the lease lasts
                attempt += 1
                log.warning("checkpoint write failed; retrying", source=source, partition=partition, sink=sink,
                            attempt=attempt, error=f"{type(exc).__name__}: {str(exc)[:300]}")  # fmt: skip
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            self.coordinator.written(partition, sent)
            if position == SHARD_END and sink is None:
                await self.coordinator.finished(partition)
            return True

    async def _fenced(self, write: Callable[..., Any], source: str, what: Any, held: Mapping[str, Lease]) -> None:
        try:
            await write(source, what, held)
        except LeaseLost as exc:
            await self.coordinator.lease_lost(exc.partition)
            raise
        except KeyError as exc:  # no held lease for a partition (the store's `_held`)
            raise FencedOff(f"source {source!r}: lease not held ({exc})") from exc


class ShardLeases:
    """The lease table as a DynamoDB source sharing its shards sees it (`daemon.sources.dynamodb.SharedShards`)."""

    def __init__(self, store: Any, coordinator: LeaseCoordinator, sinks: tuple[str, ...] = ()) -> None:
        self.store, self.coordinator, self.sinks = store, coordinator, sinks

    async def register(self, shards: Mapping[str, tuple[str, ...]], positions: Mapping[str, Position]) -> None:
        # A first position (start = "latest") is every event sink's too.
        await self.store.ensure_leases(self.coordinator.source, shards, positions, self.sinks)
        self.coordinator.wake()  # new shards: take them now, not at the next round

    async def known(self) -> bool:
        return bool(await self.store.list_leases(self.coordinator.source))

    def finished(self) -> set[str]:
        return {lease.partition for lease in self.coordinator.taker.last_seen if lease.shard_end}


class Supervisor:
    def __init__(self, config: Config, *, exit_when_idle: bool = False) -> None:
        # First of all: nothing under the data directory is touched before it is ours (raises DataDirBusy).
        self.datadir_lock = DataDirLock(config.daemon.resolved_data_dir, "graph-replicator run").acquire()
        try:
            self._init(config, exit_when_idle)
        except BaseException:
            self.datadir_lock.release()
            raise

    def _init(self, config: Config, exit_when_idle: bool) -> None:
        self.config = config
        self.exit_when_idle = exit_when_idle
        self.draining = False
        self.started = time.time()
        self.notifier = SystemdNotifier()  # reads (and unsets) $NOTIFY_SOCKET before any child process starts
        self._stopping_announced = False
        self.dead_letters = DeadLetterFile(config.dead_letter_path)
        checkpoint_path = config.checkpoint_path
        self.checkpoints: SQLiteCheckpointStore | None = None
        self.shared = config.checkpoint if isinstance(config.checkpoint, DynamoDBCheckpointConfig) else None
        if self.shared is None:
            if checkpoint_path is None:
                raise ValueError("only SQLite and DynamoDB checkpoints are available in this version")
            self.checkpoints = SQLiteCheckpointStore(checkpoint_path)
        self.coordinators: dict[str, LeaseCoordinator] = {}  # source -> its lease coordinator (DynamoDB store)
        self.lease_trouble: dict[str, str] = {}  # source -> why its coordinator could not start (until it does)
        self.store_trouble: str | None = None  # why the lease table cannot be opened (retried until it can)
        self.fatal: str | None = None  # why `run` stopped without running the sources (exit code != 0)
        self._store: Any = None
        self._stack = AsyncExitStack()
        self.sinks: dict[str, GraphSink] = {}
        self.pipelines: list[Pipeline] = []
        self.failed: dict[str, str] = {}  # source -> why it stopped for good
        self.sink_not_ready: dict[str, str] = {}  # source -> why its sink did not start (until it does)
        self.summary: Summary | None = None  # set by `run` with exit_when_idle
        self._drain = asyncio.Event()
        self._sink_slots: dict[str, asyncio.Semaphore] = {}
        self._sink_starting: set[str] = set()  # sources whose sink is starting (their first pages may be read)
        for source_cfg in config.sources:
            self.pipelines.append(self._build_pipeline(source_cfg))
        address = config.daemon.http_address
        self.http: HttpServer | None = None
        if address:
            from daemon.http_server import HttpServer

            self.http = HttpServer(
                address, self.readiness, self.status, METRICS.registry, self.sinks, config.daemon.graph_view
            )
        METRICS.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)

    def _build_pipeline(self, cfg: SourceConfig) -> Pipeline:
        store = SQLiteLeaseStore(self.checkpoints) if self.checkpoints is not None else None
        if cfg.sink is None:  # event sinks only: no graph branch (docs/events.md)
            from daemon.events.eventonly import EventOnlyPipeline
            from daemon.events.fanout import fan_out

            fanned = fan_out(build_source(cfg, self.dead_letters), cfg, self.config, self.dead_letters,
                             exit_when_idle=self.exit_when_idle)  # fmt: skip
            fanned.checkpoints = store
            return EventOnlyPipeline(fanned, store, queue_size=cfg.queue_size)
        sink_cfg = self.config.sinks[cfg.sink]
        sink = self.sinks.get(cfg.sink)
        if sink is None:
            sink = self.sinks[cfg.sink] = build_sink(cfg.sink, sink_cfg, self.config)
            self._sink_slots[cfg.sink] = asyncio.Semaphore(sink_cfg.concurrency)
        source = build_source(cfg, self.dead_letters)
        if cfg.event_sinks:
            from daemon.events.fanout import fan_out

            source = fan_out(source, cfg, self.config, self.dead_letters, exit_when_idle=self.exit_when_idle)
        applier = PlanApplier(
            sink,
            source=cfg.name,
            batch_size=sink_cfg.batch_size,
            concurrency=self._sink_slots[cfg.sink],
            retry=RetryPolicy(
                sink_cfg.retry_initial_seconds, sink_cfg.retry_max_seconds, sink_cfg.attempts_before_split
            ),
            dead_letters=self.dead_letters,
        )
        if getattr(sink, "rdf", False):
            from daemon.rdf import RdfPlanner  # pyoxigraph: imported only by configs that use RDF

            planner: Any = RdfPlanner()
        else:
            planner = Planner(sink.dialect, applier.lookup_edge_types, cfg.edge_type_cache_size)
        applier.replan = planner.plan
        pipeline = Pipeline(
            source,
            planner,
            applier,
            store,
            queue_size=cfg.queue_size,
            window_max_changes=cfg.window_max_changes,
        )
        if (fanned := _fanned_out(source)) is not None:  # event sinks checkpoint beside the graph sink, same store
            fanned.checkpoints = pipeline.checkpoints
        return pipeline

    def request_drain(self) -> None:
        if not self.draining:
            log.info(
                "drain requested: finishing in-flight batches",
                grace_seconds=self.config.daemon.drain_grace_seconds,
            )
            self.draining = True  # readiness is false from here on, before anything stops
            self._announce_stopping()
            self._drain.set()

    def _announce_stopping(self) -> None:
        """Tell systemd the drain began, asking for the grace period (plus a margin for closing) to finish it."""
        if not self._stopping_announced:
            self._stopping_announced = True
            grace = self.config.daemon.drain_grace_seconds
            self.notifier.stopping(f"draining (grace {grace:g} s)", extend_timeout_seconds=grace + 10)

    def status_line(self) -> str:
        """One line for `systemctl status`: readiness and each source's state."""
        ready, reasons = self.readiness()
        head = "ready" if ready else "not ready: " + "; ".join(reasons)
        return head + " | " + ", ".join(f"{p.name}: {p.source.state}" for p in self.pipelines)

    def readiness(self) -> tuple[bool, list[str]]:
        reasons = []
        if self.draining:
            reasons.append("draining")
        if self.store_trouble is not None:
            reasons.append(f"lease table unreachable ({self.store_trouble})")
        for p in self.pipelines:
            if p.name in self.failed:
                reasons.append(f"source {p.name}: {p.source.state}")
            elif p.name in self.lease_trouble:
                reasons.append(f"source {p.name}: lease table unreachable ({self.lease_trouble[p.name]})")
            elif (not p.source.polling or p.name in self._sink_starting) and not p.standby:
                reasons.append(f"source {p.name}: not polling yet")
            if p.crashed is not None:
                reasons.append(f"source {p.name}: restarting after a crash ({p.crashed})")
            if p.applier is not None and not p.applier.healthy:  # (None: event sinks only, below)
                why = f" ({p.applier.failing_reason})" if p.applier.failing_reason else ""
                reasons.append(f"sink {p.applier.sink.name}: failing{why}")
            elif p.applier is not None and (waiting := p.applier.oldest_call_seconds()) > UNANSWERED_CALL_SECONDS:
                reasons.append(f"sink {p.applier.sink.name}: a call has not answered for {waiting:.0f} s")
            for lane in fanned.lanes if (fanned := _fanned_out(p.source)) is not None else ():
                if not lane.delivery.healthy:
                    reasons.append(f"event sink {lane.sink.name}: failing ({lane.delivery.failing_reason})")
        return (not reasons, reasons)

    def status(self) -> dict[str, Any]:
        ready, reasons = self.readiness()
        return {
            "ready": ready,
            "reasons": reasons,
            "draining": self.draining,
            "uptime_seconds": round(time.time() - self.started, 3),
            "sources": [
                dict(p.status(), error=self.failed.get(p.name), **self._lease_status(p), **_event_sinks(p))
                for p in self.pipelines
            ],
            "dead_letters": self.dead_letters.count,
            "sinks": self._sink_status(),
        }

    def _lease_status(self, pipeline: Pipeline) -> dict[str, Any]:
        """`owner_id` (None with SQLite) and, with the DynamoDB store, `leases` as the coordinator last saw them."""
        coordinator = self.coordinators.get(pipeline.name)
        if self.shared is None or coordinator is None:
            return {"owner_id": None} if self.shared is None else {"owner_id": None, "leases": []}
        return {"owner_id": coordinator.owner, "leases": coordinator.view()}

    def _sink_status(self) -> list[dict[str, Any]]:
        """Each sink's kind, health (every source's applier on it healthy) and retries so far, by reason."""
        retries: dict[str, dict[str, int]] = {}
        for metric in METRICS.retries.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    by_reason = retries.setdefault(sample.labels["sink"], {})
                    by_reason[sample.labels["reason"]] = int(sample.value)
        out = []
        for name, sink in self.sinks.items():
            failing = [p.applier.failing_reason or "failing" for p in self.pipelines if p.applier is not None
                       and p.applier.sink is sink and not p.applier.healthy]  # fmt: skip
            out.append(
                {
                    "sink": name,
                    "kind": sink.kind,
                    "healthy": not failing,
                    "failing_reason": failing[0] if failing else None,
                    "retries": retries.get(name, {}),
                }
            )
        return out

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_drain)
        heartbeat: asyncio.Task[None] | None = None
        try:
            if self.http is not None:
                await self.http.start()
                log.info("http server listening", address=f"{self.http.host}:{self.http.port}")
            # WATCHDOG=1 from a task on this loop: a loop that stops turning stops the pings, and systemd restarts us.
            heartbeat = asyncio.create_task(
                self.notifier.run_watchdog(self.status_line, on_lag=METRICS.event_loop_lag.set), name="watchdog"
            )
            self.notifier.ready(self.status_line())
            if self.shared is not None and (code := await self._open_shared_store_retrying()) is not None:
                return code
            tasks = {asyncio.create_task(self._keep(p), name=f"pipeline:{p.name}"): p for p in self.pipelines}
            await self._wait_until_done(tasks)
            code = await self._shutdown(tasks)
            if self.exit_when_idle:
                self.summary = await self._summarise()
            return code
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            for sink in self.sinks.values():
                with suppress(Exception):
                    await sink.close()
            for p in self.pipelines:
                if (fanned := _fanned_out(p.source)) is not None:
                    await fanned.close()
            if self.http is not None:
                await self.http.stop()
            if self.checkpoints is not None:
                self.checkpoints.close()
            with suppress(Exception):
                await self._stack.aclose()
            self.datadir_lock.release()
            if heartbeat is not None:
                heartbeat.cancel()
                with suppress(asyncio.CancelledError):
                    await heartbeat
            self.notifier.close()

    async def _wait_until_done(self, tasks: dict[asyncio.Task[None], Pipeline]) -> None:
        while not self._drain.is_set():
            if all(t.done() for t in tasks) and (self.exit_when_idle or not self.failed):
                return  # (sources that stopped for good keep the process up, serving their alerting metrics)
            if self.exit_when_idle and all(
                self._idle(p) or p.name in self.failed or self._standby_idle(p) for p in self.pipelines
            ):
                log.info(
                    "every source is caught up and checkpointed (or held by another live instance); exiting",
                    sources=len(self.pipelines),
                )
                return
            if self.exit_when_idle and self._gave_up_on_sinks():
                return
            await self._next_check()

    async def _next_check(self) -> None:
        """Wait up to 0.1 s for a drain or, with `--exit-when-idle`, a pipeline's window that ended caught up (the
        run ends as soon as that window is checkpointed, not at the next tick)."""
        events = [self._drain]
        if self.exit_when_idle:
            events += [p.progress for p in self.pipelines]
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        for event in events[1:]:
            event.clear()

    def _idle(self, pipeline: Pipeline) -> bool:
        """Caught up with everything applied and checkpointed; with shared shards: every shard this instance holds
        is at its head, and the last take round found no shard free to take (others hold the rest)."""
        if not pipeline.caught_up or not getattr(pipeline.source, "idle", True):  # event sinks delivered too
            return False
        if not pipeline.sharded:
            return True
        coordinator = self.coordinators[pipeline.name]
        return (
            pipeline.source.state == "caught_up"
            and not coordinator.take_pending
            and coordinator.taker.ready_unowned == 0
        )

    def _gave_up_on_sinks(self) -> bool:
        """`--exit-when-idle`: a sink still not ready `idle_start_timeout_seconds` after start fails its sources."""
        limit = self.config.daemon.idle_start_timeout_seconds
        if not self.sink_not_ready or time.time() - self.started < limit:
            return False
        for name, why in self.sink_not_ready.items():
            self.failed[name] = f"its sink did not become ready within {limit:g} s (idle_start_timeout_seconds): {why}"
            log.error("giving up: the sink never became ready", source=name, seconds=limit, error=why)
        return True

    async def _shutdown(self, tasks: dict[asyncio.Task[None], Pipeline]) -> int:
        self.draining = True
        self._announce_stopping()
        for p in self.pipelines:
            p.request_stop()
            if (fanned := _fanned_out(p.source)) is not None:
                fanned.request_stop()  # its event sinks finish the windows they are delivering
        pending = [t for t in tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.config.daemon.drain_grace_seconds)
            for t in still:
                log.warning(
                    "drain grace period over; abandoning the window in flight (it is replayed on restart)",
                    pipeline=tasks[t].name,
                )
                t.cancel()
            for t in still:
                with suppress(asyncio.CancelledError):
                    await t
        log.info("stopped", checkpoints={p.name: p.status()["position"] for p in self.pipelines})
        # A drain while a source never started, its sink never ready, is not a success: exit 3 and say why.
        applied = {p.name for p in self.pipelines if p.changes_applied}
        never = {n: why for n, why in self.sink_not_ready.items() if n not in self.failed and n not in applied}
        for name, why in never.items():
            log.error("stopped before the sink ever became ready", source=name, error=why)
        return EXIT_SOURCE_FAILED if self.failed or never else EXIT_OK

    async def _summarise(self) -> Summary:
        seconds = time.time() - self.started
        graphs: dict[str, tuple[int, int] | None] = {}
        quads: dict[str, int] = {}  # RDF sinks: quads held
        for name, sink in self.sinks.items():
            try:
                if getattr(sink, "rdf", False):
                    quads[name] = await sink.count_quads()  # type: ignore[attr-defined]
                    continue
                vertices = await sink.query("MATCH (n) RETURN count(n) AS n")
                edges = await sink.query("MATCH ()-[r]->() RETURN count(r) AS n")
                graphs[name] = (int(vertices[0]["n"]), int(edges[0]["n"]))
            except Exception as exc:
                log.warning("cannot count the target graph", sink=name, error=str(exc)[:300])
                graphs[name] = None
        failed = dict(self.failed)
        for name, why in self.sink_not_ready.items():
            failed.setdefault(name, f"never started: its sink did not become ready ({why})")
        return Summary(
            sum(p.changes_applied for p in self.pipelines),
            seconds,
            graphs,
            failed,
            self.dead_letters.count,
            str(self.dead_letters.path),
            quads,
        )

    async def _keep_running(self, pipeline: Pipeline) -> None:
        sink = pipeline.applier.sink if pipeline.applier is not None else None  # None: event sinks only
        ceiling = self.config.daemon.restart_backoff_max_seconds
        backoff = min(1.0, ceiling)
        if not pipeline.positions and pipeline.checkpoints is not None:  # shown until the pipeline runs
            pipeline.positions = await pipeline.stored_positions()

        async def start_sink() -> None:
            assert sink is not None
            self._sink_starting.add(pipeline.name)
            try:
                await sink.start()
            except Exception as exc:
                self.sink_not_ready[pipeline.name] = f"{type(exc).__name__}: {str(exc)[:300]}"
                raise
            finally:
                self._sink_starting.discard(pipeline.name)
            self.sink_not_ready.pop(pipeline.name, None)
            METRICS.sink_up.labels(sink=sink.name).set(1)

        first = True
        while not pipeline.stopping:
            started = time.monotonic()
            try:
                if sink is None:  # event sinks only: they connect at their first call
                    await pipeline.run()
                elif first:  # the source reads its first pages while the sink (its embedded engine) starts
                    first = False
                    await pipeline.run(before_apply=start_sink)
                else:  # after a failure, nothing is read before the sink is up again
                    await start_sink()
                    await pipeline.run()
                return
            except (LeaseLost, FencedOff) as exc:
                if not pipeline.sharded:  # another instance owns the source now: stop writing at once
                    log.warning("lease lost; pipeline stopped, standing by", source=pipeline.name, error=str(exc)[:300])
                    return
                # A sharded pipeline handles its lost shards itself; one escaping is a bug: restart like a crash.
                pipeline.crashed = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.exception("lease error escaped a sharded pipeline; restarting", source=pipeline.name)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._drain.wait(), timeout=backoff)
                backoff = min(backoff * 2, ceiling)
            except SourceStopped as exc:
                self.failed[pipeline.name] = str(exc)
                reason = _stop_reason(exc)
                log.error(f"source stopped: {reason}", source=pipeline.name, error=str(exc))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                METRICS.task_restarts.labels(source=pipeline.name).inc()
                pipeline.crashed = f"{type(exc).__name__}: {str(exc)[:300]}"
                if time.monotonic() - started >= HEALTHY_RUN_SECONDS:
                    backoff = min(1.0, ceiling)
                log.exception(
                    "pipeline crashed; restarting from its checkpoint",
                    source=pipeline.name,
                    error=str(exc)[:500],
                    restart_in_seconds=backoff,
                )
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._drain.wait(), timeout=backoff)
                backoff = min(backoff * 2, ceiling)

    def _standby_idle(self, pipeline: Pipeline) -> bool:
        """A standby's source (one lease: Neptune, file) is idle: this instance does not hold the lease and another
        live one does. (A sharded source's instances share the shards instead: `_idle`.)"""
        coordinator = self.coordinators.get(pipeline.name)
        return not pipeline.sharded and coordinator is not None and coordinator.standby_idle()

    async def _open_shared_store_retrying(self) -> int | None:
        """Open the lease table, retrying what may pass (connection, throttling, 5xx, a table still being created)
        with backoff until it works (None) or a drain is requested (EXIT_OK); EXIT_LEASE_TABLE, with `fatal`
        set, for a failure that retrying cannot fix."""
        from botocore.exceptions import WaiterError

        from daemon.checkpoint_dynamodb import classify_table_error

        ceiling = self.config.daemon.restart_backoff_max_seconds
        backoff = min(1.0, ceiling)
        while True:
            try:
                await self._open_shared_store()
                if self.store_trouble is not None:
                    log.info("lease table reachable again")
                self.store_trouble = None
                return None
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:300]}"
                if not (isinstance(exc, WaiterError) or classify_table_error(exc).retryable):
                    assert self.shared is not None
                    self.fatal = f"cannot use the lease table {self.shared.table!r}: {reason}"
                    log.error("lease table refused; stopping", error=reason)
                    return EXIT_LEASE_TABLE
                self.store_trouble = reason
                log.warning("lease table unreachable; retrying", error=reason, retry_in_seconds=backoff)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._drain.wait(), timeout=backoff)
            if self._drain.is_set():
                log.info("drained while waiting for the lease table; nothing was started")
                return EXIT_OK
            backoff = min(backoff * 2, ceiling)

    async def _open_shared_store(self) -> None:
        from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore
        from daemon.sources.dynamodb import DynamoDBStreamSource

        cfg = self.shared
        assert cfg is not None
        if self._store is None:  # one client for every attempt; it connects at its first call
            endpoint = str(cfg.endpoint) if cfg.endpoint else None
            self._store = await DynamoDBCheckpointStore.connect(
                self._stack, table=cfg.table, region=cfg.region, endpoint=endpoint
            )
        store = self._store
        await store.ensure_table()  # created (and waited for) when missing
        for pipeline in self.pipelines:
            coordinator = LeaseCoordinator.from_config(store, pipeline.name, cfg)
            self.coordinators[pipeline.name] = coordinator
            pipeline.ownership = coordinator
            METRICS.lease_held.labels(source=pipeline.name).set(0)
            source = pipeline.source
            fanned = _fanned_out(source)
            if isinstance(fanned.inner if fanned else source, DynamoDBStreamSource):  # shards shared across instances
                sinks = tuple(lane.sink.name for lane in fanned.lanes) if fanned else ()
                graph = fanned.graph if fanned else True
                checkpoints = LeasedCheckpoints(store, coordinator, sharded=True, graph=graph, sinks=sinks)
                pipeline.sharded = True
                pipeline.checkpoints = checkpoints
                if fanned is not None:  # its event sinks' positions go on the shards' lease items
                    fanned.checkpoints, fanned.ownership = checkpoints, coordinator
                    fanned.share(ShardLeases(store, coordinator, sinks))
                else:
                    source.share(ShardLeases(store, coordinator))  # type: ignore[attr-defined]
                coordinator.on_change = lambda _held, source=source, coordinator=coordinator: source.assign(
                    coordinator.held
                )
                coordinator.quiesce = pipeline.quiesce
                continue
            pipeline.checkpoints = LeasedCheckpoints(store, coordinator)
            pipeline.standby = True
            if _fanned_out(source) is not None:  # its event sinks write under the source's lease
                source.checkpoints, source.ownership = pipeline.checkpoints, coordinator
            await store.ensure_leases(pipeline.name, {"": ()})  # a Neptune (or file) source is one partition

    def _keep(self, pipeline: Pipeline) -> Any:
        if self.shared is None:
            return self._keep_running(pipeline)
        return self._keep_running_sharded(pipeline) if pipeline.sharded else self._keep_running_leased(pipeline)

    async def _start_coordinator(self, pipeline: Pipeline, coordinator: LeaseCoordinator) -> bool:
        """Start the coordinator, retrying while the lease table cannot be reached; False if a drain came first."""
        while not pipeline.stopping:
            try:
                await coordinator.start()
                self.lease_trouble.pop(pipeline.name, None)
                return True
            except Exception as exc:
                self.lease_trouble[pipeline.name] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("cannot reach the lease table; retrying", source=pipeline.name, error=str(exc)[:300])
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._drain.wait(), timeout=1.0)
        return False

    async def _keep_running_sharded(self, pipeline: Pipeline) -> None:
        """Hold and renew shard leases while the pipeline runs over the held shards; after a drain (the last
        window checkpointed) release them, so other instances take them at once. A run abandoned at the end of
        the drain grace keeps its leases until they expire: a batch call it cancelled may still land."""
        coordinator = self.coordinators[pipeline.name]
        if not await self._start_coordinator(pipeline, coordinator):
            await coordinator.stop(release=True)
            return
        released = False
        try:
            await self._keep_running(pipeline)
            await coordinator.stop(release=True)
            released = True
            log.info("leases released", source=pipeline.name)
        finally:
            if not released:
                await coordinator.stop(release=False)

    async def _keep_running_leased(self, pipeline: Pipeline) -> None:
        """Stand by until this instance holds the source's lease, run the pipeline while `may_write("")` holds,
        and stand by again when it stops holding it; release the lease at the end (a drain)."""
        coordinator = self.coordinators[pipeline.name]
        gauge = METRICS.lease_held.labels(source=pipeline.name)
        try:
            await self._start_coordinator(pipeline, coordinator)
            while not pipeline.stopping:
                if not coordinator.may_write(""):
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._drain.wait(), timeout=0.05)
                    continue
                pipeline.standby = False
                gauge.set(1)
                log.info("lease held; applying", source=pipeline.name, owner=coordinator.owner)
                run = asyncio.create_task(self._keep_running(pipeline), name=f"leased:{pipeline.name}")
                try:
                    while not run.done():
                        if not coordinator.may_write(""):
                            run.cancel()  # fenced: no sink write and no checkpoint from here on
                            log.warning("lease no longer writable; pipeline stopped", source=pipeline.name)
                            break
                        await asyncio.wait({run}, timeout=0.05)
                    await asyncio.wait({run})
                    if not run.cancelled() and run.exception() is not None:
                        raise run.exception()  # type: ignore[misc]
                finally:
                    if not run.done():
                        run.cancel()
                        await asyncio.wait({run})
                    gauge.set(0)
                    pipeline.standby = not pipeline.stopping
                if pipeline.name in self.failed or (not run.cancelled() and coordinator.may_write("")):
                    break  # the source stopped for good, or ended (a file): nothing more to apply
                if not pipeline.stopping:
                    log.info("standing by", source=pipeline.name)
                    with suppress(Exception):
                        pipeline.positions = await pipeline.stored_positions()
        finally:
            await coordinator.stop(release=True)
            log.info("lease released", source=pipeline.name)
