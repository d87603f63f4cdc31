"""Leases and shared checkpoints: the DynamoDB store against moto in server mode (the production aiobotocore
client, pointed at the session's moto endpoint), the lease coordinator's three roles, self-fencing by monotonic
deadlines, and the SQLite store behind the same interface."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from pydantic import ValidationError

from daemon.checkpoint import SQLiteCheckpointStore, SQLiteLeaseStore
from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore, classify_table_error
from daemon.config import DynamoDBCheckpointConfig
from daemon.lease_coordinator import LeaseCoordinator
from daemon.leases import Lease, LeaseLost, new_owner_id
from daemon.model import SHARD_END
from daemon.observability import Metrics

SEQ = "4" * 40  # DynamoDB sequence numbers have up to 40 digits: more than a JSON number carries


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def table() -> str:
    return f"leases-{uuid.uuid4().hex[:10]}"


async def open_store(stack: AsyncExitStack, endpoint: str, table: str, **kwargs: Any) -> DynamoDBCheckpointStore:
    return await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=endpoint, **kwargs)


@pytest.fixture
async def store(stack: AsyncExitStack, moto_server: str, table: str) -> DynamoDBCheckpointStore:
    return await open_store(stack, moto_server, table)


async def held_lease(store: DynamoDBCheckpointStore, partition: str, owner: str, source: str = "src") -> Lease:
    await store.ensure_leases(source, {partition: ()})
    current = await store.get_lease(source, partition)
    assert current is not None
    return await store.take(source, partition, owner, current.counter)


async def test_table_is_created_on_demand_with_the_documented_key(
    stack: AsyncExitStack, moto_server: str, table: str
) -> None:
    store = await open_store(stack, moto_server, table)
    described = (await store.client.describe_table(TableName=table))["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in described["KeySchema"]} == {
        "source": "HASH",
        "lease_key": "RANGE",
    }
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    await open_store(stack, moto_server, table)  # a second instance finds it and creates nothing


async def test_positions_are_json_text_as_in_sqlite(store: DynamoDBCheckpointStore, tmp_path: Path) -> None:
    owner = new_owner_id()
    leases = {p: await held_lease(store, p, owner) for p in ("", "shard-a", "shard-b")}
    positions = {"": (12, 3), "shard-a": (SEQ,), "shard-b": SHARD_END}
    await store.save_many("src", positions, leases)
    assert await store.load("src") == positions
    item = (
        await store.client.get_item(
            TableName=store.table, Key={"source": {"S": "src"}, "lease_key": {"S": "p#shard-a"}}
        )
    )["Item"]
    sqlite = SQLiteCheckpointStore(tmp_path / "cp.sqlite3")
    await sqlite.save_many("src", {"shard-a": (SEQ,)})
    (text,) = sqlite._db.execute("SELECT position FROM checkpoints").fetchone()
    sqlite.close()
    assert item["checkpoint"]["S"] == text == orjson.dumps([SEQ]).decode()
    assert leases["shard-b"].shard_end and item["owner"]["S"] == owner


async def test_a_stale_owner_cannot_move_its_checkpoint(store: DynamoDBCheckpointStore) -> None:
    old, new = new_owner_id(), new_owner_id()
    lease = await held_lease(store, "shard-a", old)
    await store.save_many("src", {"shard-a": ("1".zfill(40),)}, {"shard-a": lease})
    # `new` takes it (as after expiry): conditional on the counter it read.
    taken = await store.take("src", "shard-a", new, lease.counter)
    assert taken.owner == new and taken.counter == lease.counter + 1
    with pytest.raises(LeaseLost) as lost:
        await store.save_many("src", {"shard-a": ("2".zfill(40),)}, {"shard-a": lease})
    assert (lost.value.partition, lost.value.expected_owner, lost.value.actual_owner) == ("shard-a", old, new)
    assert "shard-a" in str(lost.value) and old in str(lost.value) and new in str(lost.value)
    assert await store.load("src") == {"shard-a": ("1".zfill(40),)}, "the position did not move"
    with pytest.raises(LeaseLost):
        await store.renew(lease)
    with pytest.raises(LeaseLost):
        await store.release(lease)
    with pytest.raises(LeaseLost):  # a save without a lease is refused too
        await store.save_many("src", {"shard-b": (SEQ,)}, {})
    await store.save_many("src", {"shard-a": ("3".zfill(40),)}, {"shard-a": taken})
    assert await store.load("src") == {"shard-a": ("3".zfill(40),)}


async def test_take_renew_release_steal(store: DynamoDBCheckpointStore) -> None:
    a, b = new_owner_id(), new_owner_id()
    await store.ensure_leases("src", {"parent": (), "child": ("parent",)})
    await store.ensure_leases("src", {"child": ("other",)})  # existing leases are left alone
    leases = {lease.partition: lease for lease in await store.list_leases("src")}
    assert leases["child"].parents == ("parent",) and leases["child"].owner is None and leases["child"].counter == 0
    lease = await store.take("src", "child", a, 0)
    with pytest.raises(LeaseLost):  # the counter moved: a second taker with the old counter loses
        await store.take("src", "child", b, 0)
    before = lease.counter
    await store.renew(lease)
    assert lease.counter == before + 1 and lease.owner == a and lease.heartbeat > 0
    # A steal request records b as pending owner and leaves owner and counter alone.
    await store.steal("src", "child", b, a, lease.counter)
    with pytest.raises(LeaseLost):  # one request at a time
        await store.steal("src", "child", new_owner_id(), a, lease.counter)
    await store.renew(lease)
    assert lease.owner == a and lease.pending_owner == b
    await store.release(lease, to=b)
    handed = await store.get_lease("src", "child")
    assert handed is not None and handed.owner == b and handed.pending_owner is None
    taken = await store.take("src", "child", b, handed.counter)
    counter = taken.counter
    await store.release(taken)
    freed = await store.get_lease("src", "child")
    assert freed is not None and freed.owner is None and freed.counter == counter + 1 == taken.counter
    # Forget: a finished, free lease may be deleted by anyone; a held one only by its owner.
    other = await held_lease(store, "parent", a)
    await store.save_many("src", {"parent": SHARD_END}, {"parent": other})
    with pytest.raises(LeaseLost):
        await store.forget("src", ["parent"])
    await store.release(other)
    await store.forget("src", ["parent", "never-existed"])
    assert [lease.partition for lease in await store.list_leases("src")] == ["child"]


async def coordinator(store: Any, owner: str, **timing: Any) -> LeaseCoordinator:
    params = {"lease_duration": 30.0, "renew_interval": 5.0, "take_interval": 5.0, "margin": 5.0, **timing}
    return LeaseCoordinator(store, "src", owner, **params)


async def test_three_coordinators_share_16_partitions_evenly_without_thrashing(
    stack: AsyncExitStack, moto_server: str, table: str
) -> None:
    stores = [await open_store(stack, moto_server, table) for _ in range(3)]
    await stores[0].ensure_leases("src", {f"shard-{i:02}": () for i in range(16)})
    coordinators = [await coordinator(s, f"instance-{i}") for i, s in enumerate(stores)]

    async def round_() -> None:
        for c in coordinators:
            await c.take_once()
            await c.renew_once()
            await c.handovers_done()

    def moves() -> int:
        return sum(c.taker.takes + c.taker.steals for c in coordinators)

    for _ in range(20):
        await round_()
        if sorted(len(c.held) for c in coordinators) == [5, 5, 6]:
            break
    assert sorted(len(c.held) for c in coordinators) == [5, 5, 6]
    settled, steals = moves(), sum(c.taker.steals for c in coordinators)
    # The first instance takes all 16 while it is alone; 10 steals (5 each for the others) is the least there is.
    assert steals <= 10, f"{steals} steals to settle 16 leases"
    for _ in range(5):
        await round_()
    assert moves() == settled, "no takes or steals once the share is even"
    held = Counter(p for c in coordinators for p in c.held)
    assert len(held) == 16 and set(held.values()) == {1}
    table_owners = {lease.partition: lease.owner for lease in await stores[0].list_leases("src")}
    assert table_owners == {p: c.owner for c in coordinators for p in c.held}
    assert all(c.may_write(p) for c in coordinators for p in c.held)


async def test_a_paused_instance_stops_writing_before_another_can_take_its_leases(
    store: DynamoDBCheckpointStore,
) -> None:
    await store.ensure_leases("src", {f"shard-{i}": () for i in range(4)})
    timing = {"lease_duration": 2.0, "renew_interval": 0.3, "margin": 0.6}  # (slack for a loaded machine)
    paused, other = await coordinator(store, "paused", **timing), await coordinator(store, "other", **timing)
    await paused.take_once()
    assert len(paused.held) == 4 and all(paused.may_write(p) for p in paused.held)
    await other.take_once()  # sees the leases held: takes nothing, starts its own expiry clocks
    assert not other.held
    # `paused` stops renewing (a GC pause, SIGSTOP). `other` keeps looking.
    took_at: float | None = None
    while took_at is None:
        await asyncio.sleep(0.05)
        checked = time.monotonic()
        writable = [p for p in paused.held if paused.may_write(p)]
        await other.take_once()
        if other.held:
            took_at = checked
            assert not writable, "the paused instance could still write when another took its leases"
    assert all(paused.renewer.deadline(p) <= took_at for p in paused.held)
    lease = paused.held["shard-0"]
    with pytest.raises(LeaseLost):  # waking up, its checkpoint writes are refused by the table as well
        await store.save_many("src", {"shard-0": (SEQ,)}, paused.held)
    await paused.lease_lost("shard-0")
    assert not paused.may_write("shard-0") and lease.partition not in paused.held
    await paused.renew_once()  # the renewer drops what it failed to renew
    assert not paused.held and len(other.held) == 4


async def test_renewal_keeps_the_deadline_moving_and_a_steal_is_a_hand_off(store: DynamoDBCheckpointStore) -> None:
    await store.ensure_leases("src", {"a": (), "b": ()})
    timing = {"lease_duration": 2.0, "renew_interval": 0.3, "margin": 0.6}
    first = await coordinator(store, "first", **timing)
    await first.take_once()
    for _ in range(8):  # 2.4 s of renewals: still writable past the first lease duration
        await asyncio.sleep(0.3)
        await first.renew_once()
    assert first.may_write("a") and first.may_write("b")
    second = await coordinator(store, "second", **timing)
    await second.take_once()  # 2 vs 0: asks `first` for one lease
    assert second.taker.steals == 1 and not second.held
    stolen = next(lease.partition for lease in await store.list_leases("src") if lease.pending_owner == "second")
    assert first.may_write(stolen), "a steal request alone does not move the lease"
    await first.renew_once()  # the hand-off: `first` drops it, then hands it over
    await first.handovers_done()
    assert not first.may_write(stolen) and first.renewer.handed_off == 1
    await second.take_once()
    assert set(second.held) == {stolen} and second.may_write(stolen)
    await first.stop()  # a drain releases what it holds
    await second.take_once()
    assert set(second.held) == {"a", "b"}


async def test_coordinator_timers_and_stop(store: DynamoDBCheckpointStore) -> None:
    await store.ensure_leases("src", {"a": (), "b": ()})
    changes: list[set[str]] = []
    c = LeaseCoordinator(
        store, "src", lease_duration=2.0, renew_interval=0.3, take_interval=0.3, margin=0.6, on_change=changes.append
    )
    await c.start()
    counter = c.held["a"].counter
    for _ in range(50):  # the renewer runs on its timer (up to 5 s on a loaded machine)
        if c.held["a"].counter > counter + 1:
            break
        await asyncio.sleep(0.1)
    assert c.held["a"].counter > counter + 1, "the renewer runs on its timer"
    await c.stop()
    assert changes == [{"a", "b"}] and not c.held
    assert all(lease.owner is None for lease in await store.list_leases("src"))


class Throttled:
    """The real client, with the first `failures` calls of each operation refused as DynamoDB throttles."""

    def __init__(self, client: Any, failures: int) -> None:
        self._client, self._left = client, Counter[str]()
        self._failures = failures

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        async def call(**kwargs: Any) -> Any:
            if self._left[name] < self._failures:
                self._left[name] += 1
                raise client_error("ProvisionedThroughputExceededException", 400)
            return await method(**kwargs)

        return call


class LandedThenTimedOut:
    """The real client, whose first UpdateItem reaches the table but whose answer is lost (a read timeout)."""

    def __init__(self, client: Any) -> None:
        self._client, self.lost = client, 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        async def call(**kwargs: Any) -> Any:
            answer = await method(**kwargs)
            if name == "update_item" and not self.lost:
                self.lost += 1
                raise ReadTimeoutError(endpoint_url="http://moto")
            return answer

        return call


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("code", "status", "retryable", "reason"),
    [
        ("ProvisionedThroughputExceededException", 400, True, "throttling"),
        ("ThrottlingException", 400, True, "throttling"),
        ("RequestLimitExceeded", 400, True, "throttling"),
        ("InternalServerError", 500, True, "server_error"),
        ("ServiceUnavailable", 503, True, "server_error"),
        ("ConditionalCheckFailedException", 400, False, "lease_lost"),
        ("ValidationException", 400, False, "rejected"),
        ("ResourceNotFoundException", 400, False, "client_error"),
        ("AccessDeniedException", 403, False, "access_denied"),
    ],
)
def test_table_error_classes(code: str, status: int, retryable: bool, reason: str) -> None:
    cls = classify_table_error(client_error(code, status))
    assert (cls.retryable, cls.reason) == (retryable, reason)


async def test_throttling_is_retried_with_jitter_and_a_bound(store: DynamoDBCheckpointStore) -> None:
    lease = await held_lease(store, "a", "me")
    patient = DynamoDBCheckpointStore(Throttled(store.client, 2), store.table, retry_initial_seconds=0.001)
    await patient.save_many("src", {"a": (SEQ,)}, {"a": lease})
    assert await patient.load("src") == {"a": (SEQ,)} and patient.retries["throttling"] == 4
    impatient = DynamoDBCheckpointStore(
        Throttled(store.client, 5), store.table, retry_attempts=3, retry_initial_seconds=0.001
    )
    with pytest.raises(ClientError):
        await impatient.renew(lease)
    assert impatient.retries["throttling"] == 2


async def test_a_retried_write_that_had_landed_is_not_a_lost_lease(store: DynamoDBCheckpointStore) -> None:
    lease = await held_lease(store, "a", "me")
    counter = lease.counter
    flaky = DynamoDBCheckpointStore(LandedThenTimedOut(store.client), store.table, retry_initial_seconds=0.001)
    await flaky.renew(lease)  # attempt 1 bumped the counter; attempt 2's condition fails on our own write
    assert flaky.retries["timeout"] == 1 and lease.counter == counter + 1 and lease.owner == "me"
    await store.renew(lease)


async def test_sqlite_store_behind_the_same_interface(tmp_path: Path) -> None:
    sqlite = SQLiteCheckpointStore(tmp_path / "cp.sqlite3")
    store = SQLiteLeaseStore(sqlite)
    await store.ensure_leases("src", {"a": (), "b": ("a",)})
    c = LeaseCoordinator(store, "src", store.owner)
    await c.take_once()
    assert set(c.held) == {"a", "b"} and c.may_write("a")
    await store.save_many("src", {"a": SHARD_END, "b": (SEQ,)}, c.held)
    await c.renew_once()
    assert await store.load("src") == sqlite.load("src") == {"a": SHARD_END, "b": (SEQ,)}
    await store.forget("src", ["a"], c.held)
    assert await store.load("src") == {"b": (SEQ,)}
    sqlite.close()


def test_config_timing_rule() -> None:
    ok = DynamoDBCheckpointConfig.model_validate({"kind": "dynamodb", "table": "t", "region": "us-east-1"})
    assert 2 * ok.renew_interval_seconds + ok.fencing_margin_seconds <= ok.lease_duration_seconds
    with pytest.raises(ValidationError, match="renew_interval_seconds should be at most half"):
        DynamoDBCheckpointConfig.model_validate(
            {"kind": "dynamodb", "table": "t", "region": "us-east-1", "renew_interval_seconds": 7.0}
        )


async def test_a_finished_parent_is_released_and_its_child_taken(store: DynamoDBCheckpointStore) -> None:
    await store.ensure_leases("src", {"parent": (), "child": ("parent",)})
    c = await coordinator(store, "me")
    await c.take_once()
    assert set(c.held) == {"parent"}, "a child waits for its parent's SHARD_END"
    renewing, saving = (
        c.held["parent"],
        asyncio.gather(c.renew_once(), store.save_many("src", {"parent": ("5".zfill(40),)}, c.held)),
    )
    await saving  # a renewal and a checkpoint in flight together do not fail each other
    assert renewing.position == ("5".zfill(40),) and c.may_write("parent")
    await store.save_many("src", {"parent": SHARD_END}, c.held)
    await c.renew_once()
    assert not c.held and (await store.get_lease("src", "parent")).owner is None  # type: ignore[union-attr]
    await c.take_once()
    assert set(c.held) == {"child"} and await store.load("src") == {"parent": SHARD_END}


async def test_coordinators_on_timers_never_share_a_writable_lease(
    stack: AsyncExitStack, moto_server: str, table: str
) -> None:
    """Three instances on their timers; one is then paused (its tasks stop, nothing released). Sampled all
    along: no partition is writable by two instances at once, and the survivors end up with everything."""
    stores = [await open_store(stack, moto_server, table) for _ in range(3)]
    await stores[0].ensure_leases("src", {f"shard-{i:02}": () for i in range(8)})
    # (2 s leases: with 0.8 s, a loaded machine stalled this one loop of three coordinators past their renewals)
    timing = {"lease_duration": 2.0, "renew_interval": 0.3, "take_interval": 0.2, "margin": 0.6}
    coordinators = [LeaseCoordinator(s, "src", f"instance-{i}", **timing) for i, s in enumerate(stores)]
    for c in coordinators:
        await c.start()

    def shares(group: list[LeaseCoordinator]) -> list[int]:
        return sorted(len(c.held) for c in group)

    def writable(group: list[LeaseCoordinator]) -> list[str]:
        # (`held` may still list a lease whose renewal stalled past its deadline on a loaded machine and that
        # another instance took meanwhile: held but not writable until the next renewal finds it lost)
        return sorted(p for c in group for p in c.held if c.may_write(p))

    async def sample_until(done: Callable[[], bool], seconds: float) -> None:
        end = time.monotonic() + seconds
        while not done():
            writers = Counter(p for c in coordinators for p in c.held if c.may_write(p))
            assert not writers or max(writers.values()) == 1, writers
            assert time.monotonic() < end, [sorted(c.held) for c in coordinators]
            await asyncio.sleep(0.01)

    await sample_until(lambda: shares(coordinators) == [2, 3, 3], 15.0)  # (slack for a loaded machine)
    paused, survivors = coordinators[0], coordinators[1:]
    for task in paused._tasks:  # a pause: nothing renews, nothing is released
        task.cancel()
    everything = [f"shard-{i:02}" for i in range(8)]
    await sample_until(lambda: shares(survivors) == [4, 4] and writable(survivors) == everything, 15.0)
    assert not any(paused.may_write(p) for p in paused.held)
    for c in coordinators:
        await c.stop()


async def test_a_drain_releases_a_lease_whose_take_landed_unseen(store: DynamoDBCheckpointStore) -> None:
    """The drain cancels the take timer, and a take already sent may land without its answer reaching us: the
    drain re-reads the table and frees what names us owner, so the others need not wait for it to expire."""
    await store.ensure_leases("src", {"a": (), "b": ()})
    me = await coordinator(store, "me")
    await me.take_once()
    assert set(me.held) == {"a", "b"}
    b = me.renewer.drop("b")  # as if the take of "b" landed but the round was cancelled before it was adopted
    assert b is not None and (await store.get_lease("src", "b")).owner == "me"
    await me.stop()
    assert {lease.partition: lease.owner for lease in await store.list_leases("src")} == {"a": None, "b": None}


async def test_a_neptune_source_is_active_standby(store: DynamoDBCheckpointStore) -> None:
    """One partition (""): one instance holds it, the other waits without asking for it, and takes it as soon
    as the holder drains (releases) it."""
    await store.ensure_leases("src", {"": ()})
    active, standby = await coordinator(store, "active"), await coordinator(store, "standby")
    for _ in range(3):
        for c in (active, standby):
            await c.take_once()
            await c.renew_once()
    assert set(active.held) == {""} and not standby.held and standby.taker.steals == 0
    await store.save_many("src", {"": (42, 1)}, active.held)
    await active.stop()
    await standby.take_once()
    assert set(standby.held) == {""} and await store.load("src") == {"": (42, 1)}


# ------------------------------------------------------------------------------------------ metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"source": "src", **labels})
    return 0.0 if value is None else value


async def test_lease_metrics_count_takes_steals_losses_and_releases(store: DynamoDBCheckpointStore) -> None:
    await store.ensure_leases("src", {"a": (), "b": (), "c": ("a",)})
    m1, m2 = Metrics(), Metrics()
    first = await coordinator(store, "first", metrics=m1)
    second = await coordinator(store, "second", metrics=m2)
    await first.take_once()  # alone: takes a and b (c waits for a)
    assert sample(m1, "graph_replicator_lease_acquisitions_total") == 2
    assert sample(m1, "graph_replicator_leases_held") == 2
    assert [sample(m1, "graph_replicator_lease_partitions", state=s) for s in ("owned", "unowned", "waiting")] == [
        2,
        0,
        1,
    ]
    await second.take_once()  # 2 vs 0: a steal request
    assert sample(m2, "graph_replicator_lease_steals_total") == 1 and sample(m2, "graph_replicator_leases_held") == 0
    await first.renew_once()  # answers it: a hand-off (in a task of its own, once the writes in flight end)
    await first.handovers_done()
    assert sample(m1, "graph_replicator_lease_releases_total", source="src", reason="handoff") == 1
    await second.take_once()
    assert sample(m2, "graph_replicator_lease_acquisitions_total") == 1
    assert sample(m2, "graph_replicator_leases_held") == 1 and sample(m1, "graph_replicator_leases_held") == 1
    # Lost at renewal: a third instance took second's lease (as after expiry).
    (partition,) = second.held
    await store.take("src", partition, "thief", second.held[partition].counter)
    await second.renew_once()
    assert sample(m2, "graph_replicator_lease_losses_total") == 1 and not second.held
    # Lost by a failed conditional checkpoint write.
    (mine,) = first.held
    await store.take("src", mine, "thief", first.held[mine].counter)
    with pytest.raises(LeaseLost):
        await store.save_many("src", {mine: (SEQ,)}, first.held)
    await first.lease_lost(mine)
    assert sample(m1, "graph_replicator_lease_losses_total") == 1
    # shard_end and drain releases.
    third = await coordinator(store, "thief", metrics=(m3 := Metrics()))
    await third.take_once()  # adopts what was handed to it: a and b
    assert set(third.held) == {"a", "b"}
    await store.save_many("src", {"a": SHARD_END}, third.held)
    await third.renew_once()
    assert sample(m3, "graph_replicator_lease_releases_total", source="src", reason="shard_end") == 1
    await third.take_once()  # the child is ready now
    assert set(third.held) == {"b", "c"}
    assert sample(m3, "graph_replicator_lease_partitions", state="finished") == 1
    await third.stop()
    assert sample(m3, "graph_replicator_lease_releases_total", source="src", reason="drain") == 2
    assert sample(m3, "graph_replicator_leases_held") == 0


class RefusesWrites:
    """The real client, with every UpdateItem refused as a throttle (takes can never succeed)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name != "update_item":
            return getattr(self._client, name)

        async def refuse(**kwargs: Any) -> Any:
            raise client_error("ProvisionedThroughputExceededException", 400)

        return refuse


