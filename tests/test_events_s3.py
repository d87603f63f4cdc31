"""The `s3` event sink (docs/events.md "S3"): a seeded history through a file source into a FalkorDB graph sink and
an archive in moto's S3 (server mode); every object read back, decompressed and checked against its key. The
archive holds every routed event exactly once, in source order, in windows cut by position: the same objects
(byte for byte) whatever the page size, and a replay after a crash (in-process, SIGKILL) overwrites the objects it
wrote before instead of adding others. Faults: PutObject answered 503 SlowDown / 500 (some after storing the
object) by a proxy in front of moto. DynamoDB: TTL deletions (scripted stream records with the service's
`userIdentity`) routed to an archive with `route = {ttl = true}`, inserts to another by `event_names`."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import falkordb
import jsonschema
import orjson
import pytest
from aiohttp import ClientSession, web

from daemon.checkpoint import SQLiteCheckpointStore
from daemon.config import ConfigError, load_config, parse_config
from daemon.deadletter import DeadLetterFile
from daemon.engine import EmbeddedFalkorDB, start_engine_in_thread
from daemon.events.archive import SUFFIX, ArchiveLane, object_key, position_text
from daemon.events.cloudevents import Route, events_of
from daemon.events.fanout import lane_key
from daemon.mapping import TTL_PRINCIPAL
from daemon.model import ChangeBatch, GraphChange
from daemon.observability import METRICS
from daemon.supervisor import Supervisor
from tests.stand.comparator import assert_converged, read_falkordb_graph
from tests.stand.daemon_process import AWS_ENV, DaemonProcess
from tests.stand.moto_process import MotoProcess
from tests.stand.scripted_streams import STREAM_ARN, ScriptedShard, ScriptedStreams
from tests.stand.workload import History, generate_history
from tests.test_events import config_text as events_config
from tests.test_events import read_changes as read_file_changes

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "cloudevents.schema.json").read_text())
MIDNIGHT_MS = 1_700_006_400_000  # 2023-11-15T00:00:00Z: the history's commits straddle it (a date cut)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def history() -> History:
    return generate_history(seed=61, n_changes=600, start_commit_ms=MIDNIGHT_MS - 1_000)


def write_history(path: Path, history: History, commits: int | None = None) -> Path:
    records = list(history.records())
    if commits is not None:
        records = [r for r in records if r["eventId"]["commitNum"] <= commits]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


@pytest.fixture(scope="module")
def history_file(history: History, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_history(tmp_path_factory.mktemp("s3events") / "history.jsonl", history)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedFalkorDB]:
    started, stop = start_engine_in_thread(tmp_path_factory.mktemp("engine"), fsync="everysec")
    yield started
    stop()


@pytest.fixture
def bucket(moto: MotoProcess, request: pytest.FixtureRequest) -> str:
    """A fresh bucket with versioning on: every PutObject of a key is a version, so overwrites can be counted."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def read_archive(moto: MotoProcess, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Key -> the object's (gzip) bytes, for every current object under `prefix`."""
    s3 = moto.client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def versions(moto: MotoProcess, bucket: str) -> dict[str, int]:
    """Key -> how many times it was written."""
    counts: dict[str, int] = {}
    for page in moto.client("s3").get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


