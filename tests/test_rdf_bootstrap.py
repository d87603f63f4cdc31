"""RDF bootstrap end to end: a Neptune RDF source (a stand whose pyoxigraph store holds a seeded dataset and whose
GetSparqlStream holds its changes) is copied while commits keep landing between the snapshot pages, then
`run --exit-when-idle` streams from the position recorded before the copy; the replica must equal the source's
final dataset as a set of quads (blank nodes by the skolem rule the stream uses).

* into the embedded Oxigraph store (batched INSERT DATA through the RDF planner);
* into a SPARQL endpoint (the session stand's, SigV4);
* through the Neptune bulk loader (`format = "nquads"`, files in moto's S3, the session stand's loader);
* refusals: loader settings missing, a non-empty target, an existing checkpoint, a loader that refuses a file.
"""

from __future__ import annotations

import asyncio
import gzip
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import boto3
import pytest
from pyoxigraph import Quad, RdfFormat, Store, parse

from daemon.bootstrap import Bootstrap, BootstrapConfigError, BootstrapError, BootstrapResult
from daemon.bootstrap.progress import Progress
from daemon.bootstrap.sparql_reader import SparqlSnapshotReader, open_sparql_snapshot_reader
from daemon.config import load_config
from daemon.deadletter import DeadLetterFile
from daemon.rdf import default_blank_node_prefix, nquad
from daemon.supervisor import Supervisor
from tests.stand.daemon_process import AWS_ENV, toml_value, write_config
from tests.stand.harness import add_lease_table, staging_bucket
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.rdf_workload import RdfHistory, apply_commit, generate_rdf_history

PREFIX = default_blank_node_prefix("main")
ROLE = "arn:aws:iam::123456789012:role/NeptuneLoadFromS3"
BUCKET = "rdf-bootstrap-tests"
INITIAL = 450  # commits the source holds when the bootstrap starts; the rest land during the copy


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def source() -> Any:
    with NeptuneStand(graph_name="rdf-source") as stand:
        yield stand


@pytest.fixture(scope="module")
def history() -> RdfHistory:
    # a pool of 600 terms: about 1,000 quads over some 300 subjects, so pages of 61 end inside groups
    return generate_rdf_history(23, 650, blank_node_prefix=PREFIX, pool=600)


@pytest.fixture
def bucket(moto_server: str, stand: NeptuneStand) -> str:
    return staging_bucket(moto_server, stand, BUCKET)


def prepare(source: NeptuneStand, history: RdfHistory) -> tuple[int, int]:
    """The source holds the first INITIAL commits; its stream keeps only the last two of them (older records
    trimmed, as retention does). Returns the stream's last event id."""
    source.reset()
    for ops in history.commits[:INITIAL]:
        apply_commit(source.rdf_store, ops)
    for ops in history.commits[INITIAL - 2 : INITIAL]:
        source.sparql_stream.append_commit(ops)
    last = source.sparql_stream.last_event_id()
    assert last is not None
    source.sparql_stream.trim_before(last[0])
    return last