async def test_unowned_seconds_counts_from_expiry_and_table_retries_are_a_metric(
    store: DynamoDBCheckpointStore,
) -> None:
    await store.ensure_leases("src", {"a": ()})
    now = [100.0]
    holder = await coordinator(store, "holder", lease_duration=5.0, renew_interval=1.0, margin=1.0)
    await holder.take_once()
    metrics = Metrics()
    stuck = DynamoDBCheckpointStore(
        RefusesWrites(store.client), store.table, retry_attempts=2, retry_initial_seconds=0.001, metrics=metrics
    )
    watcher = LeaseCoordinator(
        stuck,
        "src",
        "watcher",
        lease_duration=5.0,
        renew_interval=1.0,
        margin=1.0,
        clock=lambda: now[0],
        metrics=metrics,
    )
    await watcher.take_once()  # sees `a` owned (its counter starts its clock at 100)
    assert sample(metrics, "graph_replicator_lease_unowned_seconds") == 0
    assert sample(metrics, "graph_replicator_lease_partitions", state="owned") == 1
    now[0] = 108.0  # the holder stopped renewing: expired at 105
    with pytest.raises(ClientError):
        await watcher.take_once()  # its take is throttled past the retries
    assert sample(metrics, "graph_replicator_lease_unowned_seconds") == 3.0
    assert sample(metrics, "graph_replicator_lease_partitions", state="unowned") == 1
    assert (
        metrics.registry.get_sample_value("graph_replicator_lease_table_retries_total", {"reason": "throttling"}) == 1
    )
    now[0] = 120.0  # read at scrape time: it keeps growing while nobody takes it
    assert sample(metrics, "graph_replicator_lease_unowned_seconds") == 15.0
    assert [lease.owner for lease in watcher.taker.last_seen] == ["holder"]
    # A working instance takes it: nobody-owned time is 0 again, and the view shows the new owner.
    other = LeaseCoordinator(
        store, "src", "other", lease_duration=5.0, renew_interval=1.0, margin=1.0, clock=lambda: now[0], metrics=metrics
    )
    await other.take_once()
    now[0] = 126.0
    await other.take_once()  # 6 s later it has seen the counter stand still: takes it
    assert set(other.held) == {"a"} and [lease.owner for lease in other.taker.last_seen] == ["other"]
    assert sample(metrics, "graph_replicator_lease_unowned_seconds") == 0
    await holder.stop(release=False)