def check_archive(
    objects: dict[str, bytes], expected: list[dict[str, Any]], *, prefix: str, source: str = "main", max_events: int
) -> dict[str, list[dict[str, Any]]]:
    """Each object is gzip NDJSON named by its events (date, partition, first..last position) and within the
    limits; per partition the objects' position ranges do not overlap, and their events in position order are
    exactly the expected ones: each once, in source order. Returns key -> events."""
    by_key = {key: [orjson.loads(line) for line in gzip.decompress(body).splitlines()] for key, body in objects.items()}
    runs: dict[str, list[tuple[str, str, list[dict[str, Any]]]]] = {}
    for key, events in by_key.items():
        assert events and key.endswith(SUFFIX), key
        assert key == object_key(prefix, source, events[0], events[-1]), key
        assert len({e["time"][:10] for e in events}) == 1, f"{key}: events of more than one date"
        assert len({e["data"].get("partition", "") for e in events}) == 1, f"{key}: more than one partition"
        assert len(events) <= max_events, f"{key}: {len(events)} events > {max_events}"
        partition = events[0]["data"].get("partition", "")
        first, last = (position_text(events[i]["data"]["position"]) for i in (0, -1))
        runs.setdefault(partition, []).append((first, last, events))
    archived: list[dict[str, Any]] = []
    for partition, run in runs.items():
        run.sort()
        for (_, last, _), (first, _, _) in itertools.pairwise(run):
            assert first > last, (
                f"partition {partition!r}: objects overlap ({last} >= {first}): a replay made a new key"
            )
        archived.extend(e for _, _, events in run for e in events)
    order = {e["id"]: i for i, e in enumerate(expected)}
    assert len(archived) == len(expected) and {e["id"] for e in archived} == set(order), "archived events differ"
    assert sorted(archived, key=lambda e: order[e["id"]]) == expected
    return by_key


def config_text(tmp: Path, history_file: Path, engine: EmbeddedFalkorDB, graph: str, sinks: dict[str, str], *,
                limit: int = 50) -> str:  # fmt: skip
    """test_events' config (a file source into a FalkorDB graph sink and `sinks`) with `limit` records a page."""
    return events_config(tmp, history_file, engine, graph, sinks).replace("limit = 50\n", f"limit = {limit}\n")


async def read_changes(path: Path) -> list[GraphChange]:
    return await read_file_changes(path, 5000)


def s3_sink(endpoint: str, bucket: str, prefix: str, extra: str = "") -> str:
    return (
        f'kind = "s3"\nbucket = "{bucket}"\nprefix = "{prefix}"\nregion = "us-east-1"\nendpoint = "{endpoint}"\n'
        f"object_max_events = 40\nobject_max_bytes = 16384\nretry_initial_seconds = 0.01\nretry_max_seconds = 0.05\n"
        + extra
    )


# ------------------------------------------------------------------------------------------- convergence


async def test_the_archive_holds_every_event_once_in_windows_cut_by_position(
    history: History, history_file: Path, engine: EmbeddedFalkorDB, moto: MotoProcess, bucket: str, tmp_path: Path
) -> None:
    """One run into the graph and two archives (every event; edges only); then the same history again with
    another page size and buffer into a third prefix: the same keys, byte for byte."""
    text = config_text(
        tmp_path,
        history_file,
        engine,
        "archive",
        {
            "all": s3_sink(moto.url, bucket, "all/"),
            "edges": s3_sink(moto.url, bucket, "edges/", 'route = {types = ["graph.edge.*"]}\n'),
        },
    )
    supervisor = Supervisor(parse_config(text), exit_when_idle=True)
    assert await asyncio.wait_for(supervisor.run(), 60) == 0
    changes = await read_changes(history_file)
    expected = events_of("main", changes, Route())
    every = check_archive(read_archive(moto, bucket, "all/"), expected, prefix="all/", max_events=40)
    assert {key.split("/")[2] for key in every} == {"date=2023-11-14", "date=2023-11-15"}  # a cut at midnight
    edges = events_of("main", changes, Route.of(["graph.edge.*"]))
    check_archive(read_archive(moto, bucket, "edges/"), edges, prefix="edges/", max_events=40)
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    for events in every.values():
        for event in events:
            validator.validate(event)
    graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("archive")
    assert_converged(history.reference, await asyncio.to_thread(read_falkordb_graph, graph))
    assert supervisor.dead_letters.count == 0
    status = {s["sink"]: s for s in supervisor.status()["sources"][0]["event_sinks"]}
    assert status["all"]["objects_written"] == len(every) and status["all"]["events_sent"] == len(expected)
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    try:
        assert store.load(lane_key("main", "all")) == store.load("main")
    finally:
        store.close()

    other = tmp_path / "other"
    text = config_text(other, history_file, engine, "archive2", {"all": s3_sink(moto.url, bucket, "again/")}, limit=7)
    text = text.replace('prefix = "again/"', 'prefix = "again/"\nbuffer_batches = 3\nwindow_max_events = 13')
    assert await asyncio.wait_for(Supervisor(parse_config(text), exit_when_idle=True).run(), 60) == 0
    again = read_archive(moto, bucket, "again/")
    assert {k.removeprefix("again/"): v for k, v in again.items()} == {
        k.removeprefix("all/"): v for k, v in read_archive(moto, bucket, "all/").items()
    }, "other page and buffer sizes cut other windows"


