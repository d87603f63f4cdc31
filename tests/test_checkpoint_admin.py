"""`graph-replicator checkpoint show|set|rewind|reset` on both stores: the SQLite file under the data-directory lock
(refused, exit 4 with the holder's pid, while a daemon holds it) and the DynamoDB table under the leases (refused
while a live instance owns one; an owner whose counter stood still is fenced off by the change), against moto in
server mode. Every change is logged with the old and new position."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

import daemon.observability
from daemon.checkpoint import SQLiteCheckpointStore
from daemon.checkpoint_admin import AdminError, Request, parse_position, run
from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore
from daemon.cli import main as cli_main
from daemon.config import load_config
from daemon.datadir import DataDirLock
from daemon.leases import LeaseLost, new_owner_id
from daemon.model import SHARD_END, SHARD_START
from daemon.sources.stream_reader import StreamReader
from tests.stand.daemon_process import AWS_ENV
from tests.stand.harness import config_for
from tests.stand.neptune_endpoint import NeptuneStand
from tests.test_file_source import run_cli

pytestmark = pytest.mark.usefixtures("uncached_logs")
SEQ = "1234567890123456789012"


def _records(commits: int) -> str:
    lines = []
    for commit in range(1, commits + 1):
        record = {
            "commitTimestamp": 1_700_000_000_000 + commit,
            "eventId": {"commitNum": commit, "opNum": 1},
            "data": {"id": f"v{commit}", "type": "vl", "key": "label", "value": {"value": "V", "dataType": "String"}},
            "op": "ADD",
            "isLastOp": True,
        }
        lines.append(orjson.dumps(record).decode())
    return "\n".join(lines) + "\n"


def _config(tmp_path: Path, *, checkpoint: str = 'kind = "sqlite"', dynamodb_source: bool = False) -> Path:
    capture = tmp_path / "capture.jsonl"
    capture.write_text(_records(5))
    text = f"""
[daemon]
data_dir = "{tmp_path / "data"}"
http_address = ""
log_format = "json"

[checkpoint]
{checkpoint}

[[sources]]
name = "replay"
kind = "file"
sink = "g"
path = "{capture}"

[sinks.g]
kind = "falkordb"
"""
    if dynamodb_source:
        text += """
[[sources]]
name = "items"
kind = "dynamodb"
sink = "g"
table = "app"
key = ["PK"]
region = "us-east-1"

