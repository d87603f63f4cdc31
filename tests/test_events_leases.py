"""Event sinks with the DynamoDB checkpoint store (docs/events.md): each event sink's `SOURCE@SINK` row is written
under the source's lease (a transaction with a check of that lease), so an instance that lost the lease can move
neither; `graph-replicator checkpoint show|set|rewind|reset --source SOURCE@SINK` on both stores with the source
rows' safety checks. Against moto in server mode; the failover test runs real daemon processes on the Neptune
stand: the active one is SIGKILLed mid-history, the standby takes over, and the webhook receives every event,
per-element order kept, duplicates only as replays with the same id."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

import daemon.observability
from daemon.checkpoint import SQLiteCheckpointStore
from daemon.checkpoint_admin import AdminError, Request, run
from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore
from daemon.config import ConfigError, load_config, parse_config
from daemon.deadletter import DeadLetterFile
from daemon.events.cloudevents import Route, events_of
from daemon.events.fanout import EventLane
from daemon.events.sinks import Entry, EventSink
from daemon.leases import FencedOff, Lease, LeaseLost, new_owner_id
from daemon.model import ChangeBatch, GraphChange
from daemon.sinks.base import ErrorClass, RetryPolicy
from tests import test_events
from tests.stand.comparator import assert_converged
from tests.stand.daemon_process import DaemonProcess, toml_value, write_config
from tests.stand.harness import add_lease_table, load_history, neptune_source, replica, sink_config, status, wait_for
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import generate_history
from tests.test_events import SECRET, read_changes

LEASE_DURATION, RENEW_INTERVAL, TAKE_INTERVAL, MARGIN = 3.0, 0.5, 0.2, 0.5
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def store(moto_server: str) -> AsyncIterator[DynamoDBCheckpointStore]:
    async with AsyncExitStack() as stack:
        yield await DynamoDBCheckpointStore.open(
            stack, table=f"events-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint=moto_server
        )


async def held(store: DynamoDBCheckpointStore, owner: str, source: str = "main") -> Lease:
    await store.ensure_leases(source, {"": ()})
    current = await store.get_lease(source, "")
    assert current is not None
    return await store.take(source, "", owner, current.counter)


# ----------------------------------------------------------------------------------------------- the store


async def test_an_event_sinks_row_moves_only_under_the_sources_lease(store: DynamoDBCheckpointStore) -> None:
    old, new = new_owner_id(), new_owner_id()
    lease = await held(store, old)
    counter = lease.counter
    await store.save_many("main@hook", {"": (5, 1)}, {"": lease})
    await store.save_many("main@hook", {"": (6, 2)}, {"": lease})
    assert await store.load("main@hook") == {"": (6, 2)}
    assert await store.load("main") == {}, "the source's own row is not touched"
    row = await store.get_lease("main@hook", "")
    assert row is not None and row.owner is None and row.partition == "" and row.counter == 0
    source_lease = await store.get_lease("main", "")
    assert source_lease is not None and source_lease.counter == counter == lease.counter  # a check, not a renewal

    taken = await store.take("main", "", new, lease.counter)  # another instance, after the lease expired
    with pytest.raises(LeaseLost) as lost:
        await store.save_many("main@hook", {"": (7, 1)}, {"": lease})
    assert (lost.value.source, lost.value.expected_owner, lost.value.actual_owner) == ("main", old, new)
    assert await store.load("main@hook") == {"": (6, 2)}, "the stale owner moved the event sink's checkpoint"
    await store.save_many("main@hook", {"": (7, 1)}, {"": taken})
    assert await store.load("main@hook") == {"": (7, 1)}


async def test_an_operator_change_of_an_event_sinks_row_fences_a_paused_owner(store: DynamoDBCheckpointStore) -> None:
    owner = new_owner_id()
    lease = await held(store, owner)
    await store.save_many("main@hook", {"": (9, 1)}, {"": lease})
    row = await store.get_lease("main@hook", "")
    assert row is not None
    await store.overwrite_branch("main", "main@hook", "", (3, 0), row.counter, lease.counter)
    assert await store.load("main@hook") == {"": (3, 0)}
    source_lease = await store.get_lease("main", "")
    assert source_lease is not None and source_lease.owner is None and source_lease.counter == lease.counter + 1
    with pytest.raises(LeaseLost):  # the paused owner wakes and writes the window it had delivered: refused
        await store.save_many("main@hook", {"": (10, 1)}, {"": lease})
    assert await store.load("main@hook") == {"": (3, 0)}
    with pytest.raises(LeaseLost) as changed:  # a counter seen earlier: the source's lease moved since
        await store.overwrite_branch("main", "main@hook", "", (1, 0), row.counter + 1, lease.counter)
    assert changed.value.source == "main"
    await store.overwrite_branch("main", "main@hook", "", None, row.counter + 1, lease.counter + 1)  # delete
    assert await store.load("main@hook") == {}


class _Recording(EventSink):
    """An event sink that records each call's event ids and answers at once."""

    name, kind, max_records = "rec", "recording", 10

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
        self.calls.append([e.event["id"] for e in entries])
        return [None] * len(entries)

    def classify(self, exc: BaseException) -> ErrorClass:
        return ErrorClass(False, "internal")