# ------------------------------------------------------------------------------------------------ replays


async def test_a_replay_after_a_crash_between_put_and_checkpoint_rewrites_the_same_object(
    history: History, engine: EmbeddedFalkorDB, moto: MotoProcess, bucket: str, tmp_path: Path
) -> None:
    """The first run reads half the history; its last window is cut because the source was caught up (a cut no
    position rule makes). The archive's checkpoint is then set back to before that last object, as a crash
    between PutObject and the checkpoint write leaves it, and the whole history is read: the object is written
    again under the same key (found by listing: the count rule alone would now cut it later), nothing overlaps,
    every event is there once."""
    path = tmp_path / "history.jsonl"
    write_history(path, history, commits=len(history.commits) // 2)
    text = config_text(tmp_path, path, engine, "replay", {"arc": s3_sink(moto.url, bucket, "r/")})
    assert await asyncio.wait_for(Supervisor(parse_config(text), exit_when_idle=True).run(), 60) == 0
    first = check_archive(read_archive(moto, bucket, "r/"), events_of("main", await read_changes(path), Route()),
                          prefix="r/", max_events=40)  # fmt: skip
    ordered = sorted(first, key=lambda k: position_text(first[k][0]["data"]["position"]))
    last_key, before = ordered[-1], first[ordered[-2]][-1]["data"]["position"]
    assert len(first[last_key]) < 40, "the last window was full: it tests nothing here"
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    await store.save_many(lane_key("main", "arc"), {"": tuple(before)})
    store.close()

    write_history(path, history)
    assert await asyncio.wait_for(Supervisor(parse_config(text), exit_when_idle=True).run(), 60) == 0
    check_archive(read_archive(moto, bucket, "r/"), events_of("main", await read_changes(path), Route()),
                  prefix="r/", max_events=40)  # fmt: skip
    written = versions(moto, bucket)
    assert written[last_key] == 2 and sum(written.values()) == len(written) + 1


async def test_sigkill_mid_run_then_resume_leaves_one_object_per_window(
    engine: EmbeddedFalkorDB, moto: MotoProcess, bucket: str, tmp_path: Path
) -> None:
    """The daemon process is killed once some objects are written; a second run finishes. The archive holds every
    event exactly once: windows written again by the second run have the same keys."""
    history = generate_history(seed=62, n_changes=1000, start_commit_ms=MIDNIGHT_MS - 10_000)
    path = write_history(tmp_path / "history.jsonl", history)
    config = tmp_path / "c.toml"
    config.write_text(
        config_text(tmp_path, path, engine, "killed", {"arc": s3_sink(moto.url, bucket, "k/")}, limit=20)
        .replace("object_max_events = 40", "object_max_events = 25")
        .replace("queue_size = 2", "queue_size = 1")
    )
    s3 = moto.client("s3")
    first = DaemonProcess(config)
    try:
        while s3.list_objects_v2(Bucket=bucket, Prefix="k/").get("KeyCount", 0) < 6:
            assert first.proc.poll() is None, first.log_tail()
            await asyncio.sleep(0.02)
    finally:
        first.kill()
    killed = set(read_archive(moto, bucket, "k/"))
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    try:
        reached = position_text(store.load(lane_key("main", "arc")).get("", (0, 0)))
    finally:
        store.close()
    beyond = {k for k in killed if k.rsplit("/", 1)[1] > reached}  # written, not yet checkpointed: at most one
    assert len(beyond) <= 1
    second = DaemonProcess(config)
    assert await asyncio.to_thread(second.wait, 90) == 0, second.log_tail()
    expected = events_of("main", await read_changes(path), Route())
    objects = check_archive(read_archive(moto, bucket, "k/"), expected, prefix="k/", max_events=25)
    assert killed < set(objects), "a key the first run wrote is not among the final ones"
    written = versions(moto, bucket)
    assert all(written[k] == 2 for k in beyond) and sum(written.values()) == len(objects) + len(beyond)
    graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("killed")
    assert_converged(history.reference, await asyncio.to_thread(read_falkordb_graph, graph))


# ------------------------------------------------------------------------------------------------- faults


class FaultyS3:
    """A proxy in front of moto's S3. PutObject calls are answered from `script` first: 503 SlowDown or 500
    InternalError without forwarding, or "stored-500": forwarded (the object is written) and then answered 500,
    so the client retries a PUT that had in fact succeeded."""

    def __init__(self, upstream: str, script: list[str]) -> None:
        self.upstream, self.script = upstream, list(script)
        self.puts = self.faults = 0
        self.session: ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        assert self.session is not None
        body = await request.read()
        fault = self.script.pop(0) if request.method == "PUT" and self.script else "ok"
        self.puts += request.method == "PUT"
        if fault in ("503", "500"):
            self.faults += 1
            code = "SlowDown" if fault == "503" else "InternalError"
            return web.Response(status=int(fault), content_type="application/xml",
                                text=f"<Error><Code>{code}</Code><Message>injected</Message></Error>")  # fmt: skip
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self.session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                        data=body) as answer:  # fmt: skip
            payload = await answer.read()
            if fault == "stored-500":
                self.faults += 1
                text = "<Error><Code>InternalError</Code><Message>after</Message></Error>"
                return web.Response(status=500, content_type="application/xml", text=text)
            drop = ("content-length", "transfer-encoding", "content-encoding", "connection")
            return web.Response(status=answer.status, body=payload,
                                headers={k: v for k, v in answer.headers.items() if k.lower() not in drop})  # fmt: skip