[[sources.rules]]
name = "user"
when = { PK = { begins_with = "USER#" } }
vertex = { label = "User", id = "{PK}" }
"""
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _stored(config: Path, source: str = "replay") -> dict[str, Any]:
    store = SQLiteCheckpointStore(load_config(config).checkpoint_path)  # type: ignore[arg-type]
    try:
        return store.load(source)
    finally:
        store.close()


def _changes(err: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "checkpoint changed"]


# ------------------------------------------------------------------------------------------ positions


def test_positions_are_parsed_per_source_kind(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, dynamodb_source=True))
    replay, items = config.sources
    assert parse_position(replay, "1200:3") == (1200, 3)
    assert parse_position(replay, "1200") == (1200, 0)  # before commit 1200's first operation
    assert parse_position(items, SEQ) == (SEQ.zfill(40),)
    assert parse_position(items, "trim_horizon") == SHARD_START
    assert parse_position(items, "SHARD_END") == SHARD_END
    for source, text in ((replay, "12:x"), (replay, "0"), (replay, "-3"), (items, "12:3"), (items, "1" * 41)):
        with pytest.raises(AdminError) as refused:
            parse_position(source, text)
        assert repr(text) in str(refused.value) and refused.value.exit_code == 2


async def test_a_commit_without_an_op_is_read_from_its_first_operation() -> None:
    reader = StreamReader(client=None, resume=(1200, 0))
    assert await reader._start_params() == {"iteratorType": "AT_SEQUENCE_NUMBER", "commitNum": 1200, "opNum": 1}
    reader = StreamReader(client=None, resume=(1200, 3))
    assert await reader._start_params() == {"iteratorType": "AFTER_SEQUENCE_NUMBER", "commitNum": 1200, "opNum": 3}
    reader = StreamReader(client=None, resume=(0, 0))  # an empty stream's caught-up position, as before
    assert await reader._start_params() == {"iteratorType": "AFTER_SEQUENCE_NUMBER", "commitNum": 0, "opNum": 0}


# ------------------------------------------------------------------------------------------ SQLite


def test_sqlite_set_show_rewind_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    code, out, _ = _cli(capsys, "checkpoint", "show", "--config", str(config))
    assert code == 0 and "source 'replay': no stored position" in out, out

    code, out, err = _cli(capsys, "checkpoint", "set", "--config", str(config), "120:3")
    assert code == 0, err
    assert "source 'replay': - -> 120:3" in out and "SQLite file" in out, out
    assert _stored(config) == {"": (120, 3)}
    (logged,) = _changes(err)
    assert logged["old"] is None and logged["new"] == [120, 3] and logged["action"] == "set"

    code, out, _ = _cli(capsys, "checkpoint", "show", "--config", str(config))
    assert code == 0 and "replay  -          120:3" in out, out
    code, out, _ = _cli(capsys, "checkpoint", "show", "--config", str(config), "--format", "json")
    (row,) = orjson.loads(out)
    assert row["source"] == "replay" and row["position"] == [120, 3] and row["position_text"] == "120:3"

    code, out, err = _cli(capsys, "checkpoint", "rewind", "--config", str(config), "--commits", "5")
    assert code == 0 and "120:3 -> 116:0" in out, err
    assert _stored(config) == {"": (116, 0)}
    assert _changes(err)[0]["old"] == [120, 3] and _changes(err)[0]["new"] == [116, 0]

    code, _, err = _cli(capsys, "checkpoint", "rewind", "--config", str(config), "--commits", "117")
    assert code == 2 and "cannot rewind 117 commits from commit 116" in err, err

    code, _, err = _cli(capsys, "checkpoint", "reset", "--config", str(config))
    assert code == 2 and "--yes" in err and "116:0" in err, err
    assert _stored(config) == {"": (116, 0)}
    code, out, err = _cli(capsys, "checkpoint", "reset", "--config", str(config), "--yes")
    assert code == 0 and "deleted" in out, err
    assert _stored(config) == {}
    assert _changes(err)[0]["new"] is None


def test_sqlite_changes_are_refused_while_a_daemon_holds_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert _cli(capsys, "checkpoint", "set", "--config", str(config), "7:1")[0] == 0
    with DataDirLock(tmp_path / "data", "graph-replicator run"):
        for argv in (["set", "9"], ["rewind", "--commits", "2"], ["reset", "--yes"]):
            code, _, err = _cli(capsys, "checkpoint", *argv[:1], "--config", str(config), *argv[1:])
            assert code == 4, err
            assert f"pid {os.getpid()}" in err and "refused" in err and "stop the daemon first" in err, err
        code, out, _ = _cli(capsys, "checkpoint", "show", "--config", str(config))  # reading is fine
        assert code == 0 and "7:1" in out
    assert _stored(config) == {"": (7, 1)}


def test_usage_errors_name_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, dynamodb_source=True)
    code, _, err = _cli(capsys, "checkpoint", "set", "--config", str(config), "5")
    assert code == 2 and "several sources (replay, items): name one with --source" in err, err
    code, _, err = _cli(capsys, "checkpoint", "set", "--config", str(config), "--source", "items", SEQ)
    assert code == 2 and "--partition" in err, err
    code, _, err = _cli(
        capsys,
        "checkpoint",
        "rewind",
        "--config",
        str(config),
        "--source",
        "items",
        "--partition",
        "s",
        "--commits",
        "1",
    )
    assert code == 2 and "TRIM_HORIZON" in err, err
    code, _, err = _cli(capsys, "checkpoint", "set", "--config", str(config), "--source", "nope", "5")
    assert code == 2 and "no source named 'nope'" in err, err

    code, out, err = _cli(
        capsys,
        "checkpoint",
        "set",
        "--config",
        str(config),
        "--source",
        "items",
        "--partition",
        "shard-1",
        "trim_horizon",
    )
    assert code == 0 and "partition 'shard-1': - -> TRIM_HORIZON" in out, err
    assert _stored(config, "items") == {"shard-1": SHARD_START}


def test_a_set_commit_is_replayed_from_its_first_operation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert _cli(capsys, "checkpoint", "set", "--config", str(config), "3")[0] == 0
    run = run_cli("run", "--config", str(config), "--exit-when-idle")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("applied 3 changes"), run.stdout  # commits 3, 4 and 5
    assert _stored(config) == {"": (5, 1)}
    code, out, err = _cli(
        capsys, "query", "--config", str(config), "--format", "json", "MATCH (n:V) RETURN n.`~id` AS id ORDER BY id"
    )
    assert code == 0, err
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == ["v3", "v4", "v5"]


# ------------------------------------------------------------------------------------------ DynamoDB


def _dynamodb_config(tmp_path: Path, endpoint: str, table: str) -> Path:
    checkpoint = f"""kind = "dynamodb"
