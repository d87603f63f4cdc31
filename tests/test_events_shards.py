"""Event sinks of a DynamoDB source whose shards are shared across instances (docs/events.md "Several instances"):
in process, two supervisors on one event loop (the harness of tests/test_shard_sharing.py), the scripted DynamoDB
Streams endpoint, moto for the lease table, one FalkorDB engine and one webhook receiver both deliver to.

Each event sink's position on a shard is an attribute of the shard's lease item, written conditional on the
holder; a new holder reads the shard from the lowest position of the graph sink and every event sink; a shard's
own checkpoint reaches `SHARD_END` (freeing it, and making its children ready) only once every sink delivered its
end. One instance drains mid-run and the other takes its shards over: every event is delivered at least once, in
each element's order, duplicates only as replays with the same id; the graph equals the reference."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore
from daemon.config import load_config
from daemon.engine import EmbeddedFalkorDB
from daemon.model import SHARD_END
from daemon.sources.dynamodb import position_of
from daemon.supervisor import Supervisor
from tests.stand.scripted_streams import ScriptedShard, ScriptedStreams
from tests.test_events import (
    SECRET,
    Receiver,
    receiver,  # noqa: F401 (the webhook receiver fixture)
)
from tests.test_shard_sharing import (
    converged,
    engine,  # noqa: F401 (the module-scoped FalkorDB engine)
    expected_graph,
    graph_name,  # noqa: F401
    held,
    instance_config,
    serve_script,
    sharded_script,
    stack,  # noqa: F401
    wait_until,
)

pytestmark = pytest.mark.timeout(150)


def with_hook(path: Path, url: str, *, graph: bool = True) -> Path:
    """The instance's config with a webhook event sink beside the graph sink (or in its place)."""
    sinks = '["graph", "hook"]' if graph else '["hook"]'
    text = path.read_text().replace('sink = "graph"', f"sinks = {sinks}", 1)
    if not graph:
        start = text.index("[sinks.graph]")
        end = text.index("\n\n", start)
        text = text[:start] + text[end:]
    hook = f'\n[sinks.hook]\nkind = "webhook"\nurl = "{url}"\nsecret = "{SECRET}"\nwindow_max_events = 4\n'
    path.write_text(text + hook)
    return path


def expected_events(shards: list[ScriptedShard]) -> dict[str, list[int]]:
    """Per element (`user:NAME`): the sequence numbers of its records, in lineage order (the script numbers a
    child's records after its parent's)."""
    out: dict[str, list[int]] = {}
    for shard in shards:
        for record in shard.records:
            user = record["dynamodb"]["Keys"]["PK"]["S"].split("#", 1)[1]
            out.setdefault(f"user:{user}", []).append(int(record["dynamodb"]["SequenceNumber"]))
    return {subject: sorted(sequences) for subject, sequences in out.items()}


def check_delivery(events: list[dict[str, Any]], shards: list[ScriptedShard]) -> int:
    """Every record's events at least once; per element, first deliveries in the records' order; a repeated id is
    the same event (a replay). Returns the number of duplicates."""
    by_id: dict[str, dict[str, Any]] = {}
    order: dict[str, list[int]] = {}
    duplicates = 0
    for event in events:
        if event["id"] in by_id:
            assert event == by_id[event["id"]], f"a replay differs from the first delivery of {event['id']}"
            duplicates += 1
            continue
        by_id[event["id"]] = event
        sequences = order.setdefault(event["subject"], [])
        sequence = int(event["data"]["position"][0])
        if not sequences or sequences[-1] != sequence:  # a record gives several events (label, properties)
            sequences.append(sequence)
    assert order == expected_events(shards)
    return duplicates


def holds(supervisor: Supervisor) -> set[str]:
    """The shards `supervisor` holds (none before its coordinator started)."""
    return held(supervisor) if "scripted" in supervisor.coordinators else set()


def delivered(recv: Receiver) -> int:
    """Records with at least one event delivered."""
    return len({(e["data"]["partition"], e["data"]["position"][0]) for e in recv.events})