@pytest.fixture
async def faulty_s3(moto: MotoProcess) -> AsyncIterator[tuple[FaultyS3, str]]:
    proxy = FaultyS3(moto.url, [])
    proxy.session = ClientSession()
    app = web.Application(client_max_size=1 << 26)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield proxy, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()
    await proxy.session.close()


async def test_throttled_and_failing_puts_are_retried_and_lose_nothing(
    history_file: Path,
    engine: EmbeddedFalkorDB,
    moto: MotoProcess,
    bucket: str,
    faulty_s3: tuple[FaultyS3, str],
    tmp_path: Path,
) -> None:
    proxy, url = faulty_s3
    proxy.script = ["503", "ok", "500", "stored-500", "503", "503", "ok", "stored-500"] * 3
    retries = METRICS.retries.labels(sink="arc", reason="throttling")
    before = retries._value.get()
    text = config_text(tmp_path, history_file, engine, "faults", {"arc": s3_sink(url, bucket, "f/")})
    supervisor = Supervisor(parse_config(text), exit_when_idle=True)
    assert await asyncio.wait_for(supervisor.run(), 60) == 0
    expected = events_of("main", await read_changes(history_file), Route())
    objects = check_archive(read_archive(moto, bucket, "f/"), expected, prefix="f/", max_events=40)
    assert not proxy.script and proxy.faults == 18 and retries._value.get() >= before + 9
    written = versions(moto, bucket)
    assert sum(written.values()) == len(objects) + 6  # each PUT stored before its 500 was sent again, same key
    assert supervisor.dead_letters.count == 0