table = "{table}"
region = "us-east-1"
endpoint = "{endpoint}"
lease_duration_seconds = 1.0
renew_interval_seconds = 0.2
fencing_margin_seconds = 0.1"""
    return _config(tmp_path, checkpoint=checkpoint)


@pytest.fixture
async def shared(moto_server: str, tmp_path: Path) -> Any:
    table = f"ckpt-{uuid.uuid4().hex[:10]}"
    config = load_config(_dynamodb_config(tmp_path, moto_server, table))
    async with AsyncExitStack() as stack:
        store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
        yield config, store


async def _owned(store: DynamoDBCheckpointStore, owner: str, position: tuple[int, int] = (40, 2)) -> Any:
    await store.ensure_leases("replay", {"": ()})
    lease = await store.get_lease("replay", "")
    assert lease is not None
    lease = await store.take("replay", "", owner, lease.counter)
    await store.save_many("replay", {"": position}, {"": lease})
    return lease


async def _run(config: Any, request: Request, sleep: Any = None) -> tuple[int, str]:
    out = io.StringIO()
    daemon.observability.configure_logging("info", "json")  # to this test's stderr, as the command does
    code = await run(config, request, out, sleep=sleep or asyncio.sleep)
    return code, out.getvalue()


async def test_dynamodb_show_prints_owners_counters_heartbeats_and_pending_owners(shared: Any) -> None:
    config, store = shared
    owner, thief = new_owner_id(), new_owner_id()
    lease = await _owned(store, owner)
    await store.steal("replay", "", thief, owner, lease.counter)
    code, out = await _run(config, Request("show"))
    assert code == 0
    assert f"# DynamoDB table {store.table}" in out
    assert "owner" in out and "counter" in out and "heartbeat" in out and "pending owner" in out
    line = next(line for line in out.splitlines() if line.startswith("replay"))
    assert "40:2" in line and owner in line and str(lease.counter) in line and "s ago" in line and thief in line
    code, out = await _run(config, Request("show", fmt="json"))
    (row,) = orjson.loads(out)
    assert row["owner"] == owner and row["pending_owner"] == thief and row["counter"] == lease.counter
    assert row["position"] == [40, 2] and row["heartbeat"] > 0


async def test_dynamodb_set_is_refused_while_the_owner_renews(shared: Any) -> None:
    config, store = shared
    owner = new_owner_id()
    lease = await _owned(store, owner)
    waited: list[float] = []

    async def owner_renews_meanwhile(seconds: float) -> None:
        waited.append(seconds)
        await store.renew(lease)

    with pytest.raises(AdminError) as refused:
        await _run(config, Request("set", source="replay", position="10"), owner_renews_meanwhile)
    assert refused.value.exit_code == 4 and owner in str(refused.value) and "renewed within 1 s" in str(refused.value)
    assert waited == [1.0]  # lease_duration_seconds
    assert await store.load("replay") == {"": (40, 2)}


async def test_dynamodb_set_over_a_dead_owner_fences_it_off(shared: Any) -> None:
    config, store = shared
    owner = new_owner_id()
    lease = await _owned(store, owner)
    waited: list[float] = []

    async def owner_is_gone(seconds: float) -> None:
        waited.append(seconds)

    code, out = await _run(config, Request("set", source="replay", position="10:4"), owner_is_gone)
    assert code == 0 and waited == [1.0] and "40:2 -> 10:4" in out and "watching them" in out, out
    after = await store.get_lease("replay", "")
    assert (
        after is not None and after.position == (10, 4) and after.owner is None and after.counter == lease.counter + 1
    )
    with pytest.raises(LeaseLost):  # the paused owner cannot overwrite it
        await store.save_many("replay", {"": (41, 1)}, {"": lease})


async def test_dynamodb_force_skips_the_watch_loudly(shared: Any, capsys: pytest.CaptureFixture[str]) -> None:
    config, store = shared
    owner = new_owner_id()
    await _owned(store, owner)

    async def must_not_wait(seconds: float) -> None:
        raise AssertionError("--force must not wait")

    code, out = await _run(config, Request("rewind", source="replay", commits=10, force=True), must_not_wait)
    assert code == 0 and "40:2 -> 31:0" in out
    assert "WARNING: --force" in capsys.readouterr().err
    assert await store.load("replay") == {"": (31, 0)}


async def test_dynamodb_reset_and_a_set_on_a_source_never_run(shared: Any) -> None:
    config, store = shared
    code, out = await _run(config, Request("set", source="replay", position="5:1"))
    assert code == 0 and "- -> 5:1" in out
    assert await store.load("replay") == {"": (5, 1)}
    with pytest.raises(AdminError) as refused:
        await _run(config, Request("reset", source="replay"))
    assert "--yes" in str(refused.value)
    code, out = await _run(config, Request("reset", source="replay", yes=True))
    assert code == 0 and "deleted" in out
    assert await store.list_leases("replay") == []


def test_dynamodb_cli_refuses_a_live_owner_with_exit_4(
    moto_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the command, with the real watch (lease_duration_seconds = 1): an owner renewing every 0.2 s."""
    table = f"ckpt-{uuid.uuid4().hex[:10]}"
    config = _dynamodb_config(tmp_path, moto_server, table)

    async def scenario() -> tuple[int, str]:
        async with AsyncExitStack() as stack:
            store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
            owner = new_owner_id()
            lease = await _owned(store, owner)

            async def renew() -> None:
                while True:
                    await asyncio.sleep(0.2)
                    await store.renew(lease)

            renewer = asyncio.create_task(renew())
            try:
                code = await asyncio.to_thread(cli_main, ["checkpoint", "set", "--config", str(config), "9"])
            finally:
                renewer.cancel()
            return code, owner

    code, owner = asyncio.run(scenario())
    err = capsys.readouterr().err
    assert code == 4 and "refused" in err and owner in err, err