class _Lease:
    """The lease coordinator as a lane sees it: writable until `calls_left` batch calls were allowed."""

    def __init__(self, calls_left: int) -> None:
        self.calls_left = calls_left

    def may_write(self, partition: str) -> bool:
        self.calls_left -= 1
        return self.calls_left >= 0


class _Checkpoints:
    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []

    async def save_many(self, key: str, positions: dict[str, Any]) -> None:
        self.saved.append(positions)


@pytest.mark.parametrize("writable_checks", [0, 3])
async def test_an_event_sink_stops_at_once_when_the_sources_lease_is_not_writable(
    tmp_path: Path, writable_checks: int
) -> None:
    """The lane checks the lease before the window and before each batch call: once it is not writable (the
    deadline passed, the lease lost), no further call is sent and nothing is checkpointed."""
    sink = _Recording()
    lane = EventLane("main", sink, Route(), buffer_batches=4, window_max_events=1000,
                     retry=RetryPolicy(0.01, 0.05, 3), dead_letters=DeadLetterFile(tmp_path / "dl.jsonl"))  # fmt: skip
    lane.ownership = _Lease(writable_checks)
    changes = [GraphChange("vl", True, "v1", "L", position=(i, 1), commit_ms=1) for i in range(1, 40)]
    lane.queue.put_nowait(ChangeBatch("", changes, (39, 1)))
    checkpoints = _Checkpoints()
    with pytest.raises(FencedOff):
        await lane.run(checkpoints, lambda *_: None)
    assert len(sink.calls) == max(0, writable_checks - 1)  # one check before the window, then one per call
    assert checkpoints.saved == [] and lane.positions == {}


async def test_an_event_sinks_state_goes_retrying_down_and_back_to_ok(tmp_path: Path) -> None:
    """`/status` state of an event sink: `retrying` after a failed call, `down` after `attempts_before_unhealthy`
    failures in a row, `ok` once a call delivers again; `events_retried` counts the events sent again."""
    seen: list[tuple[str, bool]] = []

    class Flaky(_Recording):
        async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
            seen.append((lane.status()["state"], lane.delivery.healthy))
            if len(seen) <= 3:
                raise ConnectionResetError("connection reset by peer")
            return await super().send(entries)

        def classify(self, exc: BaseException) -> ErrorClass:
            return ErrorClass(True, "connection")

    retry = RetryPolicy(0.001, 0.005, 2)
    lane = EventLane("main", Flaky(), Route(), buffer_batches=4, window_max_events=1000, retry=retry,
                     dead_letters=DeadLetterFile(tmp_path / "dl.jsonl"))  # fmt: skip
    changes = [GraphChange("vl", True, f"v{i}", "L", position=(i, 1), commit_ms=1) for i in range(1, 6)]
    lane.queue.put_nowait(ChangeBatch("", changes, (5, 1), caught_up=True))
    lane.stopping = True  # return after this window
    checkpoints = _Checkpoints()
    await lane.run(checkpoints, lambda *_: None)
    assert seen == [("ok", True), ("retrying", True), ("down", False), ("down", False)]
    status = lane.status()
    assert (status["state"], status["healthy"], status["failing_reason"]) == ("ok", True, None)
    assert (status["events_sent"], status["events_retried"], status["position"]) == (5, 15, {"": [5, 1]})
    assert checkpoints.saved == [{"": (5, 1)}]