class LaneRun:
    """One `ArchiveLane` run in-process, its checkpoints kept in `saved`."""

    def __init__(self, moto: MotoProcess, bucket: str, dead: Path, **options: Any) -> None:
        from daemon.events.archive import S3Sink
        from daemon.sinks.base import RetryPolicy

        max_bytes = options.pop("object_max_bytes", 1 << 20)
        self.sink = S3Sink("arc", source="main", bucket=bucket, prefix="", region="us-east-1", endpoint=moto.url,
                           profile=None, timeout=10, object_max_bytes=max_bytes)  # fmt: skip
        self.lane = ArchiveLane("main", self.sink, options.pop("route", Route()), object_max_bytes=max_bytes,
                                buffer_batches=4, window_max_events=100, retry=RetryPolicy(0.01, 0.05, 2),
                                dead_letters=DeadLetterFile(dead), **options)  # fmt: skip
        self.saved: dict[str, Any] = {}
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def save_many(self, key: str, positions: dict[str, Any]) -> None:
        self.saved.update(positions)
        self._moved.set()

    async def __aenter__(self) -> LaneRun:
        self._task = asyncio.create_task(self.lane.run(self, lambda key, moved: None))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await self.sink.close()

    async def until(self, position: tuple[Any, ...], within: float = 20) -> None:
        """Wait (at most `within` seconds) for the checkpoint to reach `position`."""
        async with asyncio.timeout(within):
            while self.saved.get("") != position:
                self._moved.clear()
                await self._moved.wait()


def vp(i: int, value: Any = None) -> GraphChange:
    """A property change at position (i, 1)."""
    return GraphChange("vp", True, f"v{i}", "k", i if value is None else value, position=(i, 1), commit_ms=MIDNIGHT_MS)


async def test_an_event_larger_than_an_object_is_dead_lettered_and_the_rest_archived(
    moto: MotoProcess, bucket: str, tmp_path: Path
) -> None:
    changes = [vp(i) for i in range(1, 30)]
    changes[9] = vp(10, "x" * 5000)
    async with LaneRun(moto, bucket, tmp_path / "dl.jsonl", object_max_events=10, object_max_bytes=4096,
                       flush_seconds=0) as run:  # fmt: skip
        await run.lane.queue.put(ChangeBatch("", changes, (29, 1), caught_up=True))
        await run.until((29, 1))
    lines = [orjson.loads(line) for line in (tmp_path / "dl.jsonl").read_bytes().splitlines()]
    assert len(lines) == 1 and lines[0]["reason"].startswith("too_large") and lines[0]["size"] > 5000
    expected = [e for e in events_of("main", changes, Route()) if e["subject"] != "v10"]
    objects = check_archive(read_archive(moto, bucket), expected, prefix="", max_events=10)
    assert [len(v) for _, v in sorted(objects.items())] == [10, 10, 8]


async def test_a_sparse_route_writes_its_window_when_it_is_old_and_its_checkpoint_waits_for_it(
    moto: MotoProcess, bucket: str, tmp_path: Path
) -> None:
    """The source never catches up and one change in ten is routed: the checkpoint follows the batches while no
    window is open, stays before the window while one is, and once the window is `flush_seconds` old it is
    written and the checkpoint moves on to everything handed over."""
    changes = [vp(i) for i in range(1, 41)]
    for change in changes:
        change.key = "hit" if change.value % 10 == 5 else "miss"
    kept = [c for c in changes if c.key == "hit"]
    async with LaneRun(moto, bucket, tmp_path / "dl", object_max_events=1000, flush_seconds=0.5,
                       route=Route.of(properties=["hit"])) as run:  # fmt: skip
        await run.lane.queue.put(ChangeBatch("", changes[:4], (4, 1)))
        await run.until((4, 1))  # nothing routed yet
        await run.lane.queue.put(ChangeBatch("", changes[4:30], (30, 1)))
        await asyncio.sleep(0.25)
        assert run.saved[""] == (4, 1) and not read_archive(moto, bucket)  # the window is open from (5, 1)
        await run.until((30, 1), within=5)
        await run.lane.queue.put(ChangeBatch("", changes[30:], (40, 1)))
        await run.until((40, 1), within=5)
    objects = check_archive(read_archive(moto, bucket), events_of("main", kept, Route()), prefix="", max_events=3)
    assert sorted(len(v) for v in objects.values()) == [1, 3]