def test_on_a_neptune_stream_set_and_rewind_replay_from_the_commit_named(
    stand: NeptuneStand, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the Neptune-compatible stand: `set 4` reads commit 4 on (AT_SEQUENCE_NUMBER 4/1); after a full run,
    `rewind --commits 2` reads the last two commits again."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for n in range(1, 7):
        stand.stream.append_commit(
            [
                {
                    "op": "ADD",
                    "data": {
                        "id": f"v{n}",
                        "type": "vl",
                        "key": "label",
                        "value": {"value": "V", "dataType": "String"},
                    },
                },
                {
                    "op": "ADD",
                    "data": {"id": f"v{n}", "type": "vp", "key": "n", "value": {"value": n, "dataType": "Int"}},
                },
            ]
        )
    config = str(config_for(tmp_path, stand, "falkordb", daemon={"http_address": ""}))
    assert _cli(capsys, "checkpoint", "set", "--config", config, "4")[0] == 0
    run = run_cli("run", "--config", config, "--exit-when-idle")
    assert run.returncode == 0 and run.stdout.startswith("applied 6 changes"), run.stdout + run.stderr  # 4, 5, 6
    code, out, _ = _cli(capsys, "checkpoint", "show", "--config", config, "--format", "json")
    assert orjson.loads(out)[0]["position"] == [6, 2]
    code, out, err = _cli(capsys, "checkpoint", "rewind", "--config", config, "--commits", "2")
    assert code == 0 and "6:2 -> 5:0" in out, err
    run = run_cli("run", "--config", config, "--exit-when-idle")
    assert run.returncode == 0 and run.stdout.startswith("applied 4 changes"), run.stdout + run.stderr


async def test_an_operator_write_is_conditional_on_the_counter_seen(shared: Any) -> None:
    _, store = shared
    lease = await _owned(store, new_owner_id())
    for position, counter in (((1, 0), lease.counter - 1), (None, lease.counter - 1), ((1, 0), None)):
        with pytest.raises(LeaseLost):
            await store.overwrite("replay", "", position, counter)
    assert await store.load("replay") == {"": (40, 2)}
    await store.overwrite("replay", "", None, lease.counter)
    assert await store.get_lease("replay", "") is None
