"""Metrics catalogue and structured logging; `HttpServer` (/metrics /healthz /readyz /status, and the pages of
`daemon.webui`: the status page at / and the graph view at /graph) lives in `daemon.http_server` and is imported
from here on first use, so a daemon without `http_address` never loads aiohttp's server.

Every metric the daemon exports is declared once here (documented in docs/metrics.md). Names carry the
`graph_replicator_` prefix, base units and `_total` on counters; labels are bounded (source, sink, reason,
stage, partition).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from daemon import __version__

_BATCH_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LATENCY_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class Metrics:
    """The catalogue; one instance per registry (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        p = "graph_replicator_"
        # process_* (CPU, memory, open fds, start time), python_info and python_gc_*: the standard collectors,
        # registered on this registry (the daemon does not use prometheus_client's global one).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Info(p + "build", "Build information", registry=r)
        self.build_info.info({"version": __version__, "python": sys.version.split()[0]})
        self.records_read = Counter(
            p + "records_read_total", "Change records read from a source", ["source"], registry=r
        )
        self.records_applied = Counter(
            p + "records_applied_total",
            "Change records applied to a sink and acknowledged",
            ["source", "sink"],
            registry=r,
        )
        self.records_skipped = Counter(
            p + "records_skipped_total",
            "Change records that needed no statement",
            ["source", "reason"],
            registry=r,
        )
        self.records_dead_lettered = Counter(
            p + "records_dead_lettered_total",
            "Change records written to the dead-letter file",
            ["source", "stage"],
            registry=r,
        )
        self.records_no_effect = Counter(
            p + "records_no_effect_total",
            "Change records a sink ran that changed nothing, because what they needed was not in the target",
            ["source", "reason"],
            registry=r,
        )
        self.batch_duration = Histogram(
            p + "batch_duration_seconds",
            "Time to execute one batch on a sink",
            ["sink"],
            buckets=_BATCH_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_rows",
            "Rows in one executed batch",
            ["sink"],
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.retries = Counter(p + "retries_total", "Sink calls retried, by reason", ["sink", "reason"], registry=r)
        self.sink_errors = Counter(
            p + "sink_errors_total",
            "Failed sink calls, by error class",
            ["sink", "error_type", "stage"],
            registry=r,
        )
        self.source_errors = Counter(
            p + "source_errors_total",
            "Failed source calls, by error class",
            ["source", "error_type"],
            registry=r,
        )
        self.inflight_batches = Gauge(p + "inflight_batches", "Batches executing on a sink", ["sink"], registry=r)
        self.queue_depth = Gauge(
            p + "queue_depth", "Pages waiting between a source and its apply loop", ["source"], registry=r
        )
        self.queue_capacity = Gauge(p + "queue_capacity", "Capacity of the queue", ["source"], registry=r)
        self.source_polls = Counter(p + "source_polls_total", "Source read calls", ["source"], registry=r)
        self.source_empty_polls = Counter(
            p + "source_empty_polls_total", "Source reads that found nothing new", ["source"], registry=r
        )
        self.checkpoint_commit = Gauge(
            p + "checkpoint_commit_number",
            "Checkpointed position: commit number (Neptune commitNum)",
            ["source", "partition"],
            registry=r,
        )
        self.checkpoint_op = Gauge(
            p + "checkpoint_op_number",
            "Checkpointed position: operation number within the commit",
            ["source", "partition"],
            registry=r,
        )
        self.checkpoint_timestamp = Gauge(
            p + "last_checkpoint_timestamp_seconds",
            "Unix time of the last successful checkpoint write",
            ["source"],
            registry=r,
        )
        self.stream_latency = Gauge(
            p + "stream_latency_seconds",
            "Now minus the commit time of the last applied change; 0 when caught up and idle",
            ["source", "partition"],
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            p + "end_to_end_latency_seconds",
            "Source commit to applied-in-sink time of each applied window's changes",
            ["source"],
            buckets=_LATENCY_SECONDS,
            registry=r,
        )
        self.stream_head_commit = Gauge(
            p + "stream_head_commit_number",
            "Commit number of the newest change in the stream, as the source last reported it (Neptune)",
            ["source"],
            registry=r,
        )
        self.commits_behind_head = Gauge(
            p + "commits_behind_head",
            "Stream head commit number minus the checkpointed commit number (Neptune); 0 when caught up",
            ["source"],
            registry=r,
        )
        self.shards = Gauge(
            p + "shards",
            "Shards a DynamoDB Streams source tracks, by state (e.g. waiting for a parent, reading, finished)",
            ["source", "state"],
            registry=r,
        )
        self.source_up = Gauge(p + "source_up", "1 while a source polls successfully", ["source"], registry=r)
        self.sink_up = Gauge(p + "sink_up", "1 while a sink's last call succeeded", ["sink"], registry=r)
        self.stream_expired = Gauge(
            p + "stream_expired",
            "1 when the source's checkpoint is older than the stream retention",
            ["source"],
            registry=r,
        )
        self.stream_reset = Gauge(
            p + "stream_reset",
            "1 when the stream's head is behind the source's checkpoint (a restored or re-created Neptune cluster)",
            ["source"],
            registry=r,
        )
        self.task_restarts = Counter(
            p + "task_restarts_total", "Pipeline tasks restarted after a crash", ["source"], registry=r
        )
        self.lease_held = Gauge(
            p + "lease_held",
            "1 while this instance holds the source's lease and applies it; 0 while it stands by "
            "(DynamoDB checkpoint store only)",
            ["source"],
            registry=r,
        )
        # Leases in the shared (DynamoDB) checkpoint store (daemon.lease_coordinator); see `LeaseMetrics`.
        self.leases_held = Gauge(
            p + "leases_held",
            "Leases of the source this instance holds (DynamoDB checkpoint store only)",
            ["source"],
            registry=r,
        )
        self.lease_acquisitions = Counter(
            p + "lease_acquisitions_total",
            "Leases this instance took (free, expired, or handed to it)",
            ["source"],
            registry=r,
        )
        self.lease_steals = Counter(
            p + "lease_steals_total",
            "Steal requests this instance made to the most loaded instance (each is a hand-off request)",
            ["source"],
            registry=r,
        )
        self.lease_losses = Counter(
            p + "lease_losses_total",
            "Leases this instance lost: refused at renewal or at a conditional checkpoint write, or dropped "
            "past their deadline",
            ["source"],
            registry=r,
        )
        self.lease_releases = Counter(
            p + "lease_releases_total",
            "Leases this instance gave up, by reason: drain, handoff (a steal request answered), shard_end",
            ["source", "reason"],
            registry=r,
        )
        self.lease_partitions = Gauge(
            p + "lease_partitions",
            "Partitions of the source in the lease table as this instance's last take round saw them, by state: "
            "owned, unowned (free or expired), waiting (free, parents not finished), finished",
            ["source", "state"],
            registry=r,
        )
        self.lease_unowned_seconds = Gauge(
            p + "lease_unowned_seconds",
            "Longest time any takeable, unfinished partition of the source has been owned by nobody (free or "
            "expired), as this instance sees it; 0 when every one has an owner",
            ["source"],
            registry=r,
        )
        self.lease_duration = Gauge(
            p + "lease_duration_seconds",
            "The configured lease duration (`lease_duration_seconds`), for alerts that compare with it",
            ["source"],
            registry=r,
        )
        self.lease_table_retries = Counter(
            p + "lease_table_retries_total",
            "Calls to the lease table retried after a retryable failure, by reason",
            ["reason"],
            registry=r,
        )
        # The embedded FalkorDB engine (daemon.engine) of a sink without `url`.
        self.engine_restarts = Counter(
            p + "engine_restarts_total",
            "Embedded engine processes that exited while the daemon ran and were started again",
            ["sink"],
            registry=r,
        )
        self.engine_recovery_seconds = Histogram(
            p + "engine_recovery_seconds",
            "From an embedded engine's exit to the sink connected to its replacement",
            ["sink"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.engine_start_seconds = Gauge(
            p + "engine_start_seconds",
            "How long the embedded engine's last start took until it had loaded its data and answered",
            ["sink"],
            registry=r,
        )
        # `graph-replicator bootstrap` (daemon.bootstrap): stage is read | csv | loaded | applied
        self.bootstrap_records = Counter(
            p + "bootstrap_records_total",
            "Vertices and edges a bootstrap handled, by stage",
            ["source", "stage"],
            registry=r,
        )
        self.bootstrap_bytes = Counter(
            p + "bootstrap_bytes_total", "Gzipped CSV bytes a bootstrap uploaded to S3", ["source"], registry=r
        )
        self.bootstrap_stage_seconds = Gauge(
            p + "bootstrap_stage_seconds", "Wall time of each finished bootstrap stage", ["source", "stage"], registry=r
        )
        self.bootstrap_success = Gauge(
            p + "bootstrap_last_success_timestamp_seconds",
            "Unix time a bootstrap of the source last handed its stream position to `run`",
            ["source"],
            registry=r,
        )
        self.events_sent = Counter(
            p + "events_sent_total", "CloudEvents an event sink delivered", ["source", "sink"], registry=r
        )
        self.events_dead_lettered = Counter(
            p + "events_dead_lettered_total",
            "CloudEvents an event sink gave up on (written to the dead-letter file), by reason",
            ["source", "sink", "reason"],
            registry=r,
        )
        self.event_buffer_depth = Gauge(
            p + "event_buffer_batches", "Batches waiting in an event sink's buffer", ["source", "sink"], registry=r
        )
        self.ready = Gauge(p + "ready", "1 while /readyz answers ready, 0 otherwise (draining included)", registry=r)
        self.event_loop_lag = Gauge(
            p + "event_loop_lag_seconds",
            "How late the event loop ran the last periodic heartbeat (the watchdog tick)",
            registry=r,
        )

    def note_stream_head(self, source: str, commit: int, partition: str = "") -> None:
        """A source learnt that its stream holds changes up to commit number `commit`. From then on
        `commits_behind_head` follows the source's checkpointed commit number at every scrape."""
        head = self.stream_head_commit.labels(source=source)
        if commit <= _sample_value(head):
            return
        first = _sample_value(head) == 0
        head.set(commit)
        if first:
            checkpoint = self.checkpoint_commit.labels(source=source, partition=partition)
            self.commits_behind_head.labels(source=source).set_function(
                lambda: max(0.0, _sample_value(head) - _sample_value(checkpoint))
            )


def _sample_value(child: Gauge) -> float:
    """The value of one labelled gauge (its only sample)."""
    return child.collect()[0].samples[0].value


METRICS = Metrics()


class SourceMetrics:
    """One source's counters, bound to its label once."""

    FAILING_AFTER = 3  # failed calls in a row after which a source is not up (nor ready)

    def __init__(self, source: str) -> None:
        self.source = source
        self.read = METRICS.records_read.labels(source=source)
        self.polls = METRICS.source_polls.labels(source=source)
        self.empty_polls = METRICS.source_empty_polls.labels(source=source)
        self.dead_lettered = METRICS.records_dead_lettered.labels(source=source, stage="translate")
        self.up = METRICS.source_up.labels(source=source)
        # Series that exist from the start at 0, so that rate() and `== 1` alerts see them before any event.
        METRICS.stream_expired.labels(source=source)
        METRICS.stream_reset.labels(source=source)
        METRICS.records_skipped.labels(source=source, reason="edge_not_in_target")
        METRICS.records_dead_lettered.labels(source=source, stage="apply")
        METRICS.records_dead_lettered.labels(source=source, stage="plan")
        for reason in ("vertex_missing", "endpoint_missing", "edge_missing"):
            METRICS.records_no_effect.labels(source=source, reason=reason)
        METRICS.task_restarts.labels(source=source)  # so increase() sees the first restart

    def retried(self, reason: str, attempt: int) -> bool:
        """Count a failed source call that will be retried; True once the source counts as failing."""
        METRICS.source_errors.labels(source=self.source, error_type=reason).inc()
        failing = attempt >= self.FAILING_AFTER
        if failing:
            self.up.set(0)
        return failing


LEASE_PARTITION_STATES = ("owned", "unowned", "waiting", "finished")
LEASE_RELEASE_REASONS = ("drain", "handoff", "shard_end")


class LeaseMetrics:
    """One source's lease series (the coordinator's), bound to its label once; every series exists from the
    start at 0 so that rate() and alerts see the first event."""

    def __init__(self, source: str, metrics: Metrics | None = None) -> None:
        m = metrics or METRICS
        self.held = m.leases_held.labels(source=source)
        self.acquired = m.lease_acquisitions.labels(source=source)
        self.steals = m.lease_steals.labels(source=source)
        self.losses = m.lease_losses.labels(source=source)
        self.released = {
            reason: m.lease_releases.labels(source=source, reason=reason) for reason in LEASE_RELEASE_REASONS
        }
        self.partitions = {
            state: m.lease_partitions.labels(source=source, state=state) for state in LEASE_PARTITION_STATES
        }
        self.unowned_seconds = m.lease_unowned_seconds.labels(source=source)
        self.duration = m.lease_duration.labels(source=source)


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """structlog JSON lines (console renderer on a TTY when fmt is auto)."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        processors = [*shared, structlog.dev.ConsoleRenderer()]
        factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
