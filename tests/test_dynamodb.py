"""The DynamoDB source end to end: moto in server mode, the shipped `config/dynamodb-social.toml` rules, the
real daemon as a subprocess, the replica read back from the embedded FalkorDB and compared with the graph the
table's final contents describe."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from tests.stand.comparator import assert_converged
from tests.stand.daemon_process import DaemonProcess
from tests.stand.dynamodb_daemon import replica, run_to_idle, social_config
from tests.stand.dynamodb_workload import TABLE, SocialWorkload, create_table, expected_graph, scan
from tests.stand.harness import metric_value, wait_for
from tests.stand.moto_process import MotoProcess


@pytest.fixture
def table(moto: MotoProcess):
    moto.reset()
    client = moto.client("dynamodb")
    create_table(client)
    return client


@pytest.mark.slow
def test_ten_thousand_operations_converge_into_falkordb(table, moto: MotoProcess, tmp_path: Path) -> None:
    workload = SocialWorkload(table, seed=7)
    workload.run(10_000)
    expected = expected_graph(scan(table))
    assert len(expected.edges) > 1000 and any(not v.labels for v in expected.vertices.values())

    started = time.monotonic()
    daemon = run_to_idle(social_config(tmp_path, moto))
    elapsed = time.monotonic() - started
    assert_converged(expected, replica(tmp_path / "data"))
    summary = [line for line in daemon.log_lines() if line.get("event") == "run summary"]
    print(f"\n10,000 DynamoDB operations replicated in {elapsed:.1f} s (process start included)", summary[-1:])
    assert not (tmp_path / "data" / "dead-letter.jsonl").exists()

    # A second run resumes from the shard checkpoint: nothing new, same graph.
    run_to_idle(social_config(tmp_path, moto))
    assert_converged(expected, replica(tmp_path / "data"))


def records_read(daemon: DaemonProcess) -> float:
    return metric_value(daemon.get("/metrics")[1].decode(), "graph_replicator_records_read_total", source="social")


@pytest.mark.slow
def test_sigkill_mid_stream_three_times_then_identical(table, moto: MotoProcess, tmp_path: Path) -> None:
    workload = SocialWorkload(table, seed=11)
    workload.run(4_000)
    config = social_config(tmp_path, moto, window_max_changes=300, limit=200)
    rng = random.Random(3)
    for _ in range(3):
        daemon = DaemonProcess(config, exit_when_idle=False)
        port = daemon.http_port()
        assert port
        wait_for(lambda d=daemon: records_read(d) > 0, 60, "the daemon to read records")
        time.sleep(rng.uniform(0.0, 1.5))
        daemon.kill()
        workload.run(workload.operations + 700)  # the table keeps changing while the daemon is down
    run_to_idle(config)
    assert_converged(expected_graph(scan(table)), replica(tmp_path / "data"))


def test_keys_only_stream_reads_current_items(moto: MotoProcess, tmp_path: Path) -> None:
    moto.reset()
    client = moto.client("dynamodb")
    create_table(client, view_type="KEYS_ONLY")
    SocialWorkload(client, seed=5).run(1_500)
    run_to_idle(social_config(tmp_path, moto))
    assert_converged(expected_graph(scan(client)), replica(tmp_path / "data"))


def test_unmatched_items_are_counted_and_unmappable_ones_dead_lettered(
    table, moto: MotoProcess, tmp_path: Path
) -> None:
    config = social_config(tmp_path, moto)
    config.write_text(
        config.read_text().replace(
            'vertex = { label = "Post", id = "post:{PK[1]}" }',
            'vertex = { label = "Post", id = "post:{PK[1]}" }\nrequired = ["author"]',
        )
    )
    table.put_item(TableName=TABLE, Item={"PK": {"S": "CONFIG#1"}, "SK": {"S": "SETTINGS"}, "x": {"N": "1"}})
    table.put_item(TableName=TABLE, Item={"PK": {"S": "POST#p1"}, "SK": {"S": "POST"}, "text": {"S": "no author"}})
    table.put_item(TableName=TABLE, Item={"PK": {"S": "USER#ok"}, "SK": {"S": "PROFILE"}, "name": {"S": "Ok"}})
    daemon = DaemonProcess(config, exit_when_idle=False)
    try:
        daemon.http_port()
        wait_for(lambda: daemon.get("/status")[1].count(b'"caught_up": true'), 60, "the source to catch up")
        metrics = daemon.get("/metrics")[1].decode()
    finally:
        daemon.terminate()
        assert daemon.wait(30) == 0, daemon.log_tail()
    assert metric_value(metrics, "graph_replicator_records_skipped_total", source="social", reason="no_rule") == 1
    assert (
        metric_value(metrics, "graph_replicator_records_dead_lettered_total", source="social", stage="translate") == 1
    )
    (line,) = (tmp_path / "data" / "dead-letter.jsonl").read_text().splitlines()
    entry = orjson.loads(line)
    assert entry["stage"] == "translate" and entry["partition"].startswith("shardId-")
    assert "rule 'post'" in entry["reason"] and "'author'" in entry["reason"], entry["reason"]
    assert entry["record"]["dynamodb"]["Keys"]["PK"] == {"S": "POST#p1"} and entry["position"]
    graph = replica(tmp_path / "data")
    assert set(graph.vertices) == {"user:ok"} and graph.vertices["user:ok"].props == {"displayName": "Ok"}