def test_check_config_takes_event_sinks_with_the_dynamodb_store_but_an_s3_sink_of_shared_shards() -> None:
    head = '[checkpoint]\nkind = "dynamodb"\ntable = "t"\nregion = "us-east-1"\n'
    sinks = '[sinks.graph]\nkind = "falkordb"\n[sinks.hook]\nkind = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
    file_source = '[[sources]]\nname = "main"\nkind = "file"\npath = "/dev/null"\nsinks = ["graph", "hook"]\n'
    assert parse_config(head + file_source + sinks).sources[0].event_sinks == ["hook"]
    dynamodb_source = (
        '[[sources]]\nname = "items"\nkind = "dynamodb"\ntable = "app"\nkey = ["PK"]\nregion = "us-east-1"\n'
        'sinks = ["graph", "hook"]\n[[sources.rules]]\nname = "u"\nvertex = { label = "U", id = "{PK}" }\n'
    )
    assert parse_config(head + dynamodb_source + sinks).sources[0].event_sinks == ["hook"]
    archive = '[sinks.archive]\nkind = "s3"\nbucket = "b"\nregion = "us-east-1"\n'
    with pytest.raises(ConfigError) as refused:
        parse_config(head + dynamodb_source.replace('"hook"]', '"hook", "archive"]') + sinks + archive)
    assert 'an s3 sink of a DynamoDB source needs [checkpoint] kind = "sqlite"' in str(refused.value)


# ----------------------------------------------------------------------------------------- the commands


def _config(tmp_path: Path, checkpoint: str) -> Path:
    capture = tmp_path / "capture.jsonl"
    capture.write_text("")
    path = tmp_path / "c.toml"
    path.write_text(f"""
[daemon]
data_dir = "{tmp_path / "data"}"
http_address = ""
log_format = "json"

[checkpoint]
{checkpoint}

[[sources]]
name = "main"
kind = "file"
path = "{capture}"
sinks = ["g", "hook"]

[sinks.g]
kind = "falkordb"

[sinks.hook]
kind = "webhook"
url = "http://127.0.0.1:9/hook"
""")
    return path


async def _run(config: Any, request: Request, sleep: Any = None) -> str:
    out = io.StringIO()
    daemon.observability.configure_logging("info", "json")
    assert await run(config, request, out, sleep=sleep or asyncio.sleep) == 0
    return out.getvalue()


@pytest.mark.usefixtures("uncached_logs")
async def test_checkpoint_commands_move_an_event_sinks_row_on_sqlite(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, 'kind = "sqlite"'))
    store = SQLiteCheckpointStore(config.checkpoint_path)  # type: ignore[arg-type]
    await store.save_many("main", {"": (50, 2)})
    await store.save_many("main@hook", {"": (40, 1)})
    store.close()

    out = await _run(config, Request("set", source="main@hook", position="30:2"))
    assert "source 'main@hook': 40:1 -> 30:2" in out, out
    out = await _run(config, Request("rewind", source="main@hook", commits=5))
    assert "30:2 -> 26:0" in out, out
    shown = orjson.loads(await _run(config, Request("show", fmt="json")))
    assert {r["source"]: r["position"] for r in shown} == {"main": [50, 2], "main@hook": [26, 0]}
    with pytest.raises(AdminError) as refused:
        await _run(config, Request("reset", source="main@hook"))
    assert "--yes" in str(refused.value) and "'main@hook'" in str(refused.value)
    out = await _run(config, Request("reset", source="main@hook", yes=True))
    assert "deleted" in out
    shown = orjson.loads(await _run(config, Request("show", fmt="json")))
    assert {r["source"]: r["position"] for r in shown} == {"main": [50, 2]}, "the source's own row stays"
    with pytest.raises(AdminError) as unknown:
        await _run(config, Request("set", source="main@nope", position="1"))
    assert "no event sink named 'nope' (its event sinks: hook)" in str(unknown.value)
    with pytest.raises(AdminError) as typed:
        await _run(config, Request("set", source="main@hook", position="abc"))
    assert "expected commitNum[:opNum]" in str(typed.value)