async def test_graph_and_webhook_share_shards_and_a_drained_instance_hands_every_sinks_position_over(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: str,
    engine: EmbeddedFalkorDB,  # noqa: F811
    graph_name: str,  # noqa: F811
    stack: AsyncExitStack,  # noqa: F811
    receiver: tuple[Receiver, str],  # noqa: F811
) -> None:
    recv, hook_url = receiver
    shards, expected, script = sharded_script()
    open_shards = {shard.id for shard in shards if not shard.closed}
    streams = ScriptedStreams(shards, seed=5, throttle_rate=0.05, empty_rate=0.1)
    url, table = await serve_script(stack, monkeypatch, streams)
    a, b = (
        Supervisor(
            load_config(with_hook(instance_config(tmp_path, n, url, engine, graph_name, table, moto_server), hook_url))
        )
        for n in "ab"
    )
    runs = {name: asyncio.create_task(s.run()) for name, s in (("a", a), ("b", b))}
    records = sum(len(shard.records) for shard in shards)
    recv.delay = 0.1  # the webhook lags the graph: a drain comes while its windows are being delivered
    try:
        await wait_until(
            lambda: (
                len(holds(a) & open_shards) >= 2
                and len(holds(b)) >= 2
                and any("hook" in lease.branches for lease in a.coordinators["scripted"].held.values())
            ),
            60,
            "both instances holding shards, a's webhook positions on some",
        )
        a_shards = held(a)
        assert delivered(recv) < records, "the drain should come mid-run"
        a.request_drain()
        assert await asyncio.wait_for(runs.pop("a"), 30) == 0
        # a's shards carry both sinks' positions to b: read from the lowest, the webhook's where it lags.
        store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
        handed = [lease for lease in await store.list_leases("scripted") if lease.partition in a_shards]
        assert any("hook" in lease.branches for lease in handed), "the webhook's positions are on the lease items"
        recv.delay = 0.0
        await wait_until(lambda: held(b) == open_shards, 30, "b to take every open shard")
        await converged(engine, graph_name, expected, 60)
        await wait_until(lambda: delivered(recv) >= records, 60, "every event")

        for shard in shards:  # records that arrive afterwards on a's former shards are delivered by b
            if shard.id in a_shards and not shard.closed:
                script.put(shard, f"late-{shard.id[-4:]}", 9)
        await converged(engine, graph_name, expected_graph(script), 30)
        records = sum(len(shard.records) for shard in shards)
        await wait_until(lambda: delivered(recv) >= records, 30, "the late events")
    finally:
        for name, supervisor in (("a", a), ("b", b)):
            if name in runs:
                supervisor.request_drain()
        codes = await asyncio.wait_for(asyncio.gather(*runs.values()), 30)
        assert all(code == 0 for code in codes)

    duplicates = check_delivery(recv.events, shards)
    assert duplicates <= len(recv.events) // 2, f"{duplicates} duplicates of {len(recv.events)} events"

    # Every closed shard finished by every sink and free; open ones at their last record for both sinks, free.
    store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
    leases = {lease.partition: lease for lease in await store.list_leases("scripted")}
    for shard in shards:
        want = SHARD_END if shard.closed else position_of(shard.records[-1]["dynamodb"]["SequenceNumber"])
        assert leases[shard.id].position == want, shard.id
        assert leases[shard.id].branches == {"hook": want}, shard.id
        assert leases[shard.id].owner is None, f"{shard.id} still owned after both drained"