class Churn:
    """The rest of the history, applied in steps to the source's stream and store (a commit at a time)."""

    def __init__(self, source: NeptuneStand, history: RdfHistory, steps: int) -> None:
        self.source = source
        self.pending = list(history.commits[INITIAL:])
        self.per_step = max(1, -(-len(self.pending) // steps))

    async def step(self) -> None:
        chunk, self.pending = self.pending[: self.per_step], self.pending[self.per_step :]
        for ops in chunk:
            self.source.sparql_stream.append_commit(ops)
            apply_commit(self.source.rdf_store, ops)

    async def finish(self) -> None:
        while self.pending:
            await self.step()


class InterleavedQuadReader:
    """The real reader; `between` runs after every page it hands over (writers racing the copy)."""

    def __init__(self, inner: SparqlSnapshotReader, between: Churn) -> None:
        self.inner, self.between = inner, between
        self.pages = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def position_before(self) -> dict[str, Any]:
        return await self.inner.position_before()

    async def quads(self) -> Any:
        async for page in self.inner.quads():
            yield page
            self.pages += 1
            await self.between.step()


def make_config(tmp_path: Path, source: NeptuneStand, sink: dict[str, Any], **bootstrap: Any) -> Path:
    path = write_config(
        tmp_path / "config.toml",
        data_dir=tmp_path / "data",
        source={"kind": "neptune-sparql", "endpoint": source.url, "region": "us-east-1", "limit": 500},
        sink={"batch_size": 300, "retry_initial_seconds": 0.02, "retry_max_seconds": 0.3, **sink},
        daemon={"http_address": ""},
    )
    settings = {"read_page_size": 61, "write_batch_size": 250, **bootstrap}
    with open(path, "a") as fh:
        fh.write("\n[bootstrap]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    return path


def loader_settings(moto_server: str, **more: Any) -> dict[str, Any]:
    return {"s3_bucket": BUCKET, "s3_endpoint": moto_server, "iam_role_arn": ROLE, "loader_poll_seconds": 0.05,
            "file_max_bytes": 20_000, **more}  # fmt: skip


async def bootstrap_while_churning(path: Path, source: NeptuneStand, history: RdfHistory) -> BootstrapResult:
    config = load_config(path)
    churn = Churn(source, history, steps=12)
    readers: list[InterleavedQuadReader] = []

    async def reader(stack: AsyncExitStack, cfg: Any, dead_letters: DeadLetterFile) -> InterleavedQuadReader:
        inner = await open_sparql_snapshot_reader(
            stack, cfg, page_size=config.bootstrap.read_page_size, dead_letters=dead_letters
        )
        readers.append(InterleavedQuadReader(inner, churn))
        return readers[-1]

    bootstrap = Bootstrap(config, "main", reader_factory=reader, progress=Progress("main", tty=False))
    try:
        result = await bootstrap.run()
    finally:
        await churn.finish()  # what is left lands after the copy, before streaming
    [used] = readers
    assert used.pages >= 12 and used.inner.groups >= 3, (used.pages, used.inner.groups)  # groups cut by pages
    return result


def stream(path: Path) -> Supervisor:
    loop = asyncio.new_event_loop()
    supervisor = Supervisor(load_config(path), exit_when_idle=True)
    try:
        assert loop.run_until_complete(supervisor.run()) == 0
    finally:
        loop.close()
    return supervisor


def assert_same(expected: set[Quad], got: set[Quad]) -> None:
    missing, extra = sorted(map(nquad, expected - got)), sorted(map(nquad, got - expected))
    assert not missing and not extra, f"missing {missing[:5]} extra {extra[:5]} ({len(missing)}/{len(extra)})"


def embedded(tmp_path: Path) -> set[Quad]:
    store = Store(str(tmp_path / "data" / "oxigraph" / "target"))
    try:
        return set(store.quads_for_pattern(None, None, None, None))
    finally:
        del store


def test_bootstrap_into_the_embedded_store_while_the_source_changes_then_streaming_converges(
    source: NeptuneStand, history: RdfHistory, tmp_path: Path
) -> None:
    position = prepare(source, history)
    path = make_config(tmp_path, source, {"kind": "oxigraph"})
    result = asyncio.run(bootstrap_while_churning(path, source, history))
    assert result.positions == {"": position} and result.method == "direct" and result.dead_lettered == 0
    assert result.quads > 0 and "quads" in result.summary()
    supervisor = stream(path)
    assert supervisor.pipelines[0].changes_applied > 0
    assert_same(history.reference, embedded(tmp_path))


def test_bootstrap_with_the_dynamodb_store_hands_off_a_free_lease_then_streaming_converges(
    source: NeptuneStand, history: RdfHistory, moto_server: str, tmp_path: Path
) -> None:
    """With `[checkpoint] kind = "dynamodb"` the position goes into the lease table as a free lease holding it;
    `run` takes the lease and streams from there."""
    from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore

    position = prepare(source, history)
    table = f"rdf-bootstrap-{uuid.uuid4().hex[:8]}"
    path = add_lease_table(make_config(tmp_path, source, {"kind": "oxigraph"}), moto_server, table)
    result = asyncio.run(bootstrap_while_churning(path, source, history))
    assert result.positions == {"": position}

    async def lease() -> Any:
        async with AsyncExitStack() as stack:
            store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
            return await store.get_lease("main", "")

    handed = asyncio.run(lease())
    assert handed.owner is None and tuple(handed.position) == position
    stream(path)
    assert_same(history.reference, embedded(tmp_path))
    assert tuple(asyncio.run(lease()).position) == source.sparql_stream.last_event_id()


def test_bootstrap_into_a_sparql_endpoint_then_streaming_converges(
    source: NeptuneStand, stand: NeptuneStand, history: RdfHistory, tmp_path: Path
) -> None:
    position = prepare(source, history)
    sink = {"kind": "sparql", "update_url": f"{stand.url}/sparql", "auth": "sigv4", "region": "us-east-1"}
    path = make_config(tmp_path, source, sink)
    result = asyncio.run(bootstrap_while_churning(path, source, history))
    assert result.positions == {"": position} and result.method == "direct"
    stream(path)
    assert_same(history.reference, set(stand.rdf_store.quads_for_pattern(None, None, None, None)))


def test_bootstrap_through_the_bulk_loader_then_streaming_converges(
    source: NeptuneStand, stand: NeptuneStand, history: RdfHistory, bucket: str, moto_server: str, tmp_path: Path
) -> None:
    """N-Quads files (gzipped, rolled at 20 kB) in moto's S3, one StartLoaderJob with format nquads into the
    session stand, whose loader puts them into its pyoxigraph store; then the stream."""
    position = prepare(source, history)
    sink = {"kind": "sparql", "update_url": f"{stand.url}/sparql", "auth": "sigv4", "region": "us-east-1",
            "bulk_loader": True}  # fmt: skip
    path = make_config(tmp_path, source, sink, **loader_settings(moto_server))
    result = asyncio.run(bootstrap_while_churning(path, source, history))
    assert result.positions == {"": position} and result.method == "loader" and result.files >= 2
    assert [(load.name, load.status, load.records) for load in result.loads] == [
        ("quads", "LOAD_COMPLETED", result.quads)
    ]
    [job] = stand.loader.jobs.values()
    assert job.params["format"] == "nquads" and "userProvidedEdgeIds" not in job.params
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    assert result.s3_location is not None
    prefix = result.s3_location.removeprefix(f"s3://{BUCKET}/")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    assert len(keys) == result.files and all(k.endswith(".nq.gz") for k in keys)
    body = gzip.decompress(s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read())
    assert all(q.subject.value.startswith(("http://", PREFIX)) for q in parse(body, format=RdfFormat.N_QUADS))
    stream(path)
    assert_same(history.reference, set(stand.rdf_store.quads_for_pattern(None, None, None, None)))


async def test_refusals(
    source: NeptuneStand, stand: NeptuneStand, history: RdfHistory, moto_server: str, bucket: str, tmp_path: Path
) -> None:
    prepare(source, history)
    loader_sink = {"kind": "sparql", "update_url": f"{stand.url}/sparql", "auth": "sigv4", "region": "us-east-1",
                   "bulk_loader": True}  # fmt: skip
    config = load_config(make_config(tmp_path, source, loader_sink))
    with pytest.raises(BootstrapConfigError, match=r"bootstrap.s3_bucket: required .*'target' through the Neptune"):
        await Bootstrap(config, "main").run()

    # a loader that refuses a file: its error line is reported and nothing is handed off
    config = load_config(make_config(tmp_path, source, loader_sink, **loader_settings(moto_server)))
    stand.loader.fail_file("quads-00002", code="PARSING_ERROR", message="Unexpected token (injected)")
    with pytest.raises(BootstrapError, match=r"quads-00002.nq.gz record 1: PARSING_ERROR: Unexpected token"):
        await Bootstrap(config, "main", progress=Progress("main", tty=False)).run()
    assert not (tmp_path / "data" / "checkpoints.sqlite3").exists() or not _checkpoint(tmp_path)

    # a target that holds quads is refused (a copy would keep what the source has since removed)
    assert len(stand.rdf_store) > 0
    sink = {"kind": "sparql", "update_url": f"{stand.url}/sparql", "auth": "sigv4", "region": "us-east-1"}
    config = load_config(make_config(tmp_path, source, sink))
    with pytest.raises(BootstrapConfigError, match="'target' is not empty: a copy into it would keep quads"):
        await Bootstrap(config, "main").run()

    # into an empty embedded store it goes; a second bootstrap over the checkpoint needs --force
    config = load_config(make_config(tmp_path, source, {"kind": "oxigraph"}))
    result = await Bootstrap(config, "main", progress=Progress("main", tty=False)).run()
    assert _checkpoint(tmp_path) == [("main", "", f"[{result.positions[''][0]},{result.positions[''][1]}]")]
    with pytest.raises(BootstrapConfigError, match="already has a checkpoint"):
        await Bootstrap(config, "main").run()


def _checkpoint(tmp_path: Path) -> list[tuple[str, str, str]]:
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "checkpoints.sqlite3") as conn:
        try:
            return list(conn.execute("SELECT source, partition, position FROM checkpoints"))
        except sqlite3.OperationalError:
            return []
