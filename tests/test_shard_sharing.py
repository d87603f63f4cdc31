"""DynamoDB shards shared across instances through the lease table (in process: two supervisors on one event loop,
the scripted DynamoDB Streams endpoint, moto for the lease table, one FalkorDB engine both write to).

Each instance reads only the shards it holds, a child only once the table shows its parent at SHARD_END
(whoever read it), the instances settle on an even share, and a drained instance hands its shards over at
once. The multi-process proofs (SIGKILL, SIGSTOP, rolling restarts) live in their own module; the pipeline's
fencing rules (stale holdings, deadlines passing before and during a batch call) are tested here with fakes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import falkordb
import pytest

from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore
from daemon.config import load_config
from daemon.engine import EmbeddedFalkorDB, start_engine_in_thread
from daemon.leases import FencedOff, Lease, monotonic
from daemon.model import SHARD_END, ChangeBatch, GraphChange
from daemon.pipeline import Pipeline
from daemon.sinks.base import PlanApplier, RetryPolicy
from daemon.sources.dynamodb import position_of
from daemon.supervisor import Supervisor
from tests.stand.comparator import assert_converged, read_falkordb_graph
from tests.stand.daemon_process import AWS_ENV
from tests.stand.scripted_streams import STREAM_ARN, ScriptedShard, ScriptedStreams
from tests.stand.workload import ReferenceGraph
from tests.test_dynamodb_lineage import CONFIG, Script, serve, shard_id

LEASES = """
[checkpoint]
kind = "dynamodb"
table = "{table}"
region = "us-east-1"
endpoint = "{moto}"
lease_duration_seconds = 3.0
renew_interval_seconds = 0.5
take_interval_seconds = 0.2
fencing_margin_seconds = 0.5
"""


def sharded_script() -> tuple[list[ScriptedShard], ReferenceGraph, Script]:
    """Four lineages P -> (C1 -> G, C2) and two unrelated open shards: 18 shards, 10 of them open at the end.
    Each user's version grows along its lineage, so a child read before its parent leaves an older version."""
    shards: list[ScriptedShard] = []
    script = Script()
    for k in range(4):
        p = ScriptedShard(shard_id(10 * k, f"P{k}"), closed=True)
        c1 = ScriptedShard(shard_id(10 * k + 1, f"C{k}a"), parent=p.id, closed=True)
        c2 = ScriptedShard(shard_id(10 * k + 2, f"C{k}b"), parent=p.id)
        g = ScriptedShard(shard_id(10 * k + 3, f"G{k}"), parent=c1.id)
        users = [f"l{k}u{i}" for i in range(12)]
        for u in users:
            script.put(p, u, 1)
        for u in users[0::2]:
            script.put(c1, u, 2)
        for u in users[1::2]:
            script.put(c2, u, 2)
            script.put(c2, u, 3)
        for u in users[0::2]:
            script.put(g, u, 3)
        shards += [p, c1, c2, g]
    for k in range(2):
        s = ScriptedShard(shard_id(90 + k, f"S{k}"))
        for u in range(6):
            script.put(s, f"s{k}u{u}", 1)
        shards.append(s)
    return shards, expected_graph(script), script


def expected_graph(script: Script) -> ReferenceGraph:
    expected = ReferenceGraph(strict=False)
    for user, image in script.images.items():
        expected.add_vertex(
            f"user:{user}", frozenset({"User"}), {"version": int(image["version"]["N"]), "shard": image["shard"]["S"]}
        )
    return expected


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedFalkorDB]:
    engine, stop = start_engine_in_thread(tmp_path_factory.mktemp("shared-engine"))
    try:
        yield engine
    finally:
        stop()


@pytest.fixture
def graph_name() -> str:
    return f"g{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


def replica(engine: EmbeddedFalkorDB, graph: str) -> ReferenceGraph:
    client = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password)
    return read_falkordb_graph(client.select_graph(graph), allow_unlabelled=True)


