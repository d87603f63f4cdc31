"""Shard lineage, iterator expiry, throttling and trimming, against a scripted DynamoDB Streams endpoint (moto
serves one shard per table and none of these), through the production aiobotocore client and the in-process
supervisor, into the embedded FalkorDB."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import falkordb
import pytest
from aiohttp import web

from daemon.checkpoint import SQLiteCheckpointStore
from daemon.config import load_config
from daemon.model import SHARD_END, SHARD_START
from daemon.observability import METRICS
from daemon.sources.dynamodb import position_of
from daemon.supervisor import EXIT_SOURCE_FAILED, Supervisor
from tests.stand.comparator import assert_converged, read_falkordb_graph
from tests.stand.daemon_process import AWS_ENV
from tests.stand.neptune_endpoint import HIDDEN_LABEL, NeptuneStand
from tests.stand.scripted_streams import STREAM_ARN, ScriptedShard, ScriptedStreams
from tests.stand.workload import ReferenceGraph

BASE = 10**29  # 30-digit sequence numbers, like the service's


def shard_id(n: int, tag: str) -> str:
    """A shard id shaped like the service's (28 characters at least)."""
    return f"shardId-{n:020d}-{tag.lower():0>8}"


def user_key(user: str) -> dict[str, Any]:
    return {"PK": {"S": f"USER#{user}"}, "SK": {"S": "PROFILE"}}


class Script:
    """Builds shards whose records touch the same users across parent and children, in lineage order."""

    def __init__(self) -> None:
        self.sequence = BASE
        self.images: dict[str, dict[str, Any]] = {}  # the item after each record, per user

    def put(self, shard: ScriptedShard, user: str, version: int) -> None:
        self.sequence += 7
        new = {**user_key(user), "version": {"N": str(version)}, "shard": {"S": shard.id}}
        old = self.images.get(user)
        event = "MODIFY" if old is not None else "INSERT"
        shard.records.append(ScriptedStreams.record(self.sequence, event, user_key(user), new, old))
        self.images[user] = new

    def remove(self, shard: ScriptedShard, user: str) -> None:
        self.sequence += 7
        old = self.images.pop(user)
        shard.records.append(ScriptedStreams.record(self.sequence, "REMOVE", user_key(user), None, old))

    def follow(self, shard: ScriptedShard, a: str, b: str) -> None:
        self.sequence += 7
        keys = {"PK": {"S": f"USER#{a}"}, "SK": {"S": f"FOLLOWS#{b}"}}
        new = {**keys, "since": {"N": "2020"}}
        shard.records.append(ScriptedStreams.record(self.sequence, "INSERT", keys, new, None))


def lineage_script() -> tuple[list[ScriptedShard], ReferenceGraph]:
    """P0 -> P -> (C1 -> C1a, C2 listed late), plus an unrelated open shard S."""
    p0 = ScriptedShard(shard_id(0, "P0"), closed=True)
    p = ScriptedShard(shard_id(1, "P"), parent=p0.id, closed=True)
    c1 = ScriptedShard(shard_id(2, "C1"), parent=p.id, closed=True)
    c1a = ScriptedShard(shard_id(3, "C1a"), parent=c1.id, listed_after_end_of=c1.id)
    c2 = ScriptedShard(shard_id(4, "C2"), parent=p.id, listed_after_end_of=p.id)
    s = ScriptedShard(shard_id(5, "S"))
    script = Script()
    users = [f"u{i}" for i in range(30)]
    even, odd = users[0::2], users[1::2]
    # Sequence numbers grow in lineage order; the shards' records interleave in time only across lineages.
    for u in users:
        script.put(p0, u, 0)
    for u in users:
        script.put(p, u, 1)
    for u in even:
        script.put(c1, u, 2)
    for u in odd:
        script.put(c2, u, 2)
        script.put(c2, u, 3)
    for u in even:
        script.put(c1a, u, 3)
    script.remove(c1a, "u0")
    for i in range(10):
        script.follow(s, f"u{i + 1}", f"u{(i + 5) % 30 + 1}")
    script.follow(s, "u0", "u3")  # u0's item is deleted: it stays a bare endpoint of this edge
    expected = ReferenceGraph(strict=False)
    for user, image in script.images.items():
        expected.add_vertex(
            f"user:{user}", frozenset({"User"}), {"version": int(image["version"]["N"]), "shard": image["shard"]["S"]}
        )
    expected.add_vertex("user:u0", frozenset(), {})
    for record in s.records:
        pk, sk = record["dynamodb"]["Keys"]["PK"]["S"][5:], record["dynamodb"]["Keys"]["SK"]["S"][8:]
        expected.add_edge(f"follows:{pk}:{sk}", "FOLLOWS", f"user:{pk}", f"user:{sk}", {"since": 2020})
    return [p0, p, c1, c1a, c2, s], expected