@pytest.mark.usefixtures("uncached_logs")
async def test_checkpoint_commands_on_dynamodb_watch_the_sources_leases(moto_server: str, tmp_path: Path) -> None:
    table = f"ckpt-{uuid.uuid4().hex[:10]}"
    checkpoint = (
        f'kind = "dynamodb"\ntable = "{table}"\nregion = "us-east-1"\nendpoint = "{moto_server}"\n'
        "lease_duration_seconds = 1.0\nrenew_interval_seconds = 0.2\nfencing_margin_seconds = 0.1"
    )
    config = load_config(_config(tmp_path, checkpoint))
    async with AsyncExitStack() as stack:
        store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
        owner = new_owner_id()
        lease = await held(store, owner)
        await store.save_many("main@hook", {"": (40, 1)}, {"": lease})

        async def owner_renews(seconds: float) -> None:
            await store.renew(lease)

        with pytest.raises(AdminError) as refused:  # the source's live owner writes the event sink's row
            await _run(config, Request("set", source="main@hook", position="10"), owner_renews)
        assert refused.value.exit_code == 4 and owner in str(refused.value)
        assert await store.load("main@hook") == {"": (40, 1)}

        async def owner_is_gone(seconds: float) -> None:
            return None

        out = await _run(config, Request("set", source="main@hook", position="10:4"), owner_is_gone)
        assert "source 'main@hook': 40:1 -> 10:4" in out and "DynamoDB table" in out, out
        assert await store.load("main@hook") == {"": (10, 4)}
        with pytest.raises(LeaseLost):  # the owner was only paused: fenced off
            await store.save_many("main@hook", {"": (41, 1)}, {"": lease})
        out = await _run(config, Request("rewind", source="main@hook", commits=2), owner_is_gone)
        assert "10:4 -> 9:0" in out, out
        shown = orjson.loads(await _run(config, Request("show", fmt="json")))
        assert {r["source"]: r["position"] for r in shown} == {"main": None, "main@hook": [9, 0]}
        out = await _run(config, Request("reset", source="main@hook", yes=True), owner_is_gone)
        assert "deleted" in out and await store.load("main@hook") == {}


# --------------------------------------------------------------------------------------------- failover


