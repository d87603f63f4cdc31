"""A source that feeds event sinks only, no graph sink (docs/events.md "Event sinks only"): a Neptune stand source into
a webhook and Kinesis (moto) run in-process, with its status, readiness and metrics while it runs and its
checkpoints after; a file source into a webhook and an S3 archive in daemon processes, SIGKILLed mid-run and
restarted: nothing lost, duplicates only as replays with the same id, one object per window. The DynamoDB
source into the S3 archive alone is the shipped config's test (tests/test_events_s3.py). Config acceptance and
refusals, and the commands that have nothing to do for such a source (bootstrap, the source's own checkpoint)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.checkpoint import SQLiteCheckpointStore
from daemon.checkpoint_admin import AdminError, Request, run
from daemon.config import ConfigError, load_config, parse_config
from daemon.observability import METRICS
from daemon.supervisor import Supervisor
from tests.stand.daemon_process import DaemonProcess, toml_value
from tests.stand.harness import load_history, neptune_source, status, wait_for
from tests.stand.moto_process import MotoProcess
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import generate_history
from tests.test_events import assert_delivered, aws_keys, read_kinesis
from tests.test_events_leases import Receiver, _expected, receiver  # noqa: F401 (a fixture)
from tests.test_events_s3 import bucket, check_archive, read_archive, s3_sink, versions  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(120)
HOOK = 'kind = "webhook"\nurl = "{url}"\nsecret = "s3cret"\nevents_per_request = 20\nwindow_max_events = 200\n'


def event_only_config(tmp: Path, source: dict[str, Any], sinks: dict[str, str], *, http: str = "") -> str:
    """One source "main" feeding only `sinks` (name -> table body)."""
    names = ", ".join(f'"{n}"' for n in sinks)
    lines = ["[daemon]", f'data_dir = "{tmp / "data"}"', f'http_address = "{http}"', 'log_format = "json"',
             "restart_backoff_max_seconds = 0.2", "", "[[sources]]", 'name = "main"', f"sinks = [{names}]"]  # fmt: skip
    lines += [f"{k} = {toml_value(v)}" for k, v in source.items()]
    for name, body in sinks.items():
        lines += ["", f"[sinks.{name}]", body]
    return "\n".join(lines) + "\n"


def sample(name: str, **labels: str) -> float:
    value = METRICS.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} not exported"
    return value


async def test_an_event_only_neptune_source_feeds_a_webhook_and_kinesis(
    stand: NeptuneStand,
    moto: MotoProcess,
    receiver: tuple[Receiver, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Half the history, caught up (status, readiness, metrics), the other half appended while it runs, a drain:
    each target has every event exactly once in source order per element; only the event sinks' rows exist."""
    recv, url = receiver
    history = generate_history(seed=18, n_changes=600)
    half = len(history.commits) // 2
    load_history(stand, history, slice(0, half))
    moto.client("kinesis").create_stream(StreamName="only", ShardCount=1)
    path = tmp_path / "c.toml"
    sinks = {"hook": HOOK.format(url=url), "stream": f'kind = "kinesis"\nstream = "only"\n{aws_keys(moto)}'}
    path.write_text(event_only_config(tmp_path, neptune_source(stand, limit=100, queue_size=2), sinks))
    supervisor = Supervisor(load_config(path))
    task = asyncio.create_task(supervisor.run())

    def caught_up() -> dict[str, Any] | None:
        (source,) = supervisor.status()["sources"]
        return source if source["caught_up"] and source["position"] == [half, len(history.commits[half - 1])] else None

    try:
        for _ in range(600):
            if (source := caught_up()) is not None:
                break
            assert not task.done(), task
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"not caught up: {supervisor.status()}")
        assert supervisor.readiness() == (True, [])
        assert source["sink"] is None and source["sink_healthy"] and source["lag_seconds"] == 0
        assert [lane["checkpoint_key"] for lane in source["event_sinks"]] == ["main@hook", "main@stream"]
        assert all(lane["position"] == {"": source["position"]} for lane in source["event_sinks"])
        assert source["changes_applied"] == sum(len(c) for c in history.commits[:half])
        assert supervisor.status()["sinks"] == []  # no graph sink
        assert sample("graph_replicator_stream_latency_seconds", source="main", partition="") == 0
        assert sample("graph_replicator_checkpoint_commit_number", source="main", partition="") == half

        load_history(stand, history, slice(half, None))
        last = [len(history.commits), len(history.commits[-1])]
        for _ in range(600):
            (source,) = supervisor.status()["sources"]
            if source["caught_up"] and source["position"] == last:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"not caught up again: {supervisor.status()}")
    finally:
        supervisor.request_drain()
        assert await asyncio.wait_for(task, 30) == 0
    expected = await asyncio.to_thread(_expected, history, tmp_path)
    assert len(recv.events) == len(expected) and recv.bad_signatures == 0  # no restart: nothing twice
    assert_delivered("webhook", recv.events, expected)
    assert_delivered("kinesis", read_kinesis(moto, "only"), expected)
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    try:
        assert store.load("main") == {}, "an event-only source has no checkpoint of its own"
        assert store.load("main@hook") == store.load("main@stream") == {"": tuple(last)}
    finally:
        store.close()