def instance_config(
    tmp_path: Path, name: str, url: str, engine: EmbeddedFalkorDB, graph: str, table: str, moto: str
) -> Path:
    sink = (
        f'kind = "falkordb"\nurl = "redis://{engine.host}:{engine.port}"\npassword = "{engine.password}"\n'
        f'graph = "{graph}"'
    )
    text = CONFIG.format(data=tmp_path / f"data-{name}", arn=STREAM_ARN, url=url, sink=sink, discovery=0.3)
    path = tmp_path / f"{name}.toml"
    path.write_text(text + LEASES.format(table=table, moto=moto))
    return path


async def converged(engine: EmbeddedFalkorDB, graph: str, expected: ReferenceGraph, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            assert_converged(expected, await asyncio.to_thread(replica, engine, graph))
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def wait_until(predicate: Any, within: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def serve_script(
    stack: AsyncExitStack, monkeypatch: pytest.MonkeyPatch, streams: ScriptedStreams
) -> tuple[str, str]:
    """The scripted stream's URL (served until the test ends) and a new lease table's name."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    runner, url = await serve(streams)
    stack.push_async_callback(runner.cleanup)
    return url, f"shards-{uuid.uuid4().hex[:8]}"


def held(supervisor: Supervisor) -> set[str]:
    return set(supervisor.coordinators["scripted"].held)


async def test_two_instances_share_shards_in_lineage_order_and_hand_over_at_drain(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: str,
    engine: EmbeddedFalkorDB,
    graph_name: str,
    stack: AsyncExitStack,
) -> None:
    shards, expected, script = sharded_script()
    open_shards = {shard.id for shard in shards if not shard.closed}
    streams = ScriptedStreams(shards, seed=3, throttle_rate=0.05, empty_rate=0.1)
    url, table = await serve_script(stack, monkeypatch, streams)
    a, b = (
        Supervisor(load_config(instance_config(tmp_path, n, url, engine, graph_name, table, moto_server))) for n in "ab"
    )
    runs = {name: asyncio.create_task(s.run()) for name, s in (("a", a), ("b", b))}
    try:
        await converged(engine, graph_name, expected, 60)
        await wait_until(
            lambda: held(a) | held(b) == open_shards and abs(len(held(a)) - len(held(b))) <= 1,
            30,
            "an even share of the open shards",
        )
        assert not held(a) & held(b)

        # Every child was first read after its parent's end was read (by either instance).
        calls = streams.calls
        for shard in shards:
            if shard.parent is not None:
                assert calls.first_read[shard.id] > calls.ended[shard.parent], shard.id

        # A drain hands the shards over at once: the other instance takes them well before the lease expiry.
        a_shards = held(a)
        a.request_drain()
        assert await asyncio.wait_for(runs.pop("a"), 20) == 0
        took = await wait_until(lambda: held(b) == open_shards, 10, "b to take a's shards")
        assert took < 2.0, f"hand-off took {took:.2f} s (the lease expires after 3 s)"

        # Records that arrive afterwards on a's former shards are applied by b.
        for shard in shards:
            if shard.id in a_shards:
                script.put(shard, f"late-{shard.id[-4:]}", 9)
        await converged(engine, graph_name, expected_graph(script), 30)
    finally:
        for name, supervisor in (("a", a), ("b", b)):
            if name in runs:
                supervisor.request_drain()
        codes = await asyncio.wait_for(asyncio.gather(*runs.values()), 30)
        assert all(code == 0 for code in codes)

    # The table holds every shard's checkpoint: closed ones finished, open ones at their last record, all free.
    store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
    leases = {lease.partition: lease for lease in await store.list_leases("scripted")}
    for shard in shards:
        want = SHARD_END if shard.closed else position_of(shard.records[-1]["dynamodb"]["SequenceNumber"])
        assert leases[shard.id].position == want, shard.id
        assert leases[shard.id].owner is None, f"{shard.id} still owned after both drained"


async def test_one_instance_alone_exits_when_idle_with_every_shard_applied(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: str,
    engine: EmbeddedFalkorDB,
    graph_name: str,
    stack: AsyncExitStack,
) -> None:
    """`--exit-when-idle` with shared shards waits for children registered after their parents ended."""
    shards, expected, _ = sharded_script()
    url, table = await serve_script(stack, monkeypatch, ScriptedStreams(shards, seed=4))
    config = load_config(instance_config(tmp_path, "solo", url, engine, graph_name, table, moto_server))
    supervisor = Supervisor(config, exit_when_idle=True)
    assert await asyncio.wait_for(supervisor.run(), 60) == 0
    assert_converged(expected, await asyncio.to_thread(replica, engine, graph_name))


# ---------------------------------------------------------------------------------- fencing, with fakes


class SlowSink:
    """A sink whose batch calls take `delay` seconds; records when each call started and finished."""

    name = "target"

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started: list[float] = []
        self.finished: list[float] = []

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.started.append(monotonic())
        await asyncio.sleep(self.delay)
        self.finished.append(monotonic())
        return []

    def classify(self, exc: BaseException) -> Any:
        raise AssertionError(f"no error expected: {exc!r}")


def applier(sink: SlowSink) -> PlanApplier:
    from daemon.deadletter import DeadLetterFile

    return PlanApplier(
        sink,  # type: ignore[arg-type]
        source="src",
        batch_size=10,
        concurrency=asyncio.Semaphore(1),
        retry=RetryPolicy(0.01, 0.01, 3),
        dead_letters=DeadLetterFile(Path("/dev/null")),
    )


async def test_a_batch_call_is_not_sent_past_the_deadline_and_is_abandoned_at_it() -> None:
    from daemon.scheduler import Batch

    sink = SlowSink(delay=0.5)
    apply = applier(sink)
    deadline = monotonic() + 0.2
    apply.fence = lambda: deadline
    batch = Batch(("vu", "L"), "STATEMENT", [{"id": "x"}], [])  # type: ignore[arg-type]
    with pytest.raises(FencedOff, match="during a batch call"):
        await apply._run_chunk(batch, batch.rows, [])
    assert len(sink.started) == 1 and not sink.finished  # abandoned at the deadline, not awaited to its end
    with pytest.raises(FencedOff, match="not sent"):
        await apply._run_chunk(batch, batch.rows, [])
    assert len(sink.started) == 1


class ShardedFakeSource:
    """Two shards; shard "a" is read under holding 1 and then 2 (taken back), shard "b" under holding 1."""

    name = "src"
    state = "polling"
    polling = True

    def __init__(self) -> None:
        self.holding = {"a": 2, "b": 1}
        self.rewound: list[set[str]] = []
        self.acknowledged: list[dict[str, Any]] = []

    async def run(self, out: asyncio.Queue[ChangeBatch], resume: dict[str, Any]) -> None:
        def change(v: str, p: str) -> GraphChange:
            return GraphChange("vl", True, v, "L", partition=p)

        await out.put(ChangeBatch("a", [change("stale", "a")], ("1",), holding=1))
        await out.put(ChangeBatch("b", [change("b1", "b")], ("1",), holding=1))
        await out.put(ChangeBatch("a", [change("fresh", "a")], ("1",), holding=2))
        await asyncio.Event().wait()

    def is_current(self, batch: ChangeBatch) -> bool:
        return self.holding.get(batch.partition) == batch.holding

    def rewind(self, partitions: Any) -> None:
        self.rewound.append(set(partitions))

    def acknowledge(self, applied: dict[str, Any]) -> None:
        self.acknowledged.append(applied)


class FakeOwnership:
    def __init__(self, deadlines: dict[str, float]) -> None:
        self.deadlines = deadlines
        self.lost: list[str] = []

    def may_write(self, partition: str) -> bool:
        return partition in self.deadlines and monotonic() < self.deadlines[partition]

    def deadline(self, partition: str) -> float | None:
        return self.deadlines.get(partition)

    async def lease_lost(self, partition: str) -> None:
        self.lost.append(partition)
        self.deadlines.pop(partition, None)


class RecordingApplier:
    def __init__(self, delay: float = 0.0) -> None:
        self.applied: list[str] = []
        self.delay = delay
        self.fence: Any = None
        self.sink = type("Sink", (), {"name": "target"})()
        self.healthy = True

    async def apply(self, plan: Any) -> int:
        if self.delay:
            self.fence()
            await asyncio.sleep(self.delay)
            self.fence()
            if monotonic() >= self.fence():
                raise FencedOff("deadline passed during a batch call")
        self.applied += [c.id for c in plan.changes]
        return len(plan.changes)


class Planner:
    async def plan(self, changes: list[GraphChange]) -> Any:
        return type("Plan", (), {"skipped": [], "changes": changes})()


class Checkpoints:
    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []

    async def load(self, source: str) -> dict[str, Any]:
        return {}

    async def save_many(self, source: str, positions: dict[str, Any]) -> list[str]:
        self.saved.append(dict(positions))
        return list(positions)

    async def forget(self, source: str, partitions: list[str]) -> None:
        pass


def sharded_pipeline(ownership: FakeOwnership, apply: RecordingApplier, checkpoints: Checkpoints) -> Pipeline:
    return Pipeline(
        ShardedFakeSource(),
        Planner(),  # type: ignore[arg-type]
        apply,  # type: ignore[arg-type]
        checkpoints,
        queue_size=10,
        window_max_changes=10,
        ownership=ownership,
        sharded=True,
    )


async def run_briefly(pipeline: Pipeline, seconds: float = 0.3) -> None:
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(seconds)
    pipeline.request_stop()
    await asyncio.wait_for(task, 5)


async def test_batches_of_an_earlier_holding_are_dropped_and_the_rest_applied() -> None:
    far = monotonic() + 60
    ownership, apply, checkpoints = FakeOwnership({"a": far, "b": far}), RecordingApplier(), Checkpoints()
    await run_briefly(sharded_pipeline(ownership, apply, checkpoints))
    assert apply.applied == ["b1", "fresh"]  # "stale" was read under holding 1 of shard a
    assert checkpoints.saved == [{"b": ("1",), "a": ("1",)}] and not ownership.lost


async def test_a_shard_past_its_deadline_is_given_up_and_the_others_go_on() -> None:
    ownership = FakeOwnership({"a": monotonic() - 1, "b": monotonic() + 60})
    apply, checkpoints = RecordingApplier(), Checkpoints()
    await run_briefly(sharded_pipeline(ownership, apply, checkpoints))
    assert apply.applied == ["b1"] and ownership.lost == ["a"]
    assert checkpoints.saved == [{"b": ("1",)}]


async def test_a_deadline_passing_during_a_window_rewinds_it_and_checkpoints_nothing() -> None:
    ownership = FakeOwnership({"a": monotonic() + 60, "b": monotonic() + 0.1})
    apply, checkpoints = RecordingApplier(delay=0.2), Checkpoints()
    pipeline = sharded_pipeline(ownership, apply, checkpoints)
    await run_briefly(pipeline, 0.5)
    assert apply.applied == [] and checkpoints.saved == []
    assert ownership.lost == ["b"]
    assert pipeline.source.rewound == [{"a"}]  # type: ignore[attr-defined]


def test_lease_positions_round_trip_through_the_source_assign() -> None:
    """`assign` resumes a newly held shard from its lease's checkpoint and forgets a dropped one."""
    from daemon.config import DynamoDBSourceConfig
    from daemon.deadletter import DeadLetterFile
    from daemon.sources.dynamodb import DynamoDBStreamSource

    cfg = DynamoDBSourceConfig.model_validate(
        {
            "name": "s",
            "kind": "dynamodb",
            "sink": "g",
            "stream_arn": STREAM_ARN,
            "key": ["PK"],
            "region": "us-east-1",
            "rules": [{"name": "r", "vertex": {"label": "L", "id": "x:{PK}"}}],
        }
    )
    source = DynamoDBStreamSource(cfg, dead_letters=DeadLetterFile(Path("/dev/null")))

    class Shared:
        async def register(self, shards: Any, positions: Any) -> None: ...

        async def known(self) -> bool:
            return True

        def finished(self) -> set[str]:
            return set()

    source.share(Shared())
    first = {"x": Lease("s", "x", "me", 1, position=("5",)), "y": Lease("s", "y", "me", 1)}
    source.assign(first)
    batch_x = ChangeBatch("x", [], ("6",), holding=source._holding["x"])
    assert source._resume == {"x": ("5",)} and source.is_current(batch_x)
    source.assign({"y": first["y"]})
    assert "x" not in source._resume and not source.is_current(batch_x)
    source.assign({"y": first["y"], "x": Lease("s", "x", "me", 3, position=("9",))})
    assert source._resume["x"] == ("9",) and not source.is_current(batch_x)  # a new holding: old batches are stale


async def test_a_lease_asked_for_is_handed_over_only_after_the_writes_in_flight_end(
    stack: AsyncExitStack, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.lease_coordinator import LeaseCoordinator

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    table = f"handover-{uuid.uuid4().hex[:8]}"
    store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
    await store.ensure_leases("src", {"x": ()})
    timing = {"lease_duration": 3.0, "renew_interval": 0.5, "take_interval": 0.2, "margin": 0.5}
    holder, asker = LeaseCoordinator(store, "src", **timing), LeaseCoordinator(store, "src", **timing)
    await holder.take_once()
    assert set(holder.held) == {"x"}
    lease = await store.get_lease("src", "x")
    assert lease is not None
    await store.steal("src", "x", asker.owner, holder.owner, lease.counter)

    write_done = asyncio.Event()
    waited: list[str] = []

    async def quiesce(partition: str) -> None:
        waited.append(partition)
        await write_done.wait()

    holder.quiesce = quiesce
    await holder.renew_once()  # sees the request: stops writing x at once, hands it over after the write ends
    assert not holder.may_write("x")
    await asyncio.sleep(0.3)
    assert waited == ["x"]
    assert (await store.get_lease("src", "x")).owner == holder.owner  # type: ignore[union-attr]
    write_done.set()
    await asyncio.wait_for(holder.handovers_done(), 5)
    assert (await store.get_lease("src", "x")).owner == asker.owner  # type: ignore[union-attr]
    await holder.stop()


async def test_a_checkpoint_write_renews_the_lease_so_busy_shards_need_no_renewal_calls(
    stack: AsyncExitStack, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.lease_coordinator import LeaseCoordinator
    from daemon.supervisor import LeasedCheckpoints

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    store = await DynamoDBCheckpointStore.open(
        stack, table=f"renew-{uuid.uuid4().hex[:8]}", region="us-east-1", endpoint=moto_server
    )
    await store.ensure_leases("src", {"x": (), "y": ()})
    renewed: list[str] = []
    real_renew = store.renew

    async def counting_renew(lease: Lease) -> Lease:
        renewed.append(lease.partition)
        return await real_renew(lease)

    store.renew = counting_renew  # type: ignore[method-assign]
    coordinator = LeaseCoordinator(store, "src", lease_duration=3.0, renew_interval=0.5, take_interval=0.2, margin=0.5)
    await coordinator.take_once()
    before = {p: coordinator.deadline(p) for p in ("x", "y")}
    counter = coordinator.held["x"].counter
    await asyncio.sleep(0.1)
    checkpoints = LeasedCheckpoints(store, coordinator, sharded=True)
    assert await checkpoints.save_many("src", {"x": ("7",)}) == ["x"]
    assert coordinator.held["x"].counter == counter + 1  # the write moved the counter: others see it alive
    assert coordinator.deadline("x") > before["x"]  # type: ignore[operator]
    await coordinator.renew_once()
    assert renewed == ["y"], "x was written within the renew interval: no renewal call for it"
    await asyncio.sleep(0.6)
    await coordinator.renew_once()
    assert sorted(renewed) == ["x", "y", "y"]
    await coordinator.stop()