def test_routes_on_dynamodb_event_names_and_ttl() -> None:
    def change(event: str | None, ttl: bool = False) -> GraphChange:
        c = GraphChange("vr", False, "x", "Item", position=("1",))
        c.origin = None if event is None else {"eventName": event, "ttl": ttl, "keys": {}}
        return c

    ttl, user, insert, neptune = change("REMOVE", True), change("REMOVE"), change("INSERT"), change(None)
    assert [Route.of(ttl=True).accepts(c) for c in (ttl, user, insert, neptune)] == [True, False, False, False]
    assert [Route.of(ttl=False).accepts(c) for c in (ttl, user, insert, neptune)] == [False, True, True, True]
    removes = Route.of(event_names=["REMOVE"])
    assert [removes.accepts(c) for c in (ttl, user, insert, neptune)] == [True, True, False, False]
    assert not Route.of(ttl=False).everything and Route.of().everything


# ------------------------------------------------------------------------------------------------ DynamoDB


TTL_IDENTITY = {"Type": "Service", "PrincipalId": TTL_PRINCIPAL}


def session_script() -> tuple[list[ScriptedShard], list[dict[str, Any]]]:
    """A closed parent shard and its open child: sessions inserted, refreshed, logged out (a user's REMOVE) and
    expired (a TTL REMOVE: the service's `userIdentity`). Returns the shards and every record in order."""
    parent = ScriptedShard(f"shardId-{1:020d}-parent00", closed=True)
    child = ScriptedShard(f"shardId-{2:020d}-child000", parent=parent.id)
    sequence, images = 10**29, {}

    def write(shard: ScriptedShard, sid: str, event: str, ttl: bool = False) -> None:
        nonlocal sequence
        sequence += 7
        keys = {"PK": {"S": f"SESSION#{sid}"}, "SK": {"S": "META"}}
        old = images.pop(sid, None)
        new = None if event == "REMOVE" else {**keys, "user": {"S": f"u{sequence % 97}"}, "n": {"N": str(sequence)}}
        record = ScriptedStreams.record(sequence, event, keys, new, old)
        if ttl:
            record["userIdentity"] = dict(TTL_IDENTITY)
        if new is not None:
            images[sid] = new
        shard.records.append(record)

    for i in range(60):
        shard = parent if i < 30 else child
        write(shard, f"s{i}", "INSERT")
        if i % 3 == 1:
            write(shard, f"s{i - 1}", "MODIFY")
        if i % 4 == 2:
            write(shard, f"s{i - 1}", "REMOVE")
        if i % 4 == 3:
            write(shard, f"s{i - 3}", "REMOVE", ttl=True)
    return [parent, child], parent.records + child.records