async def test_a_free_lease_is_unowned_since_first_seen_free(store: DynamoDBCheckpointStore) -> None:
    await store.ensure_leases("src", {"a": (), "b": ()})
    now = [0.0]
    metrics = Metrics()
    stuck = DynamoDBCheckpointStore(RefusesWrites(store.client), store.table, retry_attempts=1, metrics=metrics)
    c = LeaseCoordinator(
        stuck, "src", "me", lease_duration=5.0, renew_interval=1.0, margin=1.0, clock=lambda: now[0], metrics=metrics
    )
    with pytest.raises(ClientError):
        await c.take_once()
    now[0] = 2.5
    assert sample(metrics, "graph_replicator_lease_unowned_seconds") == 2.5
    await c.stop()
    assert sample(metrics, "graph_replicator_lease_unowned_seconds") == 0, "a stopped coordinator reports nothing"


async def test_a_standby_is_idle_while_a_live_owner_holds_everything(store: DynamoDBCheckpointStore) -> None:
    await store.ensure_leases("src", {"": ()})
    now = [0.0]
    active = await coordinator(store, "active")
    standby = LeaseCoordinator(
        store, "src", "standby", lease_duration=5.0, renew_interval=1.0, margin=1.0, clock=lambda: now[0]
    )
    assert not standby.standby_idle(), "no round yet: it does not know"
    empty = LeaseCoordinator(store, "other-source", "x", lease_duration=5.0, renew_interval=1.0, margin=1.0)
    await empty.take_once()
    assert not empty.standby_idle(), "no lease in the table yet (shards not registered): not idle"
    await active.take_once()
    await standby.take_once()
    assert standby.standby_idle() and not active.standby_idle()
    now[0] = 6.0  # the active one's counter stood still past the lease: not live any more
    assert not standby.standby_idle()
    await active.stop()
    await standby.take_once()
    assert set(standby.held) == {""} and not standby.standby_idle()


