"""End to end: the real daemon process replicates a seeded Neptune change history from the test stand into each
target, under faults, crashes and drains, and the replica is compared with the reference model."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from tests.stand.comparator import assert_converged
from tests.stand.daemon_process import DaemonProcess
from tests.stand.harness import (
    config_for,
    load_history,
    metric_sum,
    metric_value,
    replica,
    status,
    wait_for,
)
from tests.stand.neptune_endpoint import FAULT_KINDS, NeptuneStand
from tests.stand.workload import ReferenceGraph, generate_history

pytestmark = pytest.mark.slow

HISTORY_SIZE = 20_000


@pytest.fixture(scope="module")
def history():
    return generate_history(seed=1, n_changes=HISTORY_SIZE)


@pytest.mark.parametrize("kind", ["falkordb", "neptune", "neptune-analytics"])
def test_history_converges_into_each_target(kind: str, stand: NeptuneStand, history, tmp_path: Path) -> None:
    load_history(stand, history)
    config = config_for(tmp_path, stand, kind, source={"limit": 5000})
    started = time.monotonic()
    daemon = DaemonProcess(config)
    assert daemon.wait(180) == 0, daemon.log_tail()
    elapsed = time.monotonic() - started
    assert_converged(history.reference, replica(kind, stand, tmp_path / "data"))
    print(
        f"{kind}: {history.n_records} changes in {elapsed:.2f} s ({history.n_records / elapsed:.0f} changes/s, "
        "daemon start-up included)"
    )


@pytest.mark.parametrize("kind", ["neptune", "neptune-analytics"])
def test_faults_leave_the_replica_identical_and_retries_visible(
    kind: str, stand: NeptuneStand, history, tmp_path: Path
) -> None:
    if kind == "neptune-analytics":
        history = generate_history(seed=4, n_changes=5000)  # the same code path; a smaller run keeps CI quick
    load_history(stand, history)
    # Every fault kind; ConflictException is Neptune Analytics' own.
    sink_faults = sorted(FAULT_KINDS if kind == "neptune-analytics" else FAULT_KINDS - {"conflict"})
    stand.faults.configure(rate=0.2, kinds=sink_faults, seed=7, paths=("opencypher", "queries"))
    config = config_for(tmp_path, stand, kind, source={"limit": 3000}, sink={"batch_size": 400})
    daemon = DaemonProcess(config, exit_when_idle=False)
    try:
        wait_for(lambda: status(daemon)["sources"][0]["caught_up"], 240, "the daemon to catch up")
        injected = dict(stand.faults.injected)
        _, metrics = daemon.get("/metrics")
    finally:
        daemon.terminate()
    assert daemon.wait(60) == 0, daemon.log_tail()
    text = metrics.decode()
    assert sum(injected.values()) > 10, injected
    assert metric_sum(text, "graph_replicator_retries_total") >= sum(n for k, n in injected.items() if k != "slow"), (
        injected,
        text,
    )
    assert metric_value(text, "graph_replicator_retries_total", sink="target", reason="conflict") > 0
    assert metric_value(text, "graph_replicator_records_applied_total", source="main", sink="target") == (
        history.n_records
    )
    assert metric_sum(text, "graph_replicator_records_dead_lettered_total") == 0
    assert metric_sum(text, "graph_replicator_task_restarts_total") == 0
    stand.faults.clear()
    assert_converged(history.reference, replica(kind, stand, tmp_path / "data"))


def test_stream_faults_are_survived(stand: NeptuneStand, history, tmp_path: Path) -> None:
    load_history(stand, history)
    stand.faults.configure(
        rate=0.3, kinds=["throttling", "server_error", "drop_connection", "slow"], seed=3, paths=("stream",)
    )
    config = config_for(tmp_path, stand, "falkordb", source={"limit": 1000})
    daemon = DaemonProcess(config)
    assert daemon.wait(180) == 0, daemon.log_tail()
    assert sum(stand.faults.injected.values()) > 3
    stand.faults.clear()
    assert_converged(history.reference, replica("falkordb", stand, tmp_path / "data"))


def test_sigkill_three_times_then_restart_converges(stand: NeptuneStand, history, tmp_path: Path) -> None:
    load_history(stand, history)
    # Small pages, windows and batches so the kills land mid-stream, inside windows and between checkpoints (a
    # source that is behind fills its windows up to `window_max_changes`).
    config = config_for(
        tmp_path,
        stand,
        "falkordb",
        source={"limit": 300, "queue_size": 2, "window_max_changes": 900},
        sink={"batch_size": 50},
    )
    rng = random.Random(11)
    positions = []
    for _ in range(3):
        daemon = DaemonProcess(config, exit_when_idle=False)
        wait_for(
            lambda d=daemon: (status(d)["sources"][0]["position"] or [0])[0] > (positions[-1][0] if positions else 0),
            60,
            "progress",
        )
        time.sleep(rng.uniform(0.0, 0.6))
        positions.append(status(daemon)["sources"][0]["position"])
        daemon.kill()
    final = DaemonProcess(config)
    assert final.wait(180) == 0, final.log_tail()
    assert positions == sorted(positions) and positions[0] < positions[-1]
    assert_converged(history.reference, replica("falkordb", stand, tmp_path / "data"))


def test_sigterm_drains_within_grace_and_loses_nothing(stand: NeptuneStand, history, tmp_path: Path) -> None:
    load_history(stand, history)
    stand.faults.configure(rate=1.0, kinds=["slow"], seed=1, paths=("stream",))  # keep it busy for a while
    config = config_for(
        tmp_path,
        stand,
        "neptune",
        source={"limit": 500},
        sink={"batch_size": 100},
        daemon={"drain_grace_seconds": 10.0},
    )
    daemon = DaemonProcess(config, exit_when_idle=False)
    wait_for(lambda: status(daemon)["sources"][0]["position"], 60, "a first checkpoint")
    stopped_at = time.monotonic()
    daemon.terminate()
    assert daemon.wait(30) == 0, daemon.log_tail()
    assert time.monotonic() - stopped_at < 10.0 + 2
    final_line = [line for line in daemon.log_lines() if line.get("event") == "stopped"]
    assert final_line and final_line[0]["checkpoints"]["main"], daemon.log_tail()
    stand.faults.clear()
    rerun = DaemonProcess(config)
    assert rerun.wait(180) == 0, rerun.log_tail()
    assert_converged(history.reference, replica("neptune", stand, tmp_path / "data"))


def test_poison_change_goes_to_dead_letters_and_the_rest_converges(stand: NeptuneStand, tmp_path: Path) -> None:
    history = generate_history(seed=5, n_changes=3000)
    # Poison one property value: a vertex property set in its own commit, so that its row is unique, and never
    # written again (a later value of the key could be coalesced with it, and the poisoned value never sent).
    written_after: dict[tuple[str, str], int] = {}
    for i, ops in enumerate(history.commits):
        for op in ops:
            written_after[(op["data"]["id"], op["data"]["key"])] = i
    op = next(
        op
        for i, ops in enumerate(history.commits)
        if i > 50 and len(ops) <= 2
        for op in ops
        if op["data"]["type"] == "vp"
        and op["op"] == "ADD"
        and op["data"]["value"]["dataType"] == "String"
        and written_after[(op["data"]["id"], op["data"]["key"])] == i
    )
    op["data"]["value"]["value"] = "POISON-7f3a"
    load_history(stand, history)
    stand.faults.poison("POISON-7f3a")
    config = config_for(tmp_path, stand, "neptune", sink={"batch_size": 200})
    daemon = DaemonProcess(config)
    assert daemon.wait(120) == 0, daemon.log_tail()
    lines = [orjson.loads(line) for line in (tmp_path / "data" / "dead-letter.jsonl").read_bytes().splitlines()]
    assert lines, "nothing was dead-lettered"
    assert any(line["change"].get("value") == "POISON-7f3a" for line in lines)
    assert all(
        line["stage"] == "apply" and line["position"] and "BadRequestException" in line["reason"] for line in lines
    )
    dead_positions = {tuple(line["position"]) for line in lines}
    # exactly the poisoned change: the other changes coalesced with it into one mutation are applied
    assert [line["change"].get("value") for line in lines] == ["POISON-7f3a"]
    expected = ReferenceGraph(strict=False)
    for record in history.records():
        position = (record["eventId"]["commitNum"], record["eventId"]["opNum"])
        if position not in dead_positions:
            expected.apply(record)
    stand.faults.clear()
    assert_converged(expected, replica("neptune", stand, tmp_path / "data"))


def test_expired_checkpoint_stops_the_source_loudly(stand: NeptuneStand, tmp_path: Path) -> None:
    history = generate_history(seed=2, n_changes=2000)
    half = len(history.commits) // 2
    load_history(stand, history, slice(0, half))
    config = config_for(tmp_path, stand, "falkordb")
    assert DaemonProcess(config).wait(120) == 0
    load_history(stand, history, slice(half, None))
    stand.stream.trim_before(half + 10)  # the checkpoint (end of the first half) is now older than retention
    daemon = DaemonProcess(config, exit_when_idle=False)
    wait_for(
        lambda: metric_value(daemon.get("/metrics")[1].decode(), "graph_replicator_stream_expired", source="main") == 1,
        30,
        "the expiry metric",
    )
    # (the source sets the metric as it stops; the supervisor marks the pipeline failed at its next check)
    wait_for(lambda: (r := daemon.get("/readyz"))[0] == 503 and b"expired" in r[1], 10, "/readyz to say expired")
    daemon.terminate()
    assert daemon.wait(30) == 3
    errors = [line for line in daemon.log_lines() if line.get("level") == "error"]
    assert any("Bootstrap the target again" in line.get("error", "") for line in errors), daemon.log_tail()


ESCAPING_NAMES = [
    "Back`tick",
    "x`) DETACH DELETE (n",
    "quote'd",
    'dq"x',
    "with space",
    "MATCH",
    "RETURN",
    "日本",
    "%60",
    "a:b",
    "`",
    "emoji 🔥",
]


@pytest.mark.parametrize("kind", ["falkordb", "neptune"])
def test_names_from_data_round_trip_without_being_interpreted(kind: str, stand: NeptuneStand, tmp_path: Path) -> None:
    expected = ReferenceGraph()
    commits = []
    for i, name in enumerate(ESCAPING_NAMES):
        vid, other = f"v{i}", f"w{i}"
        ops = [
            {
                "op": "ADD",
                "data": {"id": vid, "type": "vl", "key": "label", "value": {"value": name, "dataType": "String"}},
            },
            {
                "op": "ADD",
                "data": {"id": vid, "type": "vp", "key": name, "value": {"value": name, "dataType": "String"}},
            },
            {
                "op": "ADD",
                "data": {"id": other, "type": "vl", "key": "label", "value": {"value": "Plain", "dataType": "String"}},
            },
            {
                "op": "ADD",
                "data": {
                    "id": f"e{i}",
                    "type": "e",
                    "key": "label",
                    "value": {"value": name, "dataType": "String"},
                    "from": vid,
                    "to": other,
                },
            },
            {"op": "ADD", "data": {"id": f"e{i}", "type": "ep", "key": name, "value": {"value": i, "dataType": "Int"}}},
        ]
        commits.append(ops)
        expected.apply_all(ops)
    for ops in commits:
        stand.stream.append_commit(ops)
    daemon = DaemonProcess(config_for(tmp_path, stand, kind))
    assert daemon.wait(60) == 0, daemon.log_tail()
    assert not (tmp_path / "data" / "dead-letter.jsonl").exists()
    assert_converged(expected, replica(kind, stand, tmp_path / "data"))