async def test_ttl_deletions_go_to_the_archive_by_route(
    moto: MotoProcess, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped config/dynamodb-ttl-archive.toml (event sinks only, no graph), pointed at a scripted stream
    (moto's streams have no TTL records), plus a second archive of inserts (`event_names`): each holds exactly its
    records' events, with the TTL flag and the image the item had, per shard, the parent's windows cut at its end;
    each archive checkpoints on its own, the source has no row, and `--exit-when-idle` ends the run."""
    from tests.test_dynamodb_lineage import serve

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    shards, records = session_script()
    runner, url = await serve(ScriptedStreams(shards, seed=3))
    text = (ROOT / "config" / "dynamodb-ttl-archive.toml").read_text()
    replace = {
        r'^table = "sessions"': f'stream_arn = "{STREAM_ARN}"\nendpoint = "{url}"\nlimit = 7\n'
        "poll_interval_seconds = 0.02\nmin_get_records_interval_seconds = 0.0\ndiscovery_interval_seconds = 0.2",
        r"^data_dir = .*": f'data_dir = "{tmp_path / "data"}"',
        r"^http_address = .*": 'http_address = ""',
        r'^sinks = \["expired"\]': 'sinks = ["expired", "inserts"]',
        r"^bucket = .*": f'bucket = "{bucket}"\nendpoint = "{moto.url}"',
        r"^object_max_events = .*": "object_max_events = 4",
    }
    for pattern, new in replace.items():
        text, n = re.subn(pattern, new.replace("\\", "\\\\"), text, count=1, flags=re.M)
        assert n == 1, pattern
    text += f'\n[sinks.inserts]\n{s3_sink(moto.url, bucket, "inserts/")}route = {{event_names = ["INSERT"]}}\n'
    path = tmp_path / "ttl.toml"
    path.write_text(text)
    try:
        supervisor = Supervisor(load_config(path), exit_when_idle=True)
        assert await asyncio.wait_for(supervisor.run(), 60) == 0
    finally:
        await runner.cleanup()
    (source,) = supervisor.status()["sources"]
    assert source["sink"] is None and source["caught_up"] and supervisor.summary is not None
    assert supervisor.summary.graphs == {} and source["changes_applied"] == len(records)
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    try:
        assert store.load("sessions") == {}, "an event-only source has no checkpoint of its own"
        for key in ("sessions@expired", "sessions@inserts"):
            assert store.load(key) == {s.id: ("SHARD_END",) for s in shards[:1]} | {
                shards[1].id: (records[-1]["dynamodb"]["SequenceNumber"].zfill(40),)
            }, key
    finally:
        store.close()

    config = load_config(path)
    prefix = config.sinks["expired"].prefix  # type: ignore[union-attr]
    objects = read_archive(moto, bucket, prefix)
    expired = [r for r in records if r.get("userIdentity") == TTL_IDENTITY]
    events = {k: [orjson.loads(line) for line in gzip.decompress(v).splitlines()] for k, v in objects.items()}
    archived = [e for _, es in sorted(events.items()) for e in es]
    assert len(archived) == len(expired) == 15
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    for event, record in zip(sorted(archived, key=lambda e: e["data"]["position"]), expired, strict=True):
        validator.validate(event)
        assert event["type"] == "graph.vertex.removed" and event["data"]["dynamodb"]["ttl"] is True
        assert event["data"]["dynamodb"]["eventName"] == "REMOVE"
        assert event["data"]["dynamodb"]["oldImage"] == record["dynamodb"]["OldImage"]
        assert event["data"]["position"] == [record["dynamodb"]["SequenceNumber"].zfill(40)]
    partitions = {e["data"]["partition"] for e in archived}
    assert partitions == {s.id for s in shards}
    for key, batch in events.items():
        assert (
            key == object_key(prefix, "sessions", batch[0], batch[-1])
            and f"/partition={batch[0]['data']['partition']}/" in key
        )
    inserts = [json.loads(line) for body in read_archive(moto, bucket, "inserts/").values()
               for line in gzip.decompress(body).splitlines()]  # fmt: skip
    assert sorted(e["data"]["position"][0] for e in inserts) == sorted(
        r["dynamodb"]["SequenceNumber"].zfill(40) for r in records if r["eventName"] == "INSERT"
    )
    assert all(e["data"]["dynamodb"]["eventName"] == "INSERT" and not e["data"]["dynamodb"]["ttl"] for e in inserts)


# -------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('bucket = "Bad_Bucket"', "not an S3 bucket name"),
        ('prefix = "/abs"', "does not start with '/'"),
        ("object_max_bytes = 2147483648", "less than or equal to 1073741824"),
        ('route = {event_names = ["DELETE"]}', "'INSERT', 'MODIFY' or 'REMOVE'"),
        ("route = {ttl = true}", 'routes on DynamoDB event names or TTL deletions; source "main" is kind "file"'),
    ],
)
def test_check_config_explains_a_bad_s3_sink(table: str, problem: str) -> None:
    key = table.split(" = ")[0]
    sink = {"bucket": 'bucket = "b-1"', "prefix": "", "object_max_bytes": "", "route": ""}
    sink[key] = table
    text = (
        '[[sources]]\nname = "main"\nkind = "file"\npath = "/dev/null"\nsinks = ["graph", "arc"]\n'
        '[sinks.graph]\nkind = "falkordb"\n'
        '[sinks.arc]\nkind = "s3"\nregion = "us-east-1"\n' + "\n".join(v for v in sink.values() if v)
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert problem in str(caught.value), str(caught.value)