async def test_a_lease_dropped_for_a_hand_over_is_not_taken_back_while_other_renewals_run(
    store: DynamoDBCheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal round renews every held lease together; the one asked for is dropped as soon as its own renewal
    answers, while the others may still be in flight. A take round in between must not take it back (it still
    names this instance): the other instance's request would be lost."""
    await store.ensure_leases("src", {"a": (), "b": ()})
    first, second = await coordinator(store, "first"), await coordinator(store, "second")
    await first.take_once()
    await second.take_once()  # 2 vs 0: asks for one ("a", the first by name)
    slow, renew = asyncio.Event(), store.renew

    async def renew_b_slowly(lease: Lease) -> Lease:
        if lease.partition == "b":
            await slow.wait()
        return await renew(lease)

    monkeypatch.setattr(store, "renew", renew_b_slowly)
    renewing = asyncio.create_task(first.renew_once())
    while "a" in first.held:  # noqa: ASYNC110 (the renewer drops it after its renewal answers: nothing to await)
        await asyncio.sleep(0.01)
    await first.take_once()  # "b"'s renewal still in flight, the hand-over of "a" not started yet
    assert "a" not in first.held
    slow.set()
    await renewing
    await first.handovers_done()
    await second.take_once()
    assert set(second.held) == {"a"} and set(first.held) == {"b"}


async def test_a_lease_being_handed_over_is_not_taken_back_by_its_own_take_round(
    store: DynamoDBCheckpointStore,
) -> None:
    """The hand-over waits for the writes in flight to end (`quiesce`); a take round meanwhile sees the lease
    still naming this instance. Taking it back would leave it held here while the release hands it to the other
    instance: two writers."""
    await store.ensure_leases("src", {"a": (), "b": ()})
    first, second = await coordinator(store, "first"), await coordinator(store, "second")
    await first.take_once()
    await second.take_once()  # 2 vs 0: asks for one
    writes_done = asyncio.Event()

    async def quiesce(partition: str) -> None:
        await writes_done.wait()

    first.quiesce = quiesce
    await first.renew_once()  # drops the one asked for; its hand-over waits for the writes
    (asked,) = {"a", "b"} - set(first.held)
    await first.take_once()
    assert asked not in first.held and not first.may_write(asked)
    writes_done.set()
    await first.handovers_done()
    await second.take_once()
    assert set(second.held) == {asked} and second.may_write(asked)
    (kept,) = first.held
    # A release retried at the table's counter leaves alone a lease this instance holds again.
    stale = Lease(**{field: getattr(first.held[kept], field) for field in Lease.__slots__})
    await first.renew_once()  # the held lease's counter moves on
    await first.renewer.give_up(stale, "handoff", to="second")
    assert (await store.get_lease("src", kept)).owner == "first" and first.may_write(kept)  # type: ignore[union-attr]