class Receiver(test_events.Receiver):
    """The webhook receiver of tests/test_events.py (signature checked), a little slow, that can kill the sender
    once `kill_at` events arrived, before answering that request."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.005
        self.kill_at: int | None = None
        self.kill: Any = None

    async def handle(self, request: web.Request) -> web.Response:
        response = await super().handle(request)
        if self.kill_at is not None and len(self.events) >= self.kill_at:
            self.kill_at = None
            self.kill()  # the sender dies with this request delivered but unanswered: its window is not checkpointed
        return response


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """The receiver on its own event loop in a thread (the test itself waits on daemon processes)."""
    import threading

    recv = Receiver()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", recv.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        holder["runner"] = runner
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield recv, f"http://127.0.0.1:{holder['port']}/hook"
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _pair(tmp_path: Path, stand: NeptuneStand, moto_server: str, url: str) -> list[Path]:
    table = f"leases-{uuid.uuid4().hex[:8]}"
    hook = {"kind": "webhook", "url": url, "secret": SECRET, "events_per_request": 20, "window_max_events": 200,
            "retry_initial_seconds": 0.02, "retry_max_seconds": 0.2}  # fmt: skip
    configs = []
    for name in ("a", "b"):
        path = write_config(
            tmp_path / f"{name}.toml",
            data_dir=tmp_path / f"data-{name}",
            source=neptune_source(stand, limit=100, queue_size=2),
            sink=sink_config("neptune", stand, batch_size=50),
        )
        text = path.read_text().replace('sink = "target"', 'sinks = ["target", "hook"]')
        text += "\n[sinks.hook]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in hook.items())
        path.write_text(text)
        add_lease_table(path, moto_server, table, lease_duration_seconds=LEASE_DURATION,
                        renew_interval_seconds=RENEW_INTERVAL, take_interval_seconds=TAKE_INTERVAL,
                        fencing_margin_seconds=MARGIN)  # fmt: skip
        configs.append(path)
    return configs


def _source(daemon: DaemonProcess) -> dict[str, Any]:
    return status(daemon)["sources"][0]


def _expected(history: Any, tmp_path: Path) -> list[dict[str, Any]]:
    """The events of the history as the daemon builds them: its records read by a file source."""
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in history.records()))
    changes: list[GraphChange] = asyncio.run(read_changes(path, 5000))
    return events_of("main", changes, Route())


@pytest.mark.parametrize("stop", ["kill", "terminate"])
def test_when_the_active_instance_stops_the_standby_delivers_every_event(
    stand: NeptuneStand, moto_server: str, receiver: tuple[Receiver, str], tmp_path: Path, stop: str
) -> None:
    """SIGKILL mid-window: the standby takes the lease once it expires and replays the window that was delivered
    but not checkpointed (same ids). SIGTERM: the drain finishes and checkpoints the window and releases the
    lease, and the standby goes on with exactly the rest."""
    recv, url = receiver
    history = generate_history(seed=16, n_changes=1500)
    load_history(stand, history)
    stand.faults.configure(rate=1.0, kinds=["slow"], seed=1, paths=("stream",))  # the kill lands mid-history
    configs = _pair(tmp_path, stand, moto_server, url)
    a = DaemonProcess(configs[0], exit_when_idle=False)
    b: DaemonProcess | None = None
    try:
        wait_for(lambda: recv.events and _source(a)["event_sinks"][0]["position"], 30, "A to deliver and checkpoint")
        b = DaemonProcess(configs[1], exit_when_idle=False)
        wait_for(lambda: _source(b)["state"] == "standby" and status(b)["ready"], 30, "B to stand by, ready")
        assert not _source(a)["caught_up"]
        (lane,) = _source(a)["event_sinks"]
        assert lane["checkpoint_key"] == "main@hook" and lane["state"] in ("ok", "retrying")
        recv.kill = getattr(a, stop)
        recv.kill_at = len(recv.events) + 50
        wait_for(lambda: a.proc.poll() is not None, 30, f"A to {stop}")
        delivered_before = len(recv.events)
        stand.faults.clear()
        wait_for(lambda: _source(b)["state"] != "standby", LEASE_DURATION + TAKE_INTERVAL + 10, "B to take the lease")
        wait_for(lambda: _source(b)["caught_up"] and _source(b)["event_sinks"][0]["caught_up"], 60, "B to catch up")
        (lane,) = _source(b)["event_sinks"]
        assert lane["state"] == "ok" and lane["lag_seconds"] == 0 and lane["buffered_events"] == 0
        assert lane["position"] == {"": _source(b)["position"]}
    finally:
        if b is not None:
            b.terminate()
        if a.proc.poll() is None:
            a.kill()
    assert b.wait(30) == 0, b.log_tail()
    expected = _expected(history, tmp_path)
    content = {e["id"]: e for e in expected}
    assert {e["id"] for e in recv.events} == set(content), "an event was lost (or one nobody wrote arrived)"
    assert all(e == content[e["id"]] for e in recv.events), "a replay carried other content under the same id"
    first_seen: dict[str, list[str]] = {}
    seen: set[str] = set()
    for event in recv.events:
        if event["id"] not in seen:
            seen.add(event["id"])
            first_seen.setdefault(event["subject"], []).append(event["id"])
    in_order: dict[str, list[str]] = {}
    for event in expected:
        in_order.setdefault(event["subject"], []).append(event["id"])
    assert first_seen == in_order, "per-element order differs from source order"
    assert len(recv.events) < len(expected) + delivered_before, "B replayed from the start, not the checkpoint"
    if stop == "kill":
        assert len(recv.events) > len(expected), "the window delivered without its checkpoint was not replayed"
    else:
        assert a.wait(5) == 0, a.log_tail()
        assert len(recv.events) == len(expected), "a drained window was delivered again"
    assert recv.bad_signatures == 0
    assert_converged(history.reference, replica("neptune", stand, tmp_path))
    print(f"\nfailover ({stop}): {len(expected)} events, {len(recv.events) - len(expected)} replayed")
