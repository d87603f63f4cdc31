"""End to end with the embedded engine: the engine is SIGKILLed mid-run and the daemon reconnects to its
replacement by itself; `graph-replicator query` reads a running daemon's engine without harming it, and a
second `run` on the same data directory is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from daemon.engine import read_engine_state
from tests.stand.comparator import assert_converged
from tests.stand.daemon_process import AWS_ENV, DaemonProcess
from tests.stand.harness import config_for, load_history, metric_value, replica, status, wait_for
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import generate_history

pytestmark = pytest.mark.slow


def _engine_pid(data_dir: Path) -> int:
    return int((data_dir / "falkordb" / "target" / "engine.pid").read_text())


def _caught_up_at(daemon: DaemonProcess, head: int) -> bool:
    source = status(daemon)["sources"][0]
    return bool(source["caught_up"] and source["position"] and source["position"][0] >= head)


def test_engine_killed_mid_run_is_restarted_and_the_replica_converges(stand: NeptuneStand, tmp_path: Path) -> None:
    history = generate_history(seed=21, n_changes=6000)
    load_history(stand, history)
    # small windows (a source that is behind fills them up to `window_max_changes`): checkpoints before the end
    source = {"limit": 300, "queue_size": 2, "window_max_changes": 900}
    config = config_for(tmp_path, stand, "falkordb", source=source, sink={"batch_size": 50})
    daemon = DaemonProcess(config, exit_when_idle=False)
    try:
        wait_for(lambda: (status(daemon)["sources"][0]["position"] or [0])[0] > 0, 60, "a first checkpoint")
        killed = _engine_pid(tmp_path / "data")
        assert not status(daemon)["sources"][0]["caught_up"], "the run ended before the kill: make it longer"
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: _caught_up_at(daemon, len(history.commits)), 120, "the daemon to catch up")
        _, metrics = daemon.get("/metrics")
        assert _engine_pid(tmp_path / "data") != killed
    finally:
        daemon.terminate()
    assert daemon.wait(60) == 0, daemon.log_tail()
    text = metrics.decode()
    assert metric_value(text, "graph_replicator_engine_restarts_total", sink="target") == 1
    assert metric_value(text, "graph_replicator_engine_recovery_seconds_count", sink="target") == 1
    restarted = [line for line in daemon.log_lines() if line.get("event") == "embedded engine restarted"]
    assert restarted and restarted[0]["recovery_seconds"] < 30, daemon.log_tail()
    assert_converged(history.reference, replica("falkordb", stand, tmp_path / "data"))


def _query(config: Path, statement: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "query", "--config", str(config), "--format", "json", statement],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **AWS_ENV},
    )


def test_query_reads_a_running_daemons_engine_without_harming_it(stand: NeptuneStand, tmp_path: Path) -> None:
    history = generate_history(seed=22, n_changes=3000)
    half = len(history.commits) // 2
    load_history(stand, history, slice(0, half))
    config = config_for(tmp_path, stand, "falkordb")
    data_dir = tmp_path / "data"
    daemon = DaemonProcess(config, exit_when_idle=False)
    try:
        wait_for(lambda: _caught_up_at(daemon, half), 60, "the first half")
        engine = read_engine_state(data_dir / "falkordb" / "target")
        assert engine is not None and engine.pid == _engine_pid(data_dir)

        result = _query(config, "MATCH (n:Replicated) RETURN count(n) AS c")
        assert result.returncode == 0, result.stderr
        assert orjson.loads(result.stdout)["c"] > 0 and "read-only" in result.stderr
        write = _query(config, "CREATE (:Intruder)")
        assert write.returncode == 1 and "query failed" in write.stderr, write.stderr

        second = DaemonProcess(config)
        assert second.wait(60) == 4, second.log_tail()
        refused = second.log_tail()
        assert str(data_dir) in refused and f"pid {daemon.proc.pid}" in refused, refused

        # The daemon and its engine are untouched: the same engine process applies the second half.
        load_history(stand, history, slice(half, None))
        wait_for(lambda: _caught_up_at(daemon, len(history.commits)), 60, "the second half")
        assert _engine_pid(data_dir) == engine.pid
    finally:
        daemon.terminate()
    assert daemon.wait(60) == 0, daemon.log_tail()
    assert_converged(history.reference, replica("falkordb", stand, data_dir))