async def test_event_sinks_only_share_shards_and_finish_each_shard_before_its_children(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: str,
    engine: EmbeddedFalkorDB,  # noqa: F811
    graph_name: str,  # noqa: F811
    stack: AsyncExitStack,  # noqa: F811
    receiver: tuple[Receiver, str],  # noqa: F811
) -> None:
    """No graph sink (`EventOnlyPipeline`): the shards' own checkpoints reach `SHARD_END` through the event sink
    alone, children are read after their parents' events were delivered, and a drain hands over."""
    recv, hook_url = receiver
    shards, _, _ = sharded_script()
    streams = ScriptedStreams(shards, seed=6, throttle_rate=0.05, empty_rate=0.1)
    url, table = await serve_script(stack, monkeypatch, streams)
    configs = [
        with_hook(instance_config(tmp_path, n, url, engine, graph_name, table, moto_server), hook_url, graph=False)
        for n in "ab"
    ]
    a, b = (Supervisor(load_config(path)) for path in configs)
    runs = {name: asyncio.create_task(s.run()) for name, s in (("a", a), ("b", b))}
    records = sum(len(shard.records) for shard in shards)
    try:
        await wait_until(lambda: delivered(recv) >= records // 3, 60, "a third of the events")
        a.request_drain()
        assert await asyncio.wait_for(runs.pop("a"), 30) == 0
        await wait_until(lambda: delivered(recv) >= records, 60, "every event")
    finally:
        for name, supervisor in (("a", a), ("b", b)):
            if name in runs:
                supervisor.request_drain()
        codes = await asyncio.wait_for(asyncio.gather(*runs.values()), 30)
        assert all(code == 0 for code in codes)
    check_delivery(recv.events, shards)
    calls = streams.calls
    for shard in shards:
        if shard.parent is not None:
            assert calls.first_read[shard.id] > calls.ended[shard.parent], shard.id
    store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
    for lease in await store.list_leases("scripted"):
        if lease.position == SHARD_END or lease.branches.get("hook") == SHARD_END:
            assert lease.position == SHARD_END and lease.branches == {"hook": SHARD_END}, lease.partition
        assert lease.owner is None, lease.partition
    closed = {shard.id for shard in shards if shard.closed}
    ended = {lease.partition for lease in await store.list_leases("scripted") if lease.position == SHARD_END}
    assert ended == closed


async def test_a_sinks_position_on_a_shard_moves_only_under_the_shards_lease(
    moto_server: str,
    stack: AsyncExitStack,  # noqa: F811
) -> None:
    """`save_shard_branch` writes `cp@SINK` on the shard's lease item, conditional on the holder (and renews it);
    a first position registered for the source is every sink's too; an instance that lost the shard moves none."""
    from daemon.leases import LeaseLost, new_owner_id

    store = await DynamoDBCheckpointStore.open(
        stack, table=f"branches-{uuid.uuid4().hex[:8]}", region="us-east-1", endpoint=moto_server
    )
    await store.ensure_leases("items", {"s1": (), "s2": ()}, {"s2": ("0" * 39 + "5",)}, ("hook", "queue"))
    s2 = await store.get_lease("items", "s2")
    assert s2 is not None and s2.branches == {"hook": ("0" * 39 + "5",), "queue": ("0" * 39 + "5",)}
    old, new = new_owner_id(), new_owner_id()
    lease = await store.take("items", "s1", old, 0)
    counter = lease.counter
    await store.save_shard_branch(lease, "hook", ("0" * 39 + "7",))
    assert lease.counter == counter + 1 and lease.branches == {"hook": ("0" * 39 + "7",)}
    await store.save_many("items", {"s1": ("0" * 39 + "9",)}, {"s1": lease})
    row = await store.get_lease("items", "s1")
    assert row is not None and (row.position, row.branches) == (("0" * 39 + "9",), {"hook": ("0" * 39 + "7",)})

    taken = await store.take("items", "s1", new, lease.counter)  # another instance, after the lease expired
    with pytest.raises(LeaseLost):
        await store.save_shard_branch(lease, "hook", ("0" * 39 + "8",))
    await store.save_shard_branch(taken, "hook", SHARD_END)
    row = await store.get_lease("items", "s1")
    assert row is not None and row.owner == new and row.branches == {"hook": SHARD_END}


async def test_checkpoint_show_lists_a_shards_sink_positions_and_changing_them_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: str,
    stack: AsyncExitStack,  # noqa: F811
) -> None:
    import io

    import orjson

    from daemon.checkpoint_admin import AdminError, Request, run
    from tests.stand.daemon_process import AWS_ENV

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    table = f"admin-{uuid.uuid4().hex[:8]}"
    path = instance_config(tmp_path, "admin", "http://127.0.0.1:9", _NoEngine(), "g", table, moto_server)  # type: ignore[arg-type]
    config = load_config(with_hook(path, "http://127.0.0.1:9/hook"))
    store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
    await store.ensure_leases("scripted", {"s1": ()}, {"s1": ("0" * 39 + "4",)}, ("hook",))
    out = io.StringIO()
    assert await run(config, Request("show", fmt="json"), out) == 0
    shown = {(r["source"], r["partition"]): r["position"] for r in orjson.loads(out.getvalue())}
    assert shown == {("scripted", "s1"): ["0" * 39 + "4"], ("scripted@hook", "s1"): ["0" * 39 + "4"]}
    with pytest.raises(AdminError, match="not available yet"):
        await run(config, Request("set", source="scripted@hook", partition="s1", position="0" * 39 + "1"), out)


class _NoEngine:
    """Stands in for the engine in a config that is only parsed (no graph is written)."""

    host, port, password = "127.0.0.1", 9, "x"
