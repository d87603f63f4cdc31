"""Operations end to end, with the real daemon process against the Neptune-compatible stand: every catalogued
metric in a scrape taken during a replication run, SIGTERM under load (readiness false first, in-flight work
finished and checkpointed, exit 0 within the grace period), and the systemd unit's own command lines run with a
notification socket (READY=1, periodic WATCHDOG=1, STOPPING=1)."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon import __version__
from daemon.checkpoint import SQLiteCheckpointStore
from daemon.observability import Metrics
from tests.stand.comparator import assert_converged
from tests.stand.daemon_process import AWS_ENV, DaemonProcess
from tests.stand.harness import config_for, load_history, metric_value, replica, status, wait_for
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import generate_history
from tests.test_operations import NotifyListener, seconds, unit_entries

pytestmark = pytest.mark.slow


def without_samples_in_a_neptune_run(name: str) -> bool:
    """Families a `run` with Neptune sources has no sample of (docs/metrics.md): shard counts are DynamoDB's, the
    bootstrap command sets its own, the embedded engine's belong to a `falkordb` sink without `url`, and the
    lease ones to the DynamoDB checkpoint store (tests/test_active_standby.py and tests/test_leases.py read them),
    the event ones to event sinks (tests/test_events.py runs those)."""
    return name in ("graph_replicator_shards", "graph_replicator_leases_held") or name.startswith(
        (
            "graph_replicator_bootstrap_",
            "graph_replicator_engine_",
            "graph_replicator_lease_",
            "graph_replicator_events_",
            "graph_replicator_event_",
        )
    )


class Scrape(dict):
    """Sample name -> {sorted labels: value}, parsed from one /metrics answer (which must parse); `text` is the
    answer itself."""

    text: str


def scrape(daemon: DaemonProcess) -> Scrape:
    code, body = daemon.get("/metrics")
    assert code == 200
    samples = Scrape()
    samples.text = body.decode()
    for family in text_string_to_metric_families(samples.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def total(samples: dict, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, {}).items() if set(match.items()) <= set(labels))


def test_every_catalogued_metric_is_scraped_with_sensible_values(stand: NeptuneStand, tmp_path: Path) -> None:
    history = generate_history(seed=21, n_changes=4000)
    load_history(stand, history)
    last_commit, last_op = stand.stream.last_event_id()
    # Slow stream reads (and a few failing ones) stretch the catch-up so that it can be watched; a few throttled
    # target calls make the retry and error counters count something known.
    stand.faults.configure(rate=1.0, kinds=["slow", "slow", "slow", "server_error"], seed=5, paths=("stream",))
    # (each path draws from its own seeded generator: seed 5 fails the 6th stream read, seed 11 throttles the 2nd,
    # 6th and 10th statement, whatever the other path sends in between)
    stand.faults.configure(rate=0.1, kinds=["throttling"], seed=11, paths=("opencypher",))
    config = config_for(
        tmp_path, stand, "neptune", source={"limit": 400, "limit_max": 400, "queue_size": 4}, sink={"batch_size": 200}
    )  # (fixed pages: many slow reads, some failing)
    started = time.time()
    daemon = DaemonProcess(config, exit_when_idle=False)
    try:
        # --- during the catch-up
        during = wait_for(
            lambda: (
                (s := scrape(daemon))
                and value(s, "graph_replicator_records_read_total", source="main") > 0
                and value(s, "graph_replicator_stream_latency_seconds", source="main", partition="") > 0
                and value(s, "graph_replicator_stream_head_commit_number", source="main") == last_commit
                and s
            ),
            60,
            "a scrape in the middle of the catch-up",
        )
        assert not status(daemon)["sources"][0]["caught_up"]
        # the history's commits are from 2023: behind by years while catching up
        assert value(during, "graph_replicator_stream_latency_seconds", source="main", partition="") > 3600
        assert value(during, "graph_replicator_stream_head_commit_number", source="main") == last_commit
        assert value(during, "graph_replicator_commits_behind_head", source="main") > 0

        # --- caught up
        wait_for(lambda: status(daemon)["sources"][0]["caught_up"], 120, "the catch-up")
        injected = dict(stand.faults.injected)
        stand.faults.clear()
        after = wait_for(
            lambda: (
                (s := scrape(daemon))
                and value(s, "graph_replicator_checkpoint_commit_number", source="main", partition="") == last_commit
                and s
            ),
            30,
            "the final checkpoint in the metrics",
        )
        check_catalogue(after)
        check_caught_up(after, history.n_records, (last_commit, last_op), started, injected)

        # --- new changes committed now: applied within seconds, then the gauge is back at 0
        fresh = generate_history(seed=22, n_changes=300, start_commit_ms=int(time.time() * 1000))
        load_history(stand, fresh)
        head = stand.stream.last_event_id()
        e2e_before = value(after, "graph_replicator_end_to_end_latency_seconds_bucket", source="main", le="30.0")
        final = wait_for(
            lambda: (
                (s := scrape(daemon))
                and value(s, "graph_replicator_checkpoint_commit_number", source="main", partition="") == head[0]
                and status(daemon)["sources"][0]["caught_up"]
                and s
            ),
            60,
            "the new commits",
        )
        n = history.n_records + fresh.n_records
        read = value(final, "graph_replicator_records_read_total", source="main")
        applied = value(final, "graph_replicator_records_applied_total", source="main", sink="target")
        skipped = total(final, "graph_replicator_records_skipped_total", source="main")
        assert read == n and applied + skipped == n, (read, applied, skipped, n)
        assert value(final, "graph_replicator_stream_latency_seconds", source="main", partition="") == 0
        assert value(final, "graph_replicator_commits_behind_head", source="main") == 0
        fresh_commits = len(set(fresh.commit_ms))
        e2e_after = value(final, "graph_replicator_end_to_end_latency_seconds_bucket", source="main", le="30.0")
        assert e2e_after - e2e_before == fresh_commits, "every fresh commit applied within 30 s of its commit time"
    finally:
        daemon.terminate()
    assert daemon.wait(60) == 0, daemon.log_tail()


def check_catalogue(samples: Scrape) -> None:
    """Every metric family of the catalogue is in the scrape, and all but the shard and bootstrap ones have samples."""
    text = samples.text
    catalogue = {family.name: family.type for family in Metrics().registry.collect()}
    for name, kind in catalogue.items():
        exposed = name + {"counter": "_total", "info": "_info"}.get(kind, "")
        assert f"# TYPE {exposed} " in text, f"{exposed} missing from /metrics"
        if without_samples_in_a_neptune_run(name):
            continue
        sample = name + "_count" if kind == "histogram" else exposed
        assert samples.get(sample), f"{exposed}: no samples"


def check_caught_up(
    samples: dict, n_records: int, head: tuple[int, int], started: float, injected: dict[str, int]
) -> None:
    v = lambda name, **labels: value(samples, name, **labels)  # noqa: E731
    src, part, sink = {"source": "main"}, {"source": "main", "partition": ""}, {"sink": "target"}
    # counters match what was replicated
    assert v("graph_replicator_records_read_total", **src) == n_records
    applied = v("graph_replicator_records_applied_total", **src, **sink)
    skipped = total(samples, "graph_replicator_records_skipped_total", **src)
    assert applied + skipped == n_records and applied > 0.9 * n_records
    assert total(samples, "graph_replicator_records_dead_lettered_total") == 0
    # latency: 0 once caught up and idle; the end-to-end histogram saw the old commits
    assert v("graph_replicator_stream_latency_seconds", **part) == 0
    assert v("graph_replicator_end_to_end_latency_seconds_count", **src) > 0
    assert v("graph_replicator_end_to_end_latency_seconds_sum", **src) > 3600
    # positions
    commit = v("graph_replicator_checkpoint_commit_number", **part)
    assert (commit, v("graph_replicator_checkpoint_op_number", **part)) == head
    assert v("graph_replicator_stream_head_commit_number", **src) == head[0]
    assert v("graph_replicator_commits_behind_head", **src) == 0
    assert started <= v("graph_replicator_last_checkpoint_timestamp_seconds", **src) <= time.time()
    # sources and sinks
    polls = v("graph_replicator_source_polls_total", **src)
    assert polls >= n_records / 400 and 1 <= v("graph_replicator_source_empty_polls_total", **src) < polls
    errors = v("graph_replicator_source_errors_total", **src, error_type="server_error")
    assert 0 < errors <= injected.get("server_error", 0)
    retries = v("graph_replicator_retries_total", **sink, reason="throttling")
    assert retries == injected["throttling"] > 0, (retries, injected)
    assert v("graph_replicator_sink_errors_total", **sink, error_type="throttling", stage="apply") == retries
    batches = v("graph_replicator_batch_duration_seconds_count", **sink)
    assert batches == v("graph_replicator_batch_rows_count", **sink) > 0
    assert v("graph_replicator_batch_rows_sum", **sink) >= batches
    assert v("graph_replicator_inflight_batches", **sink) == 0
    assert v("graph_replicator_queue_depth", **src) == 0 and v("graph_replicator_queue_capacity", **src) == 4
    assert v("graph_replicator_source_up", **src) == v("graph_replicator_sink_up", **sink) == 1
    assert v("graph_replicator_stream_expired", **src) == 0
    assert total(samples, "graph_replicator_task_restarts_total") == 0
    assert v("graph_replicator_ready") == 1
    assert 0 <= v("graph_replicator_event_loop_lag_seconds") < 1
    # process and build
    assert total(samples, "graph_replicator_build_info", version=__version__) == 1
    assert v("process_resident_memory_bytes") > 10_000_000
    assert started - 5 <= v("process_start_time_seconds") <= time.time()
    assert v("process_cpu_seconds_total") > 0


def test_sigterm_under_load_turns_readiness_false_first_and_finishes_the_window(
    stand: NeptuneStand, tmp_path: Path
) -> None:
    history = generate_history(seed=23, n_changes=6000)
    load_history(stand, history)
    grace = 10.0
    # A slow target (one statement in ten takes 0.3-1 s): each window (at most 150 changes, which the planner
    # turns into a few dozen statements run layer after layer) spends about a second in flight.
    stand.faults.configure(rate=0.1, kinds=["slow"], seed=2, paths=("opencypher",))
    config = config_for(
        tmp_path,
        stand,
        "neptune",
        source={"limit": 150, "queue_size": 2, "window_max_changes": 150},
        sink={"batch_size": 100, "concurrency": 2},
        daemon={"drain_grace_seconds": grace},
    )
    daemon = DaemonProcess(config, exit_when_idle=False)
    try:
        port = daemon.http_port()

        def get(path: str) -> tuple[int, bytes] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return None  # the server closed: the process is exiting

        wait_for(lambda: (get("/readyz") or (0,))[0] == 200, 60, "readiness")
        wait_for(
            lambda: (
                metric_value(get("/metrics")[1].decode(), "graph_replicator_inflight_batches", sink="target") > 0
                and status(daemon)["sources"][0]["position"]
            ),
            60,
            "batches in flight after a first checkpoint",
        )
        before = status(daemon)["sources"][0]["position"]
    except BaseException:
        daemon.kill()  # never leave a daemon behind a failed wait
        raise
    daemon.terminate()
    stopped_at = time.monotonic()
    answers = []
    while daemon.proc.poll() is None and time.monotonic() - stopped_at < grace + 5:
        answer = get("/readyz")
        if answer is not None:
            answers.append((time.monotonic() - stopped_at, answer[0], orjson.loads(answer[1])))
        time.sleep(0.02)
    assert daemon.wait(grace + 5) == 0, daemon.log_tail()
    elapsed = time.monotonic() - stopped_at
    assert elapsed < grace + 2, elapsed

    # readiness went false at once and never came back, while the process was still finishing its work
    assert answers, "no /readyz answer after SIGTERM"
    first_503 = next(i for i, (_, code, _) in enumerate(answers) if code == 503)
    assert answers[first_503][0] < 0.5, answers[:5]
    assert all(code == 503 and "draining" in body["reasons"] for _, code, body in answers[first_503:])
    assert len(answers) - first_503 >= 2, "readiness should be false before the process exits, not only at exit"

    events = [line.get("event") for line in daemon.log_lines()]
    assert events.index("drain requested: finishing in-flight batches") < events.index("stopped")
    assert not any("grace period over" in (e or "") for e in events), "the window in flight was abandoned"
    (stopped,) = [line for line in daemon.log_lines() if line.get("event") == "stopped"]
    final = stopped["checkpoints"]["main"]
    assert final > before, "the window in flight at SIGTERM was applied and checkpointed"
    store = SQLiteCheckpointStore(tmp_path / "data" / "checkpoints.sqlite3")
    try:
        assert list(store.load("main")[""]) == final, "the checkpoint store holds what the log says"
    finally:
        store.close()
    stand.faults.clear()
    rerun = DaemonProcess(config)
    assert rerun.wait(180) == 0, rerun.log_tail()
    resumed = [line for line in rerun.log_lines() if line.get("event") == "stopped"]
    assert resumed and resumed[0]["checkpoints"]["main"] >= final
    assert_converged(history.reference, replica("neptune", stand, tmp_path / "data"))


def test_systemd_unit_command_lines_notify_ready_watchdog_and_stopping(stand: NeptuneStand, tmp_path: Path) -> None:
    """Run ExecStartPre and ExecStart as the unit has them (paths moved under tmp_path, the unit's Environment=
    applied), with a NOTIFY_SOCKET the test listens on and a watchdog of 0.2 s."""
    history = generate_history(seed=24, n_changes=800)
    load_history(stand, history)
    config = config_for(tmp_path, stand, "falkordb")
    state = tmp_path / "state"
    state.mkdir()
    substitutions = {
        "/opt/graph-replicator/bin/graph-replicator": str(Path(sys.executable).parent / "graph-replicator"),
        "/etc/graph-replicator/config.toml": str(config),
        "/var/lib/graph-replicator": str(state),
    }

    def concrete(value: str) -> str:
        for old, new in substitutions.items():
            value = value.replace(old, new)
        return value

    service = {}
    environment = {}
    for section, key, raw in unit_entries():
        if section != "Service":
            continue
        if key == "Environment":
            name, _, val = concrete(raw).partition("=")
            environment[name] = val
        else:
            service[key] = concrete(raw)
    assert service["Type"] == "notify"
    env = {**os.environ, **AWS_ENV, **environment}
    pre = subprocess.run(shlex.split(service["ExecStartPre"]), env=env, capture_output=True, timeout=60)
    assert pre.returncode == 0, pre.stderr.decode()

    listener = NotifyListener(tmp_path, abstract=True)
    # the unit's WatchdogSec, scaled down so the test sees many pings; 1 s leaves a loaded machine (a busy event
    # loop, 2 cores shared by parallel suites) room to answer late without tripping it
    watchdog_usec = 1_000_000
    assert seconds(service["WatchdogSec"]) * 1_000_000 > watchdog_usec
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        shlex.split(service["ExecStart"]),
        env={**env, "NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": str(watchdog_usec)},
        cwd=service["WorkingDirectory"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: listener.with_field("READY"), 60, "READY=1")
        _, ready_pid, ready = listener.with_field("READY")[0]
        assert ready_pid == proc.pid, "READY must come from the main process (NotifyAccess=main)"
        assert ready["READY"] == "1"
        port = _logged_port(tmp_path / "daemon.log")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200, "READY=1 is sent once the HTTP server listens"
        wait_for(lambda: "ready" == _status(listener).split(" |")[0], 60, "STATUS=ready once caught up")
        caught_up_at = time.monotonic()  # (the catch-up before it is CPU-bound: on a loaded machine a ping may be late)

        def recent_pings() -> list[float]:
            return [t for t, pid, f in listener.with_field("WATCHDOG") if pid == proc.pid and t > caught_up_at]

        wait_for(lambda: len(recent_pings()) >= 6, 30, "6 WATCHDOG=1 pings once caught up")
        recent = recent_pings()
        gaps = sorted(b - a for a, b in itertools.pairwise(recent))
        assert abs(gaps[len(gaps) // 2] - watchdog_usec / 2e6) < 0.05, f"pings every WATCHDOG_USEC/2: {gaps}"
        assert gaps[-1] < watchdog_usec / 1e6, f"a gap as long as WATCHDOG_USEC would trip the watchdog: {gaps}"
        # the embedded engine (a child process) did not inherit the notification socket
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "the embedded FalkorDB engine should be running"
        for child in children:
            assert b"NOTIFY_SOCKET=" not in Path(f"/proc/{child}/environ").read_bytes()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        listener.poll(0.2)
        (stopping,) = [f for _, pid, f in listener.with_field("STOPPING") if pid == proc.pid]
        assert stopping["STOPPING"] == "1" and int(stopping["EXTEND_TIMEOUT_USEC"]) > 20_000_000
        assert seconds(service["TimeoutStopSec"]) * 1_000_000 > int(stopping["EXTEND_TIMEOUT_USEC"]) - 10_000_000
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        listener.close()
    assert (state / "checkpoints.sqlite3").exists(), "the unit's DATA_DIR holds the checkpoints"
    assert_converged(history.reference, replica("falkordb", stand, state))


def _status(listener: NotifyListener) -> str:
    statuses = listener.with_field("STATUS")
    return statuses[-1][2]["STATUS"] if statuses else ""


def _logged_port(log_path: Path) -> int:
    def find() -> int | None:
        for line in log_path.read_bytes().splitlines():
            if b"http server listening" in line:
                return int(re.search(rb":(\d+)\"", line).group(1))
        return None

    return wait_for(find, 30, "the HTTP address in the log")
