"""Event sinks (docs/events.md): one file source read once into a FalkorDB graph sink and Kinesis, SQS FIFO (moto in
server mode) and a webhook (a local aiohttp receiver checking the signature); each target read back: every change
delivered at least once, per-element order equal to source order, the de-duplicated events equal to the expected
ones, the graph identical to the reference. Faults: partial batch failures (a hook in front of moto's answers),
a webhook answering 500 then 200, an event sink down while the graph sink goes on and catches up after."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import falkordb
import jsonschema
import orjson
import pytest
from aiohttp import web

from daemon.checkpoint import SQLiteCheckpointStore
from daemon.cli import main as cli_main
from daemon.config import parse_config
from daemon.deadletter import DeadLetterFile
from daemon.engine import EmbeddedFalkorDB, start_engine_in_thread
from daemon.events.cloudevents import EVENT_TYPES, Route, events_of
from daemon.events.fanout import FanOutSource, after, lane_key
from daemon.events.sinks import SIGNATURE_HEADER, EventDelivery, KinesisSink, SQSSink, WebhookSink
from daemon.model import ChangeBatch, GraphChange
from daemon.sinks.base import RetryPolicy
from daemon.sources.file import FileSource
from daemon.supervisor import Supervisor
from tests.stand.comparator import assert_converged, read_falkordb_graph
from tests.stand.daemon_process import DaemonProcess
from tests.stand.moto_process import MotoProcess
from tests.stand.workload import History, generate_history

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "cloudevents.schema.json").read_text())
SECRET = "s3cret"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def history() -> History:
    return generate_history(seed=16, n_changes=700)


@pytest.fixture(scope="module")
def history_file(history: History, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in history.records()))
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedFalkorDB]:
    started, stop = start_engine_in_thread(tmp_path_factory.mktemp("engine"), fsync="everysec")
    yield started
    stop()


async def read_changes(path: Path, limit: int) -> list[GraphChange]:
    """Every change of the file, in source order (the source on its own, `limit` records a batch)."""
    source = FileSource("main", path=path, limit=limit, dead_letters=DeadLetterFile(path.with_suffix(".dl")))
    queue: asyncio.Queue[ChangeBatch] = asyncio.Queue()
    task = asyncio.create_task(source.run(queue, {}))
    changes: list[GraphChange] = []
    while True:
        batch = await asyncio.wait_for(queue.get(), 10)
        changes.extend(batch.changes)
        if batch.caught_up:
            break
    task.cancel()
    return changes


def by_subject(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Element id -> event ids in the order first seen (a replay of an id already seen is a duplicate)."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for event in events:
        if event["id"] not in seen:
            seen.add(event["id"])
            out.setdefault(event["subject"], []).append(event["id"])
    return out


def assert_delivered(name: str, got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Every expected event at least once, nothing else, per-element order as in the source; a duplicate is a
    replay of an event with the same id and the same content."""
    content = {e["id"]: e for e in expected}
    assert {e["id"] for e in got} == set(content), f"{name}: delivered ids differ from the expected ones"
    for event in got:
        assert event == content[event["id"]], f"{name}: {event['id']} arrived with other content"
    assert by_subject(got) == by_subject(expected), f"{name}: per-element order differs from source order"


# ------------------------------------------------------------------------------------------- the format


async def test_events_follow_the_schema_and_ids_do_not_depend_on_paging(history_file: Path) -> None:
    small, large = await read_changes(history_file, 7), await read_changes(history_file, 5000)
    events = events_of("main", small, Route())
    assert [e["id"] for e in events] == [e["id"] for e in events_of("main", large, Route())]
    assert len({e["id"] for e in events}) == len(events) == len(small)
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    for event in events:
        validator.validate(event)
    assert {e["type"] for e in events} <= set(EVENT_TYPES)
    assert {"graph.vertex.label.added", "graph.edge.added", "graph.vertex.property.added"} <= {
        e["type"] for e in events
    }
    assert SCHEMA["properties"]["type"]["enum"] == EVENT_TYPES


