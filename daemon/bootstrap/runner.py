"""`graph-replicator bootstrap`: position first, snapshot, copy, then hand the position to `run`.

Room in the design: the bootstrap's conductor (DESIGN `bootstrap.py`). For one source:

1. Refuse to start over an existing checkpoint (`--force` overrides) or, unless allowed, a non-empty target:
   a copy into a graph that already holds elements the source has since deleted would keep them forever.
2. The reader records the stream position (`SnapshotReader.position_before`), then reads the snapshot.
3. Into a Neptune Database target: CSV files -> S3 -> bulk loader (nodes, then relationships), then the
   residual through openCypher (`daemon.bootstrap.csv_files`). Into FalkorDB or Neptune Analytics: the records
   go straight through the sink in large batches (`daemon.bootstrap.direct`); an embedded FalkorDB engine
   then rewrites its append-only file, so `run` does not replay every statement of the copy on start.
   An RDF (`neptune-sparql`) source's quads (`daemon.bootstrap.sparql_reader`) go into a Neptune cluster
   (`sparql` sink with `bulk_loader`) as gzipped N-Quads files -> S3 -> one loader job with `format=nquads`
   (`daemon.bootstrap.nquads_files`), into any other RDF sink as batched `INSERT DATA` through the RDF planner.
4. **Hand-off**: only when every step succeeded is the recorded position written as the source's checkpoint
   (`daemon.bootstrap.handoff`: the SQLite file, or free leases in the DynamoDB lease table, where a lease held
   by a live instance refuses the bootstrap up front unless `--force`), so `graph-replicator run` replays
   everything committed since it was recorded.
   On any failure nothing is written and the error says what to do; the files stay in S3 for inspection.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from daemon.aws import open_client
from daemon.bootstrap.csv_files import NODES, RELATIONSHIPS, CsvFile, CsvSnapshotWriter
from daemon.bootstrap.direct import DirectWriter, compact_embedded_engine
from daemon.bootstrap.dynamodb_reader import open_dynamodb_snapshot_reader
from daemon.bootstrap.handoff import open_handoff
from daemon.bootstrap.loader import LoaderClient, LoaderSettings, LoadResult
from daemon.bootstrap.neptune_reader import open_neptune_snapshot_reader
from daemon.bootstrap.progress import Progress
from daemon.bootstrap.records import (
    BootstrapConfigError,
    BootstrapError,
    SnapshotReader,
    edge_changes,
    vertex_changes,
)
from daemon.bootstrap.s3 import S3Writer, open_s3_client
from daemon.bootstrap.spool import ChangeSpool
from daemon.config import (
    Config,
    DynamoDBSourceConfig,
    NeptuneSinkConfig,
    NeptuneSourceConfig,
    NeptuneSparqlSourceConfig,
    SparqlSinkConfig,
)
from daemon.deadletter import DeadLetterFile
from daemon.model import Position
from daemon.observability import METRICS
from daemon.sinks.base import GraphSink, RetryPolicy

log = structlog.get_logger("daemon.bootstrap")
T = TypeVar("T")

ReaderFactory = Callable[[AsyncExitStack, Any, DeadLetterFile], Awaitable[SnapshotReader]]
RESIDUAL_CHUNK = 20_000


@dataclass(slots=True)
class Stage:
    """Rows handled by one stage and the time it spent on them (busy time, not wall time, where they overlap)."""

    rows: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class BootstrapResult:
    source: str
    sink: str
    method: str  # "loader" | "direct"
    positions: dict[str, Position]
    rdf: bool = False  # an RDF source: `quads` were copied (N-Quads files, or INSERT DATA)
    quads: int = 0
    vertices: int = 0
    edges: int = 0
    dangling_edges: int = 0
    residual_vertices: int = 0
    residual_edges: int = 0
    residual_changes: int = 0
    dead_lettered: int = 0
    files: int = 0
    csv_bytes: int = 0
    gzip_bytes: int = 0
    s3_location: str | None = None
    loads: list[LoadResult] = field(default_factory=list)
    stages: dict[str, Stage] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        position = ", ".join(f"{p or 'stream'} {list(pos)}" for p, pos in self.positions.items())
        copied = f"{self.quads:,} quads" if self.rdf else f"{self.vertices:,} vertices, {self.edges:,} edges"
        lines = [
            f"bootstrapped source {self.source!r} into {self.sink!r} ({self.method}) in {self.seconds:.1f} s: {copied}",
            f"handed off position: {position}; `graph-replicator run` continues from there",
        ]
        if self.dangling_edges:
            lines.append(f"{self.dangling_edges:,} edges created during the copy are left to the stream replay")
        if self.files:
            kind = "N-Quads" if self.rdf else "CSV"
            lines.append(
                f"{self.files} {kind} files, {self.csv_bytes / 1e6:,.1f} MB ({self.gzip_bytes / 1e6:,.1f} MB gzipped) "
                f"at {self.s3_location}"
            )
        if self.residual_changes:
            lines.append(
                f"written through openCypher besides the files: {self.residual_vertices:,} whole vertices, "
                f"{self.residual_edges:,} whole edges, {self.residual_changes:,} change records in all"
            )
        if self.dead_lettered:
            lines.append(f"{self.dead_lettered:,} changes were rejected and written to the dead-letter file")
        for name, stage in self.stages.items():
            if stage.rows:
                lines.append(
                    f"  {name:<14} {stage.rows:>10,} rows in {stage.seconds:7.2f} s  {stage.rate:>10,.0f} rows/s"
                )
        return "\n".join(lines)


async def _prefetch(pages: AsyncIterator[T], depth: int = 2) -> AsyncIterator[T]:
    """Iterate `pages` while the next ones are already being read (overlaps reading and writing)."""
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=depth)

    async def pump() -> None:
        try:
            async for page in pages:
                await queue.put((True, page))
            await queue.put((False, None))
        except BaseException as exc:
            await queue.put((False, exc))
            raise

    task = asyncio.create_task(pump())
    try:
        while True:
            more, item = await queue.get()
            if not more:
                if isinstance(item, BaseException):
                    raise item
                return
            yield item
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task


async def default_reader(
    stack: AsyncExitStack, cfg: Any, dead_letters: DeadLetterFile, config: Config
) -> SnapshotReader:
    if isinstance(cfg, NeptuneSourceConfig):
        return await open_neptune_snapshot_reader(
            stack, cfg, page_size=config.bootstrap.read_page_size, dead_letters=dead_letters
        )
    if isinstance(cfg, NeptuneSparqlSourceConfig):
        from daemon.bootstrap.sparql_reader import open_sparql_snapshot_reader  # pyoxigraph: only for RDF configs

        return await open_sparql_snapshot_reader(
            stack, cfg, page_size=config.bootstrap.read_page_size, dead_letters=dead_letters
        )
    if isinstance(cfg, DynamoDBSourceConfig):
        data_dir = config.daemon.resolved_data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        return await open_dynamodb_snapshot_reader(
            stack, cfg, config.bootstrap, spool_dir=data_dir, dead_letters=dead_letters
        )
    raise BootstrapConfigError(
        f"source {cfg.name!r}: bootstrap is not available for kind {cfg.kind!r} sources in this version"
    )


class Bootstrap:
    def __init__(
        self,
        config: Config,
        source: str,
        *,
        progress: Progress | None = None,
        force: bool = False,
        allow_non_empty_target: bool = False,
        reader_factory: ReaderFactory | None = None,
        run_id: str | None = None,
    ) -> None:
        self.config = config
        try:
            self.source_cfg = config.source(source)
        except KeyError:
            known = ", ".join(s.name for s in config.sources) or "none"
            raise BootstrapConfigError(f"no source named {source!r} (sources: {known})") from None
        if self.source_cfg.sink is None:
            raise BootstrapConfigError(
                f"source {source!r} feeds event sinks only ({', '.join(self.source_cfg.sinks)}): there is no graph to "
                "bootstrap; its event sinks begin at the source's `start`"
            )
        self.sink_name = self.source_cfg.sink
        self.sink_cfg = config.sinks[self.sink_name]
        self.settings = config.bootstrap
        self.progress = progress or Progress(source)
        self.force = force
        self.allow_non_empty_target = allow_non_empty_target
        self._reader_factory = reader_factory
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        self.rdf = isinstance(self.source_cfg, NeptuneSparqlSourceConfig)
        self.use_loader = isinstance(self.sink_cfg, NeptuneSinkConfig) or (
            isinstance(self.sink_cfg, SparqlSinkConfig) and self.sink_cfg.bulk_loader
        )
        self.dead_letters = DeadLetterFile(config.dead_letter_path)

    def _check_settings(self) -> None:
        if not self.use_loader:
            return
        missing = [k for k in ("s3_bucket", "iam_role_arn") if getattr(self.settings, k) is None]
        if missing:
            raise BootstrapConfigError(
                "; ".join(
                    f"bootstrap.{k}: required to bootstrap into sink {self.sink_name!r} through the Neptune bulk loader"
                    for k in missing
                )
            )

    async def run(self) -> BootstrapResult:
        self._check_settings()
        started = time.monotonic()
        async with AsyncExitStack() as store_stack:
            store = await open_handoff(store_stack, self.config, self.source_cfg.name)
            existing = await store.existing()
            if existing and not self.force:
                raise BootstrapConfigError(
                    f"source {self.source_cfg.name!r} already has a checkpoint ({_positions_text(existing)}) in "
                    f"{store.where}: it is replicating already. To copy it again, empty the target and run "
                    "bootstrap with --force (the checkpoint is replaced only when the copy succeeds)."
                )
            await store.check_owners(self.force)
            from daemon.supervisor import build_sink

            sink = build_sink(self.sink_name, self.sink_cfg, self.config)
            async with AsyncExitStack() as stack:
                await sink.start()
                stack.push_async_callback(sink.close)
                if not self.allow_non_empty_target:
                    await self._check_empty(sink)
                factory = self._reader_factory or (lambda st, cfg, dl: default_reader(st, cfg, dl, self.config))
                reader = await factory(stack, self.source_cfg, self.dead_letters)
                self.progress.begin("position")
                positions = await reader.position_before()
                result = BootstrapResult(
                    self.source_cfg.name, self.sink_name, "loader" if self.use_loader else "direct", positions
                )
                result.rdf = self.rdf
                if self.rdf and self.use_loader:
                    await self._rdf_via_loader(stack, reader, result)
                elif self.rdf:
                    await self._rdf_direct(reader, sink, result)
                elif self.use_loader:
                    await self._via_loader(stack, reader, sink, result)
                else:
                    await self._direct(reader, sink, result)
                result.dangling_edges = reader.dangling
                result.dead_lettered += int(getattr(reader, "dead_lettered", 0))
                self.progress.begin("hand-off")
                await store.write(positions)
        self.progress.finish()
        result.seconds = time.monotonic() - started
        METRICS.bootstrap_success.labels(source=self.source_cfg.name).set(time.time())
        log.info("bootstrap handed off", source=self.source_cfg.name, positions=_positions_text(positions))
        return result

    async def _check_empty(self, sink: GraphSink) -> None:
        if self.rdf:
            rows = await sink.query("ASK { { ?s ?p ?o } UNION { GRAPH ?g { ?s ?p ?o } } }")
            found, what = bool(rows and rows[0].get("ask")), "quads"
        else:
            found, what = bool(await sink.query("MATCH (n) RETURN 1 AS found LIMIT 1")), "elements"
        if found:
            raise BootstrapConfigError(
                f"sink {self.sink_name!r} is not empty: a copy into it would keep {what} the source no longer has. "
                "Empty it first, or pass --allow-non-empty-target if it holds nothing the source lacks."
            )

    def _direct_writer(self, sink: GraphSink, planner: Any = None) -> DirectWriter:
        s = self.sink_cfg
        return DirectWriter(
            sink,
            source=self.source_cfg.name,
            batch_size=self.settings.write_batch_size,
            concurrency=s.concurrency,
            retry=RetryPolicy(s.retry_initial_seconds, s.retry_max_seconds, s.attempts_before_split),
            dead_letters=self.dead_letters,
            edge_type_cache_size=max(self.source_cfg.edge_type_cache_size, 1),
            planner=planner,
        )

    async def _direct(self, reader: SnapshotReader, sink: GraphSink, result: BootstrapResult) -> None:
        """FalkorDB / Neptune Analytics: every record through the sink in large batches."""
        position = result.positions.get("", (0, 0))
        writer = self._direct_writer(sink)
        self.progress.begin("snapshot")
        changes = 0
        async for vertices in _prefetch(reader.vertices()):
            result.vertices += len(vertices)
            self.progress.read(vertices=len(vertices))
            batch = [c for v in vertices for c in vertex_changes(v, position)]
            changes += len(batch)
            self.progress.apply(await writer.apply(batch))
        async for edges in _prefetch(reader.edges()):
            result.edges += len(edges)
            self.progress.read(edges=len(edges))
            batch = [c for e in edges for c in edge_changes(e, position)]
            changes += len(batch)
            self.progress.apply(await writer.apply(batch))
        result.dead_lettered += writer.changes_dead_lettered
        rows = result.vertices + result.edges
        result.stages["snapshot read"] = Stage(rows, float(getattr(reader, "read_seconds", 0.0)))
        result.stages["plan"] = Stage(rows, writer.plan_seconds)
        result.stages["write"] = Stage(rows, writer.apply_seconds)
        self.progress.begin("compact")
        began = time.perf_counter()
        if await compact_embedded_engine(sink):
            result.stages["compact"] = Stage(rows, time.perf_counter() - began)

    async def _rdf_direct(self, reader: Any, sink: GraphSink, result: BootstrapResult) -> None:
        """RDF into the embedded Oxigraph store or a SPARQL endpoint: every quad an ADD through the RDF planner
        and `PlanApplier` (batched `INSERT DATA`, retries, bisection, dead letters), as the stream writes it."""
        from daemon.rdf import QuadChange, RdfPlanner

        position = result.positions.get("", (0, 0))
        writer = self._direct_writer(sink, planner=RdfPlanner())
        self.progress.begin("snapshot")
        async for quads in _prefetch(reader.quads()):
            result.quads += len(quads)
            self.progress.read(quads=len(quads))
            self.progress.apply(await writer.apply([QuadChange(True, quad, position) for quad in quads]))
        result.dead_lettered += writer.changes_dead_lettered
        result.stages["snapshot read"] = Stage(result.quads, float(reader.read_seconds))
        result.stages["plan"] = Stage(result.quads, writer.plan_seconds)
        result.stages["write"] = Stage(result.quads, writer.apply_seconds)

    async def _rdf_via_loader(self, stack: AsyncExitStack, reader: Any, result: BootstrapResult) -> None:
        """RDF into a Neptune cluster: gzipped N-Quads files -> S3 -> one bulk loader job (`format=nquads`)."""
        from daemon.bootstrap.nquads_files import QUADS, NQuadsFile, NQuadsSnapshotWriter

        s, sink_cfg = self.settings, self.sink_cfg
        assert isinstance(sink_cfg, SparqlSinkConfig) and sink_cfg.region is not None
        s3, prefix = await self._s3(stack, sink_cfg.region, sink_cfg.profile, result)
        upload = Stage()

        async def put(file: NQuadsFile) -> None:
            began = time.perf_counter()
            await s3.put(f"{prefix}/{file.name}", file.data)
            upload.seconds += time.perf_counter() - began
            upload.rows += file.rows
            self.progress.wrote_file(file.rows, len(file.data))

        writer = NQuadsSnapshotWriter(put, file_max_bytes=s.file_max_bytes)
        self.progress.begin("snapshot")
        try:
            async for quads in _prefetch(reader.quads()):
                result.quads += len(quads)
                self.progress.read(quads=len(quads))
                await writer.add(quads)
            await writer.close()
        except BaseException:
            await writer.abort()
            raise
        stats = writer.stats
        result.files, result.csv_bytes, result.gzip_bytes = stats.files, stats.text_bytes, stats.gzip_bytes
        result.stages["snapshot read"] = Stage(result.quads, float(reader.read_seconds))
        result.stages["n-quads write"] = Stage(stats.rows, stats.encode_seconds)
        result.stages["s3 upload"] = upload
        if stats.files:
            self.progress.rows_to_load = stats.rows
            self.progress.begin("load")
            loader = await self._loader(stack, sink_cfg.loader_endpoint, sink_cfg.region, sink_cfg.profile, "nquads")
            began = time.perf_counter()
            result.loads = await loader.load_all([(QUADS, s3.uri(f"{prefix}/{QUADS}/"))])
            result.stages["load"] = Stage(stats.rows, time.perf_counter() - began)
            if not s.keep_files:
                deleted = await s3.delete_prefix(prefix + "/")
                log.info("bootstrap files deleted", location=result.s3_location, files=deleted)

    async def _s3(
        self, stack: AsyncExitStack, sink_region: str, profile: str | None, result: BootstrapResult
    ) -> tuple[S3Writer, str]:
        """The staging bucket's writer (checked) and this run's key prefix."""
        s = self.settings
        assert s.s3_bucket is not None
        prefix = "/".join(p for p in (s.s3_prefix.strip("/"), self.source_cfg.name, self.run_id) if p)
        s3 = S3Writer(
            await open_s3_client(stack, endpoint=s.s3_endpoint, region=s.s3_region or sink_region, profile=profile),
            s.s3_bucket,
            part_bytes=s.multipart_part_bytes,
        )
        await s3.check_bucket()
        result.s3_location = s3.uri(prefix + "/")
        return s3, prefix

    async def _loader(
        self, stack: AsyncExitStack, endpoint: str, region: str, profile: str | None, file_format: str
    ) -> LoaderClient:
        s = self.settings
        assert s.iam_role_arn is not None
        client = await open_client(stack, "neptunedata", endpoint=endpoint, region=region, profile=profile)
        return LoaderClient(
            client,
            LoaderSettings(
                iam_role_arn=s.iam_role_arn,
                region=s.s3_region or region,
                parallelism=s.loader_parallelism,
                fail_on_error=s.loader_fail_on_error,
                poll_seconds=s.loader_poll_seconds,
                retries=s.loader_retries,
                format=file_format,
            ),
            on_progress=self.progress.loader,
        )

    async def _via_loader(
        self, stack: AsyncExitStack, reader: SnapshotReader, sink: GraphSink, result: BootstrapResult
    ) -> None:
        """Neptune Database: CSV -> S3 -> bulk loader, then the residual through openCypher."""
        s, sink_cfg = self.settings, self.sink_cfg
        assert isinstance(sink_cfg, NeptuneSinkConfig)
        s3, prefix = await self._s3(stack, sink_cfg.region, sink_cfg.profile, result)
        data_dir = self.config.daemon.resolved_data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        spools = ChangeSpool(data_dir, name="vertices"), ChangeSpool(data_dir, name="edges")
        for spool in spools:
            stack.callback(spool.close)
        upload = Stage()

        async def put(file: CsvFile) -> None:
            began = time.perf_counter()
            await s3.put(f"{prefix}/{file.name}", file.data)
            upload.seconds += time.perf_counter() - began
            upload.rows += file.rows
            self.progress.wrote_file(file.rows, len(file.data))

        writer = CsvSnapshotWriter(
            put,
            residual_vertices=spools[0],
            residual_edges=spools[1],
            file_max_bytes=s.file_max_bytes,
            position=result.positions.get("", (0, 0)),
        )
        self.progress.begin("snapshot")
        try:
            async for vertices in _prefetch(reader.vertices()):
                result.vertices += len(vertices)
                self.progress.read(vertices=len(vertices))
                await writer.add_vertices(vertices)
            async for edges in _prefetch(reader.edges()):
                result.edges += len(edges)
                self.progress.read(edges=len(edges))
                await writer.add_edges(edges)
            await writer.close()
        except BaseException:
            await writer.abort()
            raise
        stats = writer.stats
        result.files = sum(stats.files.values())
        result.csv_bytes, result.gzip_bytes = stats.csv_bytes, stats.gzip_bytes
        result.residual_vertices, result.residual_edges = stats.residual_vertices, stats.residual_edges
        result.residual_changes = stats.residual_changes
        rows = result.vertices + result.edges
        result.stages["snapshot read"] = Stage(rows, float(getattr(reader, "read_seconds", 0.0)))
        result.stages["csv write"] = Stage(sum(stats.rows.values()), stats.split_seconds + stats.encode_seconds)
        result.stages["s3 upload"] = upload

        jobs = [(kind, s3.uri(f"{prefix}/{kind}/")) for kind in (NODES, RELATIONSHIPS) if stats.files[kind]]
        if jobs:
            self.progress.rows_to_load = sum(stats.rows.values())
            self.progress.begin("load")
            loader = await self._loader(stack, sink_cfg.endpoint, sink_cfg.region, sink_cfg.profile, "opencypher")
            began = time.perf_counter()
            result.loads = await loader.load_all(jobs)
            result.stages["load"] = Stage(sum(stats.rows.values()), time.perf_counter() - began)

        if stats.residual_changes:
            self.progress.begin("residual")
            direct = self._direct_writer(sink)
            for spool in spools:  # vertices first: residual edges may need residual endpoints
                for chunk in spool.chunks(RESIDUAL_CHUNK):
                    self.progress.apply(await direct.apply(chunk))
            result.dead_lettered += direct.changes_dead_lettered
            result.stages["residual write"] = Stage(stats.residual_changes, direct.plan_seconds + direct.apply_seconds)
        if not s.keep_files and jobs:
            deleted = await s3.delete_prefix(prefix + "/")
            log.info("bootstrap files deleted", location=result.s3_location, files=deleted)


def _positions_text(positions: dict[str, Position]) -> str:
    return ", ".join(f"{p or 'stream'}={list(pos)}" for p, pos in positions.items())


def bootstrap_error_text(exc: BaseException) -> str:
    """How the CLI reports a failed bootstrap."""
    text = str(exc) if isinstance(exc, BootstrapError) else f"{type(exc).__name__}: {exc}"
    out = f"bootstrap failed: {text}\nnothing was handed off: no checkpoint was written."
    if not isinstance(exc, BootstrapConfigError):
        out += (
            "\nThe target may hold part of the copy: empty it, fix the cause, and run bootstrap again "
            "(files written to S3 stay there for inspection)."
        )
    return out
