"""Bootstrap of a DynamoDB source end to end: a table that already holds items when its stream is turned on is
copied (parallel Scan segments through the mapping rules) while it keeps being written, then
`graph-replicator run --exit-when-idle` streams from the handed-off shard positions, and the replica must equal
the graph the table's final contents describe.

* into the embedded FalkorDB (batched openCypher); the table size is `BOOTSTRAP_TEST_DYNAMODB_ITEMS` (5,000 in
  the suite; the issue's 50,000 is the same test with the variable set, see docs/bootstrap.md for its timings);
* into a Neptune target through the bulk loader (CSV in moto's S3, the stand's /loader), bare endpoints included
  (`BOOTSTRAP_TEST_DYNAMODB_LOADER_ITEMS`, 1,500 in the suite);
* the read budget and the position rules, unit by unit.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from daemon.bootstrap import Bootstrap, BootstrapResult
from daemon.bootstrap.dynamodb_reader import DynamoDBSnapshotReader, ReadBudget, open_dynamodb_snapshot_reader
from daemon.bootstrap.progress import Progress
from daemon.config import load_config
from daemon.deadletter import DeadLetterFile
from daemon.model import SHARD_END, SHARD_START
from tests.stand.bootstrap_graph import InterleavedReader
from tests.stand.comparator import assert_converged, read_falkordb_graph
from tests.stand.daemon_process import AWS_ENV
from tests.stand.dynamodb_daemon import replica, run_to_idle, social_config
from tests.stand.dynamodb_workload import SocialWorkload, create_table, enable_stream, expected_graph, scan
from tests.stand.harness import sink_config
from tests.stand.moto_process import MotoProcess
from tests.stand.neptune_endpoint import HIDDEN_LABEL, NeptuneStand

ITEMS = int(os.environ.get("BOOTSTRAP_TEST_DYNAMODB_ITEMS", "5000"))
LOADER_ITEMS = int(os.environ.get("BOOTSTRAP_TEST_DYNAMODB_LOADER_ITEMS", "1500"))
ROLE = "arn:aws:iam::123456789012:role/NeptuneLoadFromS3"
BUCKET = "bootstrap-dynamodb-tests"


def populated_table(moto: MotoProcess, items: int, seed: int) -> tuple[Any, SocialWorkload]:
    """A table holding `items` items before its stream is turned on, then a few writes the stream records."""
    moto.reset()
    client = moto.client("dynamodb")
    create_table(client, stream=False)
    workload = SocialWorkload(client, seed=seed, users=max(60, items // 5), posts=max(40, items // 10))
    workload.seed(items)
    enable_stream(client)
    workload.run(200)
    return client, workload


async def bootstrap_while_writing(config_path: Path, workload: SocialWorkload, writes_per_page: int) -> BootstrapResult:
    """Bootstrap in-process; after every page the reader hands over, `writes_per_page` operations hit the table."""
    config = load_config(config_path)

    async def write() -> None:
        await asyncio.to_thread(workload.run, workload.operations + writes_per_page)

    async def reader(stack: AsyncExitStack, cfg: Any, dead_letters: DeadLetterFile) -> InterleavedReader:
        inner = await open_dynamodb_snapshot_reader(
            stack, cfg, config.bootstrap, spool_dir=tmp_dir(config_path), dead_letters=dead_letters
        )
        return InterleavedReader(inner, write)

    bootstrap = Bootstrap(config, "social", reader_factory=reader, progress=Progress("social", tty=False))
    return await bootstrap.run()


def tmp_dir(config_path: Path) -> Path:
    path = config_path.parent / "spool"
    path.mkdir(exist_ok=True)
    return path


def checkpoints(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / "checkpoints.sqlite3") as conn:
        return dict(conn.execute("SELECT partition, position FROM checkpoints WHERE source = 'social'"))


@pytest.mark.slow
async def test_table_bootstrapped_while_written_then_streamed_equals_the_table(moto: MotoProcess, tmp_path: Path):
    client, workload = populated_table(moto, ITEMS, seed=31)
    config = social_config(tmp_path, moto, bootstrap={"read_page_size": max(100, ITEMS // 20), "scan_segments": 4})
    started = time.monotonic()
    result = await bootstrap_while_writing(config, workload, writes_per_page=max(10, ITEMS // 200))
    bootstrap_seconds = time.monotonic() - started

    assert result.method == "direct" and result.dangling_edges == 0 and result.dead_lettered == 0
    assert set(result.positions.values()) == {SHARD_START}, result.positions  # moto: one open shard
    assert set(checkpoints(tmp_path / "data").values()) == {orjson.dumps(list(SHARD_START)).decode()}
    assert result.vertices + result.edges >= ITEMS * 0.9
    workload.run(workload.operations + 300)  # and after the copy, before streaming

    started = time.monotonic()
    run_to_idle(config)
    stream_seconds = time.monotonic() - started
    expected = expected_graph(scan(client))
    assert any(not v.labels for v in expected.vertices.values())  # bare endpoints are part of the copy
    assert_converged(expected, replica(tmp_path / "data"))
    print(
        f"\n{ITEMS:,} items bootstrapped in {bootstrap_seconds:.1f} s, then streamed in {stream_seconds:.1f} s "
        f"({workload.operations:,} writes in all)\n{result.summary()}"
    )


@pytest.mark.slow
async def test_table_bootstrapped_through_the_loader_into_neptune(
    moto: MotoProcess, stand: NeptuneStand, tmp_path: Path
) -> None:
    client, workload = populated_table(moto, LOADER_ITEMS, seed=32)
    boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    stand.loader.s3_endpoint = moto.url
    config = social_config(
        tmp_path,
        moto,
        sink=sink_config("neptune", stand, batch_size=500),
        bootstrap={
            "s3_bucket": BUCKET,
            "s3_endpoint": moto.url,
            "iam_role_arn": ROLE,
            "loader_poll_seconds": 0.05,
            "read_page_size": max(200, LOADER_ITEMS // 20),
            "scan_segments": 3,
        },
    )
    result = await bootstrap_while_writing(config, workload, writes_per_page=max(10, LOADER_ITEMS // 200))
    assert result.method == "loader" and result.files >= 2 and result.loads
    assert result.residual_vertices > 0  # the bare endpoints (no label) are written through openCypher
    workload.run(workload.operations + 100)
    run_to_idle(config)
    expected = expected_graph(scan(client))
    got = read_falkordb_graph(
        stand.falkordb_graph(), hidden_labels=frozenset({HIDDEN_LABEL}), base_label=HIDDEN_LABEL, allow_unlabelled=True
    )
    assert_converged(expected, got)
    print(f"\n{LOADER_ITEMS:,} items bootstrapped through the loader\n{result.summary()}")


@pytest.mark.slow
def test_cli_bootstrap_of_a_dynamodb_source_then_run(moto: MotoProcess, tmp_path: Path) -> None:
    client, workload = populated_table(moto, 400, seed=33)
    config = social_config(tmp_path, moto, bootstrap={"scan_segments": 2, "scan_read_units_per_second": 1000})
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "bootstrap", "--config", str(config), "--source", "social"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **AWS_ENV},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "handed off position: shardId-" in done.stdout and "rows/s" in done.stdout
    workload.run(workload.operations + 150)
    run_to_idle(config)
    assert_converged(expected_graph(scan(client)), replica(tmp_path / "data"))


# -------------------------------------------------------------------------------------------- units


async def test_positions_closed_shards_finished_open_shards_from_their_start(tmp_path: Path) -> None:
    class Streams:
        async def describe_stream(self, **params: Any) -> dict[str, Any]:
            if "ExclusiveStartShardId" not in params:
                shards = [
                    {
                        "ShardId": "a",
                        "SequenceNumberRange": {"StartingSequenceNumber": "1", "EndingSequenceNumber": "9"},
                    },
                ]
                return {"StreamDescription": {"Shards": shards, "LastEvaluatedShardId": "a"}}
            shards = [{"ShardId": "b", "ParentShardId": "a", "SequenceNumberRange": {"StartingSequenceNumber": "10"}}]
            return {"StreamDescription": {"Shards": shards}}

    cfg = load_config(social_config(tmp_path, _FakeMoto())).source("social")
    reader = DynamoDBSnapshotReader(
        None, Streams(), cfg.model_copy(update={"table": None, "stream_arn": "arn:s"}), _settings(tmp_path)
    )
    assert await reader.position_before() == {"a": SHARD_END, "b": SHARD_START}
    assert SHARD_START < ("0" * 19 + "1" * 21,) < SHARD_END  # checkpoints move forward from it


async def test_read_budget_paces_pages_to_the_rate() -> None:
    budget = ReadBudget(100.0)
    started = time.monotonic()
    for _ in range(5):
        await budget.acquire()
        budget.spend(50.0)  # 250 units at 100/s: the first 100 were saved up, so about 1.5 s of waiting
    await budget.acquire()
    assert 1.3 <= time.monotonic() - started <= 2.5
    unlimited = ReadBudget(None)
    unlimited.spend(1e9)
    await asyncio.wait_for(unlimited.acquire(), 0.1)


class _FakeMoto:
    url = "http://127.0.0.1:9"


def _settings(tmp_path: Path) -> Any:
    return load_config(social_config(tmp_path, _FakeMoto())).bootstrap


def test_scan_rate_is_a_share_of_the_table_capacity_or_the_configured_rate(tmp_path: Path) -> None:
    cfg = load_config(social_config(tmp_path, _FakeMoto())).source("social")
    settings = _settings(tmp_path)
    reader = DynamoDBSnapshotReader(None, None, cfg, settings)
    assert reader._read_rate({"ProvisionedThroughput": {"ReadCapacityUnits": 400}}) == 200.0
    assert reader._read_rate({"OnDemandThroughput": {"MaxReadRequestUnits": 1000}}) == 500.0
    assert reader._read_rate({"ProvisionedThroughput": {"ReadCapacityUnits": 0}}) is None  # on demand, no maximum
    fixed = DynamoDBSnapshotReader(None, None, cfg, settings.model_copy(update={"scan_read_units_per_second": 25.0}))
    assert fixed._read_rate({"ProvisionedThroughput": {"ReadCapacityUnits": 400}}) == 25.0