async def test_routes_filter_by_type_label_and_property(history_file: Path) -> None:
    changes = await read_changes(history_file, 5000)
    edges = events_of("main", changes, Route.of(types=["graph.edge.added"]))
    assert edges and all(e["type"] == "graph.edge.added" for e in edges)
    assert len(edges) == sum(1 for c in changes if c.kind == "e" and c.add)
    some_label = next(c.key for c in changes if c.kind == "vl")
    labelled = events_of("main", changes, Route.of(labels=[some_label]))
    assert labelled and all(e["data"].get("label", e["data"].get("type")) == some_label for e in labelled)
    some_key = next(c.key for c in changes if c.kind == "vp")
    props = events_of("main", changes, Route.of(types=["graph.vertex.*"], properties=[some_key]))
    assert props and all(e["data"]["key"] == some_key and e["data"]["kind"] == "vertex" for e in props)


def test_event_times_are_rfc3339_utc_milliseconds() -> None:
    from datetime import UTC, datetime

    from daemon.events.cloudevents import _time_text

    for ms in (1, 999, 1000, 1_764_120_000_000, 1_764_120_000_123, 1_764_120_059_999, 4_102_444_799_001):
        reference = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert _time_text(ms) == reference


def test_a_branch_is_handed_only_what_it_has_not_applied() -> None:
    changes = [GraphChange("vl", True, f"v{i}", "L", position=(i, 1)) for i in range(1, 6)]
    batch = ChangeBatch("", changes, (5, 1))
    assert after(batch, None) is batch
    assert [c.position for c in after(batch, (3, 1)).changes] == [(4, 1), (5, 1)]  # type: ignore[union-attr]
    assert after(batch, (5, 1)) is None
    marker = after(ChangeBatch("", [], (5, 1), caught_up=True), (5, 1))
    assert marker is not None and marker.position is None and marker.caught_up  # never moves a checkpoint back


# ------------------------------------------------------------------------------------- targets, read back


class Receiver:
    """A webhook receiver: checks the signature, records the events, answers what `script` says first."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.texts: list[str] = []  # chat messages (`text_template`)
        self.delay = 0.0  # seconds before answering
        self.poison: set[str] = set()  # event ids refused with 422 (with whatever shares their request)
        self.script: list[int] = []  # statuses to answer before accepting
        self.down = False  # answer 503 to everything
        self.requests = 0
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.down:
            return web.Response(status=503, headers={"Retry-After": "0.05"})
        if self.script:
            return web.Response(status=self.script.pop(0), headers={"Retry-After": "0"})
        parsed = orjson.loads(body)
        if isinstance(parsed, list) and any(e["id"] in self.poison for e in parsed):
            return web.Response(status=422, text="refused")
        if isinstance(parsed, dict):
            self.texts.append(parsed["text"])
        else:
            self.events.extend(parsed)
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield recv, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


def read_kinesis(moto: MotoProcess, stream: str) -> list[dict[str, Any]]:
    kinesis = moto.client("kinesis")
    out = []
    for shard in kinesis.describe_stream(StreamName=stream)["StreamDescription"]["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            out.extend(orjson.loads(r["Data"]) for r in page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return out


def read_sqs(moto: MotoProcess, queue_url: str) -> list[dict[str, Any]]:
    sqs = moto.client("sqs")
    out = []
    while True:
        page = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = page.get("Messages", [])
        if not messages:
            return out
        out.extend(orjson.loads(m["Body"]) for m in messages)
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


def config_text(tmp: Path, history_file: Path, engine: EmbeddedFalkorDB, graph: str, sinks: dict[str, str]) -> str:
    tables = "\n".join(f"[sinks.{name}]\n{body}" for name, body in sinks.items())
    names = ", ".join(f'"{n}"' for n in ["graph", *sinks])
    return f"""
[daemon]
data_dir = "{tmp / "data"}"
http_address = ""
restart_backoff_max_seconds = 0.2

[[sources]]
name = "main"
kind = "file"
path = "{history_file}"
limit = 50
queue_size = 2
window_max_changes = 200
sinks = [{names}]