def test_sigkill_mid_run_then_restart_loses_nothing(
    history_file: Path,
    moto: MotoProcess,
    receiver: tuple[Receiver, str],  # noqa: F811
    bucket: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A file source into a webhook and an S3 archive, no graph. The daemon is killed while the webhook is a third
    through; while it ran, /status and `graph-replicator status` showed the source with its event sinks only. The
    restart exits once every sink is caught up and checkpointed: each event at the webhook at least once
    (duplicates are replays with the same id and content), the archive holds each once, a key per window."""
    recv, url = receiver
    sinks = {"hook": HOOK.format(url=url), "arc": s3_sink(moto.url, bucket, "only/")}
    source = {"kind": "file", "path": str(history_file), "limit": 50, "queue_size": 2}
    path = tmp_path / "c.toml"
    path.write_text(event_only_config(tmp_path, source, sinks, http="127.0.0.1:0"))
    expected = _file_events(history_file)
    recv.delay = 0.2  # about 5 s for the whole history: the checks below and the kill land mid-run
    first = DaemonProcess(path, exit_when_idle=False)
    try:
        wait_for(lambda: recv.events, 60, "the first events")
        body = status(first)
        (shown,) = body["sources"]
        assert shown["sink"] is None and [lane["sink"] for lane in shown["event_sinks"]] == ["hook", "arc"]
        assert body["sinks"] == [] and "not polling" not in " ".join(body["reasons"])
        printed = subprocess.run(
            [sys.executable, "-m", "daemon", "status", "--url", f"127.0.0.1:{first.http_port()}"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert "(event sinks only)" in printed.stdout and "main event sinks:" in printed.stdout, printed.stdout
        wait_for(lambda: len(recv.events) >= len(expected) // 3, 60, "a third of the events")
    finally:
        first.kill()
    cut = len(recv.events)
    assert cut < len(expected)
    recv.delay = 0.0
    second = DaemonProcess(path)
    assert second.wait(60) == 0, second.log_tail()
    said = second.log_path.read_text()
    assert "event sinks only; their checkpoints:" in said and " query " not in said, said[-2000:]
    assert_delivered("webhook", recv.events, expected)
    assert len(recv.events) < len(expected) + cut  # resumed from the checkpoints, not the start
    objects = read_archive(moto, bucket, "only/")
    check_archive(objects, expected, prefix="only/", max_events=40)
    assert all(n <= 2 for n in versions(moto, bucket).values())  # a window replayed rewrites its own key
    assert recv.bad_signatures == 0


@pytest.fixture(scope="module")
def history_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import orjson

    history = generate_history(seed=19, n_changes=500)
    path = tmp_path_factory.mktemp("only") / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in history.records()))
    return path


def _file_events(path: Path) -> list[dict[str, Any]]:
    from daemon.events.cloudevents import Route, events_of
    from tests.test_events import read_changes

    return events_of("main", asyncio.run(read_changes(path, 5000)), Route())


# -------------------------------------------------------------------------------------------------- config


BASE = """
[[sources]]
name = "main"
kind = "{kind}"
{sinks}
{source}
[sinks.graph]
kind = "falkordb"
[sinks.hook]
kind = "webhook"
url = "http://127.0.0.1:9/x"
[sinks.audit]
kind = "kinesis"
stream = "audit"
region = "us-east-1"
"""
FILE = 'path = "/dev/null"'
DYNAMODB = 'table = "t"\nregion = "us-east-1"\nkey = ["PK"]\n[[sources.rules]]\nname = "r"\n' + (
    'vertex = {label = "L", id = "{PK}"}'
)


@pytest.mark.parametrize(
    ("kind", "sinks"),
    [("file", 'sinks = ["hook", "audit"]'), ("dynamodb", 'sinks = ["audit", "hook"]'),
     ("neptune", 'sinks = ["audit", "hook"]')],
)  # fmt: skip
def test_check_config_takes_a_source_with_event_sinks_only(kind: str, sinks: str) -> None:
    source = {"file": FILE, "dynamodb": DYNAMODB, "neptune": 'endpoint = "https://n:8182"\nregion = "us-east-1"'}
    config = parse_config(BASE.format(kind=kind, source=source[kind], sinks=sinks))
    (main,) = config.sources
    assert main.sink is None and main.event_sinks == main.sinks
    with pytest.raises(ValueError, match="feeds event sinks only"):
        config.sink_for("main")


@pytest.mark.parametrize(
    ("sinks", "problem"),
    [
        ('sinks = ["hook", "graph", "audit"]', '"graph" is a graph sink: the graph sink comes first in sinks'),
        ('sink = "hook"\nsinks = ["hook", "audit"]', '`sink` names the graph sink; "hook" is a webhook sink'),
        ('sink = "hook"', 'write sinks = ["hook"]'),
        ('sinks = ["hook", "hook", "audit"]', "sinks should name each sink once"),
        ("sinks = []", "name the sinks this source feeds"),
        ("", "name the sinks this source feeds"),
        ('sinks = ["hook", "nope", "audit"]', 'no sink named "nope"'),
        ('sinks = ["hook"]', "sinks.audit: event sink fed by no source"),
    ],
)
def test_check_config_explains_what_an_event_only_source_cannot_be(sinks: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE.format(kind="file", source=FILE, sinks=sinks))
    assert problem in str(caught.value), str(caught.value)


def test_an_event_only_dynamodb_source_shares_its_shards_with_the_shared_store_and_routes_are_checked() -> None:
    shared = '[checkpoint]\nkind = "dynamodb"\ntable = "t"\nregion = "us-east-1"\n'
    config = parse_config(shared + BASE.format(kind="dynamodb", source=DYNAMODB, sinks='sinks = ["hook", "audit"]'))
    assert config.sources[0].sink is None and config.sources[0].event_sinks == ["hook", "audit"]
    parse_config(shared + BASE.format(kind="file", source=FILE, sinks='sinks = ["hook", "audit"]'))
    text = BASE.format(kind="file", source=FILE, sinks='sinks = ["hook", "audit"]') + "route = {ttl = true}\n"
    with pytest.raises(ConfigError, match='sink "audit" routes on DynamoDB event names or TTL deletions'):
        parse_config(text)


@pytest.mark.usefixtures("uncached_logs")  # the commands run in-process and configure logging
async def test_bootstrap_and_the_sources_own_checkpoint_are_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli import main as cli_main

    path = tmp_path / "c.toml"
    text = BASE.format(kind="file", source=FILE, sinks='sinks = ["hook", "audit"]')
    path.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n' + text)
    assert await asyncio.to_thread(cli_main, ["bootstrap", "--config", str(path)]) != 0
    said = capsys.readouterr()
    assert "feeds event sinks only (hook, audit): there is no graph to bootstrap" in said.out + said.err, said
    assert await asyncio.to_thread(cli_main, ["query", "--config", str(path), "--sink", "hook", "RETURN 1"]) != 0
    assert "sink 'hook' is an event sink: it holds no graph (graph sinks: graph)" in capsys.readouterr().err
    config = load_config(path)
    with pytest.raises(AdminError, match=r"feeds event sinks only.*--source main@hook, main@audit"):
        await run(config, Request(action="set", source="main", position="5:1"), io.StringIO())
    out = io.StringIO()
    assert await run(config, Request(action="set", source="main@hook", position="5:1"), out) == 0
    shown = io.StringIO()
    assert await run(config, Request(action="show"), shown) == 0
    assert "main@hook" in shown.getvalue(), shown.getvalue()


async def test_an_event_only_source_on_the_dynamodb_store_writes_under_the_sources_lease(
    stand: NeptuneStand,
    moto_server: str,
    receiver: tuple[Receiver, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """With `[checkpoint] kind = "dynamodb"` the instance takes the source's lease, delivers, checkpoints the event
    sink's item under it and, at `--exit-when-idle`, releases it; the source has no item of its own."""
    from contextlib import AsyncExitStack

    from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore
    from tests.stand.harness import add_lease_table

    recv, url = receiver
    history = generate_history(seed=20, n_changes=200)
    load_history(stand, history)
    path = tmp_path / "c.toml"
    path.write_text(event_only_config(tmp_path, neptune_source(stand, limit=50), {"hook": HOOK.format(url=url)}))
    table = f"only-{tmp_path.name[-20:].lower().replace('_', '-')}"
    add_lease_table(path, moto_server, table, lease_duration_seconds=3.0, renew_interval_seconds=0.5,
                    take_interval_seconds=0.2, fencing_margin_seconds=0.5)  # fmt: skip
    supervisor = Supervisor(load_config(path), exit_when_idle=True)
    assert await asyncio.wait_for(supervisor.run(), 60) == 0
    assert_delivered("webhook", recv.events, await asyncio.to_thread(_expected, history, tmp_path))
    last = (len(history.commits), len(history.commits[-1]))
    async with AsyncExitStack() as stack:
        store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
        assert await store.load("main@hook") == {"": last}
        assert await store.load("main") == {}
        lease = await store.get_lease("main", "")
        assert lease is not None and lease.owner is None  # released at the end


async def test_an_event_sink_failing_for_good_restarts_an_event_only_source_without_losing_anything(
    history_file: Path,
    receiver: tuple[Receiver, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A 403 ends the run; readiness says why while the supervisor waits to restart it from the event sink's
    checkpoint; then everything arrives and the source reports no crash."""
    recv, url = receiver
    recv.script = [403]
    source = {"kind": "file", "path": str(history_file), "limit": 50}
    path = tmp_path / "c.toml"
    path.write_text(event_only_config(tmp_path, source, {"hook": HOOK.format(url=url)}))
    restarts = METRICS.task_restarts.labels(source="main")
    before = restarts._value.get()
    supervisor = Supervisor(load_config(path), exit_when_idle=True)
    task = asyncio.create_task(supervisor.run())
    seen: list[str] = []
    while not task.done():
        seen += supervisor.readiness()[1]
        await asyncio.sleep(0.01)
    assert task.result() == 0
    assert restarts._value.get() == before + 1
    assert any(r.startswith("source main: restarting after a crash (") and "403" in r for r in seen), seen
    assert_delivered("webhook", recv.events, await asyncio.to_thread(_file_events, history_file))
    (shown,) = supervisor.status()["sources"]
    assert shown["restarting_after"] is None and shown["caught_up"]