CONFIG = """
[daemon]
data_dir = "{data}"
http_address = ""
restart_backoff_max_seconds = 0.2

[[sources]]
name = "scripted"
kind = "dynamodb"
sink = "graph"
stream_arn = "{arn}"
key = ["PK", "SK"]
region = "us-east-1"
endpoint = "{url}"
limit = 4
poll_interval_seconds = 0.02
min_get_records_interval_seconds = 0.0
discovery_interval_seconds = {discovery}
window_max_changes = 7

[[sources.rules]]
name = "user"
when = {{ PK = {{ begins_with = "USER#" }}, SK = {{ equals = "PROFILE" }} }}
vertex = {{ label = "User", id = "user:{{PK[1]}}" }}

[[sources.rules]]
name = "follows"
when = {{ PK = {{ begins_with = "USER#" }}, SK = {{ begins_with = "FOLLOWS#" }} }}
edge = {{ type = "FOLLOWS", id = "follows:{{PK[1]}}:{{SK[1]}}", from = "user:{{PK[1]}}", to = "user:{{SK[1]}}" }}

[sinks.graph]
{sink}
batch_size = 5
retry_initial_seconds = 0.01
"""


async def serve(streams: ScriptedStreams) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(streams.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def replicate(
    tmp_path: Path,
    streams: ScriptedStreams,
    monkeypatch: pytest.MonkeyPatch,
    sink: str = 'kind = "falkordb"',
    *,
    discovery: float = 0.2,
) -> tuple[int, Any]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    runner, url = await serve(streams)
    try:
        path = tmp_path / "config.toml"
        text = CONFIG.format(data=tmp_path / "data", arn=STREAM_ARN, url=url, sink=sink, discovery=discovery)
        path.write_text(text)
        supervisor = Supervisor(load_config(path), exit_when_idle=True)
        code = await asyncio.wait_for(supervisor.run(), 60)
        return code, supervisor
    finally:
        await runner.cleanup()


def read_replica(tmp_path: Path) -> ReferenceGraph:
    from daemon.engine import start_engine_in_thread

    engine, stop = start_engine_in_thread(tmp_path / "data" / "falkordb" / "graph")
    try:
        graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("graph")
        return read_falkordb_graph(graph, allow_unlabelled=True)
    finally:
        stop()


async def test_children_wait_for_parents_through_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards, expected = lineage_script()
    streams = ScriptedStreams(shards, seed=5, throttle_rate=0.15, expire_rate=0.15, empty_rate=0.2)
    code, _ = await replicate(tmp_path, streams, monkeypatch)
    assert code == 0
    assert_converged(expected, await asyncio.to_thread(read_replica, tmp_path))

    calls = streams.calls
    for shard in shards:
        if shard.parent is not None:
            assert calls.first_read[shard.id] > calls.ended[shard.parent], (
                f"{shard.id} was read before its parent ended"
            )
    assert calls.throttled and calls.expired and calls.empty_injected, calls
    # Every closed shard is checkpointed as finished; the open ones at their last record.
    positions = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3").load("scripted")
    for shard in shards:
        want = ("SHARD_END",) if shard.closed else position_of(shard.records[-1]["dynamodb"]["SequenceNumber"])
        assert positions[shard.id] == want, shard.id


async def test_a_rerun_resumes_each_shard_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards, expected = lineage_script()
    streams = ScriptedStreams(shards, seed=8)
    assert (await replicate(tmp_path, streams, monkeypatch))[0] == 0
    reads_before = len(streams.calls.get_records)
    second = ScriptedStreams(shards, seed=9)
    second.calls.ended = dict(streams.calls.ended)  # the same stream later: late children are listed by now
    assert (await replicate(tmp_path, second, monkeypatch))[0] == 0
    # Finished shards are not read again; open ones are asked only for what follows their checkpoint.
    assert {shard for shard, _ in second.calls.get_records} <= {shard_id(3, "C1a"), shard_id(4, "C2"), shard_id(5, "S")}
    assert sum(n for _, n in second.calls.get_records) == 0 and reads_before
    assert_converged(expected, await asyncio.to_thread(read_replica, tmp_path))


async def test_a_trimmed_checkpoint_is_a_loud_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards, _ = lineage_script()
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    await store.save("scripted", shard_id(0, "P0"), position_of(str(BASE - 100)))  # older than the shard's records
    store.close()
    code, supervisor = await replicate(tmp_path, ScriptedStreams(shards), monkeypatch)
    assert code == EXIT_SOURCE_FAILED
    message = supervisor.failed["scripted"]
    assert shard_id(0, "P0") in message and "Bootstrap the target again" in message
    assert METRICS.stream_expired.labels(source="scripted")._value.get() == 1


async def test_lineage_into_the_neptune_stand(
    stand: NeptuneStand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same whole-element statements on the Neptune dialect (`SET n = $props`, MERGEd endpoints)."""
    shards, expected = lineage_script()
    sink = f'kind = "neptune"\nendpoint = "{stand.url}"\nregion = "us-east-1"'
    code, _ = await replicate(tmp_path, ScriptedStreams(shards, seed=2, throttle_rate=0.1), monkeypatch, sink)
    assert code == 0
    replica = await asyncio.to_thread(
        read_falkordb_graph,
        stand.falkordb_graph(),
        hidden_labels=frozenset({HIDDEN_LABEL}),
        base_label=HIDDEN_LABEL,
        allow_unlabelled=True,
    )
    assert_converged(expected, replica)


# ------------------------------------------------------------------------- trimmed, late and forgotten shards


def checkpoints(tmp_path: Path) -> dict[str, Any]:
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    try:
        return store.load("scripted")
    finally:
        store.close()


async def seed_checkpoints(tmp_path: Path, positions: dict[str, Any]) -> None:
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    await store.save_many("scripted", positions)
    store.close()


@pytest.mark.parametrize("where", ["mid-way", "bootstrap hand-off"])
async def test_a_checkpointed_shard_trimmed_during_an_outage_is_a_loud_stop(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """P0 was checkpointed before its end, then the daemon was down past the 24 hours: the stream lists P0's child
    P but no longer P0. Reading P from its oldest record would skip what P0 held after the checkpoint."""
    shards, _ = lineage_script()
    p0 = shards[0]
    position = position_of(p0.records[4]["dynamodb"]["SequenceNumber"]) if where == "mid-way" else SHARD_START
    await seed_checkpoints(tmp_path, {p0.id: position})
    streams = ScriptedStreams(shards)
    streams.trimmed.add(p0.id)
    METRICS.stream_expired.labels(source="scripted").set(0)
    code, supervisor = await replicate(tmp_path, streams, monkeypatch)
    assert code == EXIT_SOURCE_FAILED
    message = supervisor.failed["scripted"]
    assert p0.id in message and "no longer lists the shard" in message and "Bootstrap the target again" in message
    assert METRICS.stream_expired.labels(source="scripted")._value.get() == 1
    assert supervisor.pipelines[0].source.state == "expired"
    assert shard_id(1, "P") not in streams.calls.first_read  # the child was not read past the gap


async def test_a_closed_shard_waits_for_children_listed_late(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service lists the child of a closed shard only several listings after the shard ended; with the
    periodic discovery at 30 s, the source must re-list on its own (and not say "caught up") until it does."""
    p = ScriptedShard(shard_id(0, "P"), closed=True)
    c = ScriptedShard(shard_id(1, "C"), parent=p.id, listed_after_end_of=p.id, listed_after_listings=3)
    script = Script()
    for u in ("a", "b", "c"):
        script.put(p, u, 1)
        script.put(c, u, 2)
    expected = ReferenceGraph(strict=False)
    for user, image in script.images.items():
        expected.add_vertex(f"user:{user}", frozenset({"User"}), {"version": 2, "shard": image["shard"]["S"]})
    streams = ScriptedStreams([p, c])
    started = time.monotonic()
    code, _ = await replicate(tmp_path, streams, monkeypatch, discovery=30.0)
    assert code == 0 and time.monotonic() - started < 20
    calls = streams.calls
    assert c.id in calls.first_read, "the late child was never read"
    assert calls.listings - calls.ended_at_listing[p.id] >= 4
    assert_converged(expected, await asyncio.to_thread(read_replica, tmp_path))
    assert checkpoints(tmp_path)[c.id] == position_of(c.records[-1]["dynamodb"]["SequenceNumber"])


async def test_a_disabled_stream_ends_with_its_last_closed_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stream disabled (or table deleted): its closed shards get no children, and their end is the end."""
    p = ScriptedShard(shard_id(0, "P"), closed=True)
    script = Script()
    for u in ("a", "b"):
        script.put(p, u, 1)
    streams = ScriptedStreams([p])
    streams.status = "DISABLED"
    started = time.monotonic()
    code, _ = await replicate(tmp_path, streams, monkeypatch, discovery=30.0)
    assert code == 0 and time.monotonic() - started < 20
    assert checkpoints(tmp_path)[p.id] == SHARD_END


async def test_a_long_running_source_is_not_caught_up_while_a_child_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon does not report caught up (latency 0) while a closed shard's child is unlisted; it re-lists
    with backoff, not at DescribeStream's full rate, and catches up once the child appears."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    p = ScriptedShard(shard_id(0, "P"), closed=True)
    c = ScriptedShard(shard_id(1, "C"), parent=p.id, listed_after_end_of=p.id, listed_after_listings=10**9)
    script = Script()
    script.put(p, "a", 1)
    script.put(c, "a", 2)
    streams = ScriptedStreams([p, c])
    runner, url = await serve(streams)
    try:
        path = tmp_path / "config.toml"
        path.write_text(
            CONFIG.format(data=tmp_path / "data", arn=STREAM_ARN, url=url, sink='kind = "falkordb"', discovery=30.0)
        )
        supervisor = Supervisor(load_config(path))
        task = asyncio.create_task(supervisor.run())
        pipeline = supervisor.pipelines[0]
        await wait_until(lambda: p.id in streams.calls.ended and pipeline.positions.get(p.id) == SHARD_END)
        listings = streams.calls.listings
        await asyncio.sleep(2.0)
        assert not pipeline.caught_up and pipeline.source.state != "caught_up"
        # backoff from 0.1 s doubling: about 5 listings in 2 s, not hundreds
        assert 2 <= streams.calls.listings - listings <= 12, streams.calls.listings - listings
        c.listed_after_listings = 0
        await wait_until(lambda: pipeline.caught_up, within=15)
        assert pipeline.positions[c.id] == position_of(c.records[-1]["dynamodb"]["SequenceNumber"])
        supervisor.request_drain()
        assert await asyncio.wait_for(task, 30) == 0
    finally:
        await runner.cleanup()


async def wait_until(predicate: Any, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_finished_shards_past_the_retention_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `SHARD_END` row whose shard the stream no longer lists and whose child it lists is deleted; the child
    is read (a forgotten parent blocks nothing). A finished shard with no listed child keeps its row."""
    shards, expected = lineage_script()
    p0 = shards[0]
    lonely = shard_id(9, "GONE")
    await seed_checkpoints(tmp_path, {p0.id: SHARD_END, lonely: SHARD_END})
    streams = ScriptedStreams(shards, seed=3)
    streams.trimmed.add(p0.id)
    code, _ = await replicate(tmp_path, streams, monkeypatch)
    assert code == 0
    rows = checkpoints(tmp_path)
    assert p0.id not in rows and rows[lonely] == SHARD_END
    assert rows[shard_id(1, "P")] == SHARD_END  # still listed: kept
    assert p0.id not in streams.calls.first_read and shard_id(1, "P") in streams.calls.first_read
    assert_converged(expected, await asyncio.to_thread(read_replica, tmp_path))


async def test_a_parent_is_never_read_after_its_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards listed without a checkpoint whose children were read (rows forgotten while a listing missed them,
    or closed shards skipped by start = "latest") count as finished: re-reading them would put their older
    records over the children's newer ones."""
    shards, expected = lineage_script()
    first = ScriptedStreams(shards, seed=4)
    assert (await replicate(tmp_path, first, monkeypatch))[0] == 0
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    await store.forget("scripted", [shard_id(0, "P0"), shard_id(1, "P")])
    store.close()
    again = ScriptedStreams(shards, seed=5)
    again.calls.ended = dict(first.calls.ended)
    assert (await replicate(tmp_path, again, monkeypatch))[0] == 0
    assert not {shard_id(0, "P0"), shard_id(1, "P")} & set(again.calls.first_read), again.calls.first_read
    assert_converged(expected, await asyncio.to_thread(read_replica, tmp_path))


async def test_hostile_records_are_dead_lettered_once_and_the_shard_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records no real stream sends (an endpoint gone wrong, a proxy, a bug): each is dead-lettered with its
    position where it has one, and the good records around them converge, on the first run and on a rerun."""
    shard = ScriptedShard(shard_id(0, "H"))
    script = Script()
    script.put(shard, "a", 1)
    good = shard.records[-1]
    hostile = [
        {**good, "dynamodb": {**good["dynamodb"], "SequenceNumber": None}},  # no position
        {
            **good,
            "dynamodb": {**good["dynamodb"], "SequenceNumber": str(BASE + 100), "ApproximateCreationDateTime": 1e300},
        },
        {
            **good,
            "dynamodb": {**good["dynamodb"], "SequenceNumber": str(BASE + 101), "ApproximateCreationDateTime": "x"},
        },
        {"eventName": "INSERT"},  # no dynamodb body at all
    ]
    shard.records.extend(hostile)
    script.sequence = BASE + 200
    script.put(shard, "b", 2)
    code, _ = await replicate(tmp_path, ScriptedStreams([shard]), monkeypatch)
    assert code == 0
    lines = (tmp_path / "data" / "dead-letter.jsonl").read_text().splitlines()
    assert len(lines) == 2, lines  # the two records without a sequence number; the others map (time read as 0)
    replica = read_replica(tmp_path)
    assert {"user:a", "user:b"} <= set(replica.vertices)
    code, _ = await replicate(tmp_path, ScriptedStreams([shard]), monkeypatch)
    assert code == 0
    assert len((tmp_path / "data" / "dead-letter.jsonl").read_text().splitlines()) == 2  # not again