[sinks.graph]
kind = "falkordb"
url = "redis://{engine.host}:{engine.port}"
password = "{engine.password}"
graph = "{graph}"

{tables}
"""


def aws_keys(moto: MotoProcess) -> str:
    return f'region = "us-east-1"\nendpoint = "{moto.url}"\nretry_initial_seconds = 0.01\nretry_max_seconds = 0.05\n'


class FlakyAnswers:
    """A fault hook between an AWS event sink and moto: every other batch call, the second half of the entries is
    not sent and is answered as failed (throttled / internal), as PutRecords and SendMessageBatch do."""

    def __init__(self, sink: KinesisSink | SQSSink) -> None:
        self.sink, self.calls, self.failed = sink, 0, 0
        self.real = sink.send
        sink.send = self.send  # type: ignore[method-assign]

    async def send(self, entries: list[Any]) -> list[Any]:
        self.calls += 1
        if self.calls % 2 or len(entries) < 2:
            return await self.real(entries)
        keep = len(entries) // 2
        from daemon.sinks.base import RETRY

        outcomes = await self.real(entries[:keep])
        self.failed += len(entries) - keep
        return [*outcomes, *[RETRY["throttling"]] * (len(entries) - keep)]


async def test_one_read_feeds_the_graph_kinesis_sqs_and_a_webhook(
    history: History,
    history_file: Path,
    engine: EmbeddedFalkorDB,
    moto: MotoProcess,
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    recv, url = receiver
    recv.script = [500, 500, 429]
    moto.client("kinesis").create_stream(StreamName="changes", ShardCount=2)
    queue_url = moto.client("sqs").create_queue(QueueName="changes.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    config = parse_config(
        config_text(
            tmp_path,
            history_file,
            engine,
            "fanout",
            {
                "stream": f'kind = "kinesis"\nstream = "changes"\n{aws_keys(moto)}',
                # moto's SQS slows down with every message it holds (400 take ~10 s): edges added and removed only
                "queue": f'kind = "sqs"\nqueue_url = "{queue_url}"\n{aws_keys(moto)}'
                'route = {types = ["graph.edge.added", "graph.edge.removed"]}\n',
                "hook": f'kind = "webhook"\nurl = "{url}"\nsecret = "{SECRET}"\nevents_per_request = 40\n'
                "retry_initial_seconds = 0.01\nretry_max_seconds = 0.05\n",
            },
        )
    )
    supervisor = Supervisor(config, exit_when_idle=True)
    fan = supervisor.pipelines[0].source
    assert isinstance(fan, FanOutSource)
    lanes = {lane.sink.name: lane for lane in fan.lanes}
    flaky = [FlakyAnswers(lanes["stream"].sink), FlakyAnswers(lanes["queue"].sink)]  # type: ignore[arg-type]
    assert await asyncio.wait_for(supervisor.run(), 60) == 0

    changes = await read_changes(history_file, 5000)
    expected = events_of("main", changes, Route())
    assert all(f.failed for f in flaky), "the fault hook never failed an entry"
    assert_delivered("kinesis", read_kinesis(moto, "changes"), expected)
    edges = events_of("main", changes, Route.of(types=["graph.edge.added", "graph.edge.removed"]))
    assert 0 < len(edges) < len(expected)
    assert_delivered("sqs", read_sqs(moto, queue_url), edges)
    assert_delivered("webhook", recv.events, expected)
    assert recv.bad_signatures == 0 and recv.requests > len(recv.events) // 40
    graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("fanout")
    assert_converged(history.reference, await asyncio.to_thread(read_falkordb_graph, graph))
    assert supervisor.dead_letters.count == 0
    status = supervisor.status()["sources"][0]["event_sinks"]
    assert {s["sink"]: s["events_dead_lettered"] for s in status} == {"stream": 0, "queue": 0, "hook": 0}
    for lane in status:  # caught up: nothing buffered, no lag, every retried event sent in the end
        assert (lane["state"], lane["buffered_events"], lane["lag_seconds"], lane["caught_up"]) == ("ok", 0, 0, True)
        assert lane["events_retried"] > 0, lane  # flaky entries (stream, queue); 500, 500, 429 answers (hook)
    assert {s["sink"]: s["events_sent"] for s in status} == {"stream": len(expected), "queue": len(edges),
                                                             "hook": len(expected)}  # fmt: skip
    store = SQLiteCheckpointStore(config.checkpoint_path)  # type: ignore[arg-type]
    try:
        final = store.load("main")
        assert final
        for name in ("stream", "queue", "hook"):
            assert store.load(lane_key("main", name)) == final
    finally:
        store.close()


async def test_a_sink_down_holds_nothing_back_and_catches_up_after(
    history: History,
    history_file: Path,
    engine: EmbeddedFalkorDB,
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    """The webhook is down while the graph sink replicates everything (its buffer holds the whole history), then
    comes back and receives every event; then a restart replays nothing to either."""
    recv, url = receiver
    recv.down = True
    text = config_text(
        tmp_path,
        history_file,
        engine,
        "down",
        {
            "hook": f'kind = "webhook"\nurl = "{url}"\nsecret = "{SECRET}"\nbuffer_batches = 1000\n'
            "retry_initial_seconds = 0.01\nretry_max_seconds = 0.05\nattempts_before_unhealthy = 2\n"
        },
    )
    supervisor = Supervisor(parse_config(text), exit_when_idle=True)
    run = asyncio.create_task(supervisor.run())
    pipeline = supervisor.pipelines[0]
    graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("down")
    while not pipeline.caught_up:
        assert not run.done()
        await asyncio.sleep(0.05)
    assert_converged(history.reference, await asyncio.to_thread(read_falkordb_graph, graph))
    ready, reasons = supervisor.readiness()
    assert not ready and any("event sink hook: failing" in r for r in reasons), reasons
    (lane,) = supervisor.status()["sources"][0]["event_sinks"]
    assert lane["state"] == "down" and lane["position"] is None and lane["events_retried"] > 0
    assert lane["buffered_events"] > 0 and lane["lag_seconds"] > 0 and "503" in lane["failing_reason"]
    assert not recv.events and not run.done()
    recv.down = False
    assert await asyncio.wait_for(run, 30) == 0
    expected = events_of("main", await read_changes(history_file, 5000), Route())
    assert_delivered("webhook", recv.events, expected)

    delivered = len(recv.events)
    again = Supervisor(parse_config(text), exit_when_idle=True)
    assert await asyncio.wait_for(again.run(), 30) == 0
    assert len(recv.events) == delivered, "a restart after everything was checkpointed replayed events"


@pytest.mark.usefixtures("uncached_logs")  # `checkpoint show` runs in-process and configures logging
async def test_a_graph_sink_ahead_of_an_event_sink_resumes_where_each_stopped(
    history_file: Path,
    engine: EmbeddedFalkorDB,
    receiver: tuple[Receiver, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The event sink's checkpoint is behind the graph's (it was down at the last stop): the source is read from
    the lower one, the webhook gets exactly what it lacked and the graph sink nothing again."""
    recv, url = receiver
    text = config_text(
        tmp_path,
        history_file,
        engine,
        "resume",
        {"hook": f'kind = "webhook"\nurl = "{url}"\nsecret = "{SECRET}"\n'},
    )
    supervisor = Supervisor(parse_config(text), exit_when_idle=True)
    assert await asyncio.wait_for(supervisor.run(), 60) == 0
    expected = events_of("main", await read_changes(history_file, 5000), Route())
    cut = expected[len(expected) // 2]["data"]["position"]
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    await store.save_many(lane_key("main", "hook"), {"": tuple(cut)})
    store.close()
    recv.events.clear()
    again = Supervisor(parse_config(text), exit_when_idle=True)
    assert await asyncio.wait_for(again.run(), 60) == 0
    assert again.pipelines[0].changes_applied == 0
    assert_delivered("webhook", recv.events, [e for e in expected if tuple(e["data"]["position"]) > tuple(cut)])
    path = tmp_path / "c.toml"
    path.write_text(text)
    capsys.readouterr()
    assert await asyncio.to_thread(cli_main, ["checkpoint", "show", "--config", str(path), "--format", "json"]) == 0
    shown = {row["source"]: row["position"] for row in orjson.loads(capsys.readouterr().out)}
    assert shown.keys() == {"main", "main@hook"} and shown["main"] == shown["main@hook"]


async def test_an_event_too_large_or_refused_is_dead_lettered_and_the_rest_delivered(
    moto: MotoProcess, tmp_path: Path
) -> None:
    moto.client("kinesis").create_stream(StreamName="small", ShardCount=1)
    sink = KinesisSink("k", stream="small", region="us-east-1", endpoint=moto.url, profile=None, timeout=10)
    dead = DeadLetterFile(tmp_path / "dl.jsonl")
    delivery = EventDelivery(sink, source="main", retry=RetryPolicy(0.01, 0.05, 2), dead_letters=dead)
    changes = [GraphChange("vp", True, "v1", "blob", "x" * (2 * 1024 * 1024), position=(1, 1))]
    changes += [GraphChange("vp", True, f"v{i}", "k", i, position=(i, 1)) for i in range(2, 30)]
    await sink.start()
    try:
        await delivery.deliver(events_of("main", changes, Route()))
    finally:
        await sink.close()
    lines = [orjson.loads(line) for line in (tmp_path / "dl.jsonl").read_bytes().splitlines()]
    assert len(lines) == 1 and lines[0]["reason"].startswith("too_large") and lines[0]["size"] > 2 * 1024 * 1024
    assert len(read_kinesis(moto, "small")) == 28 and delivery.sent == 28


async def test_sns_fifo_and_eventbridge_get_their_routed_events(
    history_file: Path, engine: EmbeddedFalkorDB, moto: MotoProcess, tmp_path: Path
) -> None:
    """SNS (FIFO topic -> FIFO queue, raw delivery) and EventBridge (a rule -> a queue), read back through SQS."""
    sqs, sns, events = moto.client("sqs"), moto.client("sns"), moto.client("events")
    fifo_queue = sqs.create_queue(
        QueueName="from-sns.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "false"}
    )["QueueUrl"]
    plain_queue = sqs.create_queue(QueueName="from-bus")["QueueUrl"]

    def arn(url: str) -> str:
        return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    topic = sns.create_topic(Name="changes.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn(fifo_queue), Attributes={"RawMessageDelivery": "true"})
    events.put_rule(Name="graph", EventPattern=json.dumps({"source": ["graph-replicator.main"]}))
    events.put_targets(Rule="graph", Targets=[{"Id": "q", "Arn": arn(plain_queue)}])
    config = parse_config(
        config_text(
            tmp_path,
            history_file,
            engine,
            "snsbus",
            {
                "topic": f'kind = "sns"\ntopic_arn = "{topic}"\n{aws_keys(moto)}'
                'route = {types = ["graph.edge.removed"]}\n',
                "bus": f'kind = "eventbridge"\n{aws_keys(moto)}route = {{types = ["graph.vertex.label.removed"]}}\n',
            },
        )
    )
    supervisor = Supervisor(config, exit_when_idle=True)
    assert await asyncio.wait_for(supervisor.run(), 60) == 0
    changes = await read_changes(history_file, 5000)
    assert_delivered("sns", read_sqs(moto, fifo_queue), events_of("main", changes, Route.of(["graph.edge.removed"])))
    from_bus = read_sqs(moto, plain_queue)
    assert all(m["source"] == "graph-replicator.main" for m in from_bus)
    assert {m["detail-type"] for m in from_bus} == {"graph.vertex.label.removed"}
    expected = events_of("main", changes, Route.of(["graph.vertex.label.removed"]))
    details = [m["detail"] for m in from_bus]
    assert {e["id"] for e in details} == {e["id"] for e in expected}  # EventBridge keeps no order
    assert all(e == {x["id"]: x for x in expected}[e["id"]] for e in details)


async def test_a_text_template_posts_chat_messages(
    history_file: Path, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    recv, url = receiver
    sink = WebhookSink(
        "slack", url=url, secret=SECRET, events_per_request=10, max_request_bytes=1 << 20, timeout=10,
        text_template="{type}: {data_from} -[{data_type}]-> {data_to}",
    )  # fmt: skip
    delivery = EventDelivery(
        sink, source="main", retry=RetryPolicy(0.01, 0.05, 2), dead_letters=DeadLetterFile(tmp_path / "dl")
    )
    changes = await read_changes(history_file, 5000)
    edges = events_of("main", changes, Route.of(["graph.edge.added"]))
    await sink.start()
    try:
        await delivery.deliver(edges)
    finally:
        await sink.close()
    lines = [line for text in recv.texts for line in text.split("\n")]
    assert lines == [f"graph.edge.added: {e['data']['from']} -[{e['data']['type']}]-> {e['data']['to']}" for e in edges]
    assert len(recv.texts) == -(-len(edges) // 10) and recv.bad_signatures == 0


async def test_sigkill_mid_run_loses_nothing_and_replays_only_same_ids(
    history: History,
    history_file: Path,
    engine: EmbeddedFalkorDB,
    moto: MotoProcess,
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    """The daemon process is killed while the webhook is a third through; a second run finishes. Every event is in
    Kinesis and at the webhook, per-element order held, duplicates are replays with the same id and content."""
    recv, url = receiver
    recv.delay = 0.01
    moto.client("kinesis").create_stream(StreamName="killed", ShardCount=1)
    path = tmp_path / "c.toml"
    path.write_text(
        config_text(
            tmp_path,
            history_file,
            engine,
            "killed",
            {
                "stream": f'kind = "kinesis"\nstream = "killed"\n{aws_keys(moto)}',
                "hook": f'kind = "webhook"\nurl = "{url}"\nsecret = "{SECRET}"\nevents_per_request = 5\n',
            },
        )
    )
    expected = events_of("main", await read_changes(history_file, 5000), Route())
    first = DaemonProcess(path)
    try:
        while len(recv.events) < len(expected) // 3:
            assert first.proc.poll() is None, first.log_tail()
            await asyncio.sleep(0.01)
    finally:
        first.kill()
    cut = len(recv.events)
    assert cut < len(expected)
    second = DaemonProcess(path)
    assert await asyncio.to_thread(second.wait, 60) == 0, second.log_tail()
    assert_delivered("webhook", recv.events, expected)
    assert_delivered("kinesis", read_kinesis(moto, "killed"), expected)
    assert len(recv.events) < len(expected) + cut  # the second run resumed from a checkpoint, not the start
    graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("killed")
    assert_converged(history.reference, await asyncio.to_thread(read_falkordb_graph, graph))


async def test_a_webhook_refusing_an_event_dead_letters_that_one_only(
    history_file: Path, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """A 4xx answer splits the request down to the refused event; the others arrive, in order."""
    recv, url = receiver
    events = events_of("main", (await read_changes(history_file, 5000))[:200], Route())
    recv.poison = {events[37]["id"], events[150]["id"]}
    sink = WebhookSink("w", url=url, secret=SECRET, events_per_request=50, max_request_bytes=1 << 20, timeout=10)
    dead = DeadLetterFile(tmp_path / "dl.jsonl")
    delivery = EventDelivery(sink, source="main", retry=RetryPolicy(0.01, 0.05, 2), dead_letters=dead)
    await sink.start()
    try:
        await delivery.deliver(events)
    finally:
        await sink.close()
    assert recv.events == [e for e in events if e["id"] not in recv.poison]
    lines = [orjson.loads(line) for line in (tmp_path / "dl.jsonl").read_bytes().splitlines()]
    assert {line["event"]["id"] for line in lines} == recv.poison
    assert all(line["stage"] == "deliver" and line["reason"].startswith("rejected") for line in lines)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sources.0.sinks": ["hook", "graph"]}, '"graph" is a graph sink: the graph sink comes first in sinks'),
        ({"sources.0.sinks": ["graph", "other"]}, "is a graph sink: one graph sink per source"),
        ({"sources.0.sinks": ["graph", "nope"]}, 'no sink named "nope"'),
        ({"sources.0.sinks": ["graph"]}, "event sink fed by no source"),
        ({"sources.0.sink": "other"}, "sinks should start with the graph sink"),
    ],
)
def test_check_config_refuses_fan_outs_it_cannot_run(change: dict[str, Any], problem: str) -> None:
    from daemon.config import ConfigError

    data: dict[str, Any] = {
        "sources": [{"name": "main", "kind": "file", "path": "/dev/null", "sinks": ["graph", "hook"]}],
        "sinks": {
            "graph": {"kind": "falkordb"},
            "other": {"kind": "falkordb"},
            "hook": {"kind": "webhook", "url": "http://127.0.0.1:9/x"},
        },
    }
    for key, value in change.items():
        if key == "checkpoint.kind":
            data["checkpoint"] = {"kind": value, "table": "t", "region": "us-east-1"}
        else:
            data["sources"][0][key.rsplit(".", 1)[1]] = value
    lines = []
    if "checkpoint" in data:
        lines += ["[checkpoint]", *(f"{k} = {orjson.dumps(v).decode()}" for k, v in data["checkpoint"].items())]
    lines += ["[[sources]]", *(f"{k} = {orjson.dumps(v).decode()}" for k, v in data["sources"][0].items())]
    for name, table in data["sinks"].items():
        lines += [f"[sinks.{name}]", *(f"{k} = {orjson.dumps(v).decode()}" for k, v in table.items())]
    with pytest.raises(ConfigError) as caught:
        parse_config("\n".join(lines))
    assert problem in str(caught.value), str(caught.value)


def test_the_source_is_told_a_position_is_done_only_when_every_sink_has_it() -> None:
    told: list[dict[str, Any]] = []

    class Reader:  # what FanOutSource needs of a source, recording acknowledgements
        name, state, polling = "main", "reading", True

        def acknowledge(self, applied: dict[str, Any]) -> None:
            told.append(dict(applied))

    fan = FanOutSource(Reader(), [])
    fan._applied = {"main": {}, "main@a": {}, "main@b": {}}
    fan.acknowledge({"s1": ("5",), "s2": ("SHARD_END",)})
    fan._on_applied("main@a", {"s1": ("7",), "s2": ("SHARD_END",)})
    assert told == []
    fan._on_applied("main@b", {"s1": ("3",), "s2": ("SHARD_END",)})
    assert told == [{"s1": ("3",), "s2": ("SHARD_END",)}]
    fan._on_applied("main@b", {"s1": ("9",)})
    assert told[-1] == {"s1": ("5",)}


async def test_a_dynamodb_source_fans_out_with_event_names_and_images(
    engine: EmbeddedFalkorDB, moto: MotoProcess, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """The shipped DynamoDB rules through moto's stream into the graph and a webhook: the graph equals the table's,
    each element's last event says what the graph holds of it, and every event carries the record's eventName
    and images."""
    from daemon.config import load_config
    from tests.stand.dynamodb_daemon import social_config
    from tests.stand.dynamodb_workload import SocialWorkload, create_table, expected_graph, scan

    recv, url = receiver
    client = moto.client("dynamodb")
    create_table(client, table="events_social")
    SocialWorkload(client, seed=16, table="events_social").run(400)
    graph_cfg = {"kind": "falkordb", "url": f"redis://{engine.host}:{engine.port}", "password": engine.password,
                 "graph": "ddb"}  # fmt: skip
    path = social_config(tmp_path, moto, sink=graph_cfg)
    text = re.sub(r'^table = "social"', 'table = "events_social"', path.read_text(), flags=re.M)
    text = re.sub(r'^sink = "graph"', 'sinks = ["graph", "hook"]', text, flags=re.M)
    path.write_text(text + f'\n[sinks.hook]\nkind = "webhook"\nurl = "{url}"\nsecret = "{SECRET}"\n')
    supervisor = Supervisor(load_config(path), exit_when_idle=True)
    assert await asyncio.wait_for(supervisor.run(), 60) == 0
    expected = expected_graph(scan(client, "events_social"))
    graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("ddb")
    assert_converged(expected, await asyncio.to_thread(read_falkordb_graph, graph, allow_unlabelled=True))

    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    last: dict[str, dict[str, Any]] = {}
    for event in recv.events:
        validator.validate(event)
        assert event["data"]["partition"] and event["data"]["dynamodb"]["eventName"] in ("INSERT", "MODIFY", "REMOVE")
        last[event["subject"]] = event
    assert len({e["id"] for e in recv.events}) == len(recv.events)  # no restart: no replay
    for vertex_id, vertex in expected.vertices.items():
        if vertex.labels:  # (a bare vertex is an edge's endpoint whose own item is gone or never was)
            assert last[vertex_id]["type"] == "graph.vertex.upserted", (vertex_id, last[vertex_id])
            assert last[vertex_id]["data"]["label"] in vertex.labels
        else:
            assert vertex_id not in last or last[vertex_id]["type"] == "graph.vertex.removed"
    for edge_id, edge in expected.edges.items():
        assert last[edge_id]["type"] == "graph.edge.upserted" and last[edge_id]["data"]["type"] == edge.type
    gone = set(last) - set(expected.vertices) - set(expected.edges)
    assert gone and all(last[g]["type"].endswith(".removed") for g in gone)


async def test_an_event_sink_failing_for_good_restarts_the_source_without_losing_anything(
    history: History, history_file: Path, engine: EmbeddedFalkorDB, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """A 403 (not retryable, not the data's fault) ends the run; the supervisor restarts the source from the
    checkpoints and, the receiver letting it in again, everything arrives; the graph is whole."""
    from daemon.observability import METRICS

    recv, url = receiver
    recv.script = [403]
    text = config_text(tmp_path, history_file, engine, "restart",
                       {"hook": f'kind = "webhook"\nurl = "{url}"\nsecret = "{SECRET}"\n'})  # fmt: skip
    restarts = METRICS.task_restarts.labels(source="main")
    before = restarts._value.get()
    supervisor = Supervisor(parse_config(text), exit_when_idle=True)
    assert await asyncio.wait_for(supervisor.run(), 60) == 0
    assert restarts._value.get() == before + 1
    assert_delivered("webhook", recv.events, events_of("main", await read_changes(history_file, 5000), Route()))
    graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("restart")
    assert_converged(history.reference, await asyncio.to_thread(read_falkordb_graph, graph))


async def test_a_drain_lets_event_sinks_finish_their_windows(
    history_file: Path, engine: EmbeddedFalkorDB, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """SIGTERM's drain while a slow webhook is mid-window: the window is delivered and checkpointed before the
    process ends, so the next run sends exactly the rest, nothing twice."""
    recv, url = receiver
    recv.delay = 0.02
    text = config_text(
        tmp_path,
        history_file,
        engine,
        "drain",
        {"hook": f'kind = "webhook"\nurl = "{url}"\nsecret = "{SECRET}"\nevents_per_request = 10\n'
                 "window_max_events = 200\n"},
    )  # fmt: skip
    supervisor = Supervisor(parse_config(text))
    run = asyncio.create_task(supervisor.run())
    while len(recv.events) < 60:
        assert not run.done()
        await asyncio.sleep(0.01)
    supervisor.request_drain()
    assert await asyncio.wait_for(run, 30) == 0
    expected = events_of("main", await read_changes(history_file, 5000), Route())
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    try:
        reached = store.load(lane_key("main", "hook"))[""]
    finally:
        store.close()
    assert [e["id"] for e in recv.events] == [e["id"] for e in expected if tuple(e["data"]["position"]) <= reached]
    assert len(recv.events) < len(expected)
    again = Supervisor(parse_config(text), exit_when_idle=True)
    recv.delay = 0.0
    assert await asyncio.wait_for(again.run(), 30) == 0
    assert [e["id"] for e in recv.events] == [e["id"] for e in expected]  # each once, in order
