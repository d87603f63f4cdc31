"""Active/standby on the DynamoDB lease table: real daemon processes run one config with a Neptune source (the
stand), moto holds the lease table. Exactly one applies; the other stands by and takes over after a SIGKILL
(lease expiry) or a SIGTERM (released at drain), resuming from the checkpoint in the table.

Lease timings are short so the tests take seconds: a dead holder's lease is taken within lease_duration +
take_interval of its last renewal."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.stand.comparator import assert_converged
from tests.stand.daemon_process import DaemonProcess, write_config
from tests.stand.harness import (
    add_lease_table,
    load_history,
    metric_value,
    neptune_source,
    replica,
    sink_config,
    status,
    wait_for,
)
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import generate_history

LEASE_DURATION, RENEW_INTERVAL, TAKE_INTERVAL, MARGIN = 3.0, 0.5, 0.2, 0.5


@pytest.fixture(scope="module")
def history():
    return generate_history(seed=13, n_changes=4000)


def _configs(tmp_path: Path, stand: NeptuneStand, moto_server: str, **source: object) -> list[Path]:
    """Two configs for two instances: the same source, sink and lease table, their own data directories (each
    process locks its own); only `data_dir` differs, as on two hosts."""
    table = f"leases-{uuid.uuid4().hex[:8]}"
    return [
        add_lease_table(
            write_config(
                tmp_path / f"{name}.toml",
                data_dir=tmp_path / f"data-{name}",
                source=neptune_source(stand, **source),
                sink=sink_config("neptune", stand, batch_size=50),
            ),
            moto_server,
            table,
            lease_duration_seconds=LEASE_DURATION,
            renew_interval_seconds=RENEW_INTERVAL,
            take_interval_seconds=TAKE_INTERVAL,
            fencing_margin_seconds=MARGIN,
        )
        for name in ("a", "b")
    ]


def _state(daemon: DaemonProcess) -> dict:
    return status(daemon)["sources"][0]


def _start_pair(configs: list[Path]) -> tuple[DaemonProcess, DaemonProcess]:
    """A takes the lease and applies; then B starts and stands by, ready."""
    a = DaemonProcess(configs[0], exit_when_idle=False)
    b = None
    try:
        wait_for(lambda: _state(a)["changes_applied"] > 0, 30, "A to take the lease and apply")
        b = DaemonProcess(configs[1], exit_when_idle=False)
        wait_for(lambda: _state(b)["state"] == "standby" and status(b)["ready"], 30, "B to stand by, ready")
        assert _state(a)["state"] != "standby"
        _, metrics_a = a.get("/metrics")
        _, metrics_b = b.get("/metrics")
        assert metric_value(metrics_a.decode(), "graph_replicator_lease_held", source="main") == 1
        assert metric_value(metrics_b.decode(), "graph_replicator_lease_held", source="main") == 0
        time.sleep(1.0)  # B keeps standing by while A holds the lease (its renewals keep the counter moving)
        assert _state(b)["state"] == "standby" and _state(b)["changes_applied"] == 0
        # Each instance's /status names its owner id and the lease as its last take round saw it.
        owner_a, owner_b = _state(a)["owner_id"], _state(b)["owner_id"]
        assert owner_a and owner_b and owner_a != owner_b
        (lease_a,) = _state(a)["leases"]
        assert lease_a["partition"] == "" and lease_a["owner"] == owner_a and lease_a["held_by_me"]
        (lease_b,) = _state(b)["leases"]
        assert lease_b["owner"] == owner_a and not lease_b["held_by_me"] and lease_b["pending_owner"] is None
        _, metrics_a = a.get("/metrics")
        _, metrics_b = b.get("/metrics")
        assert metric_value(metrics_b.decode(), "graph_replicator_lease_partitions", source="main", state="owned") == 1
        assert metric_value(metrics_a.decode(), "graph_replicator_leases_held", source="main") == 1
        assert metric_value(metrics_b.decode(), "graph_replicator_leases_held", source="main") == 0
    except BaseException:
        for daemon in (a, b):
            if daemon is not None and daemon.proc.poll() is None:
                daemon.kill()
        raise
    return a, b


def test_sigkill_of_the_active_one_the_standby_takes_over_and_converges(
    stand: NeptuneStand, moto_server: str, history, tmp_path: Path
) -> None:
    load_history(stand, history)
    # Slow reads (small pages, a slowed stream) so the kill lands mid-history.
    stand.faults.configure(rate=1.0, kinds=["slow"], seed=1, paths=("stream",))
    configs = _configs(tmp_path, stand, moto_server, limit=50, queue_size=2)
    a, b = _start_pair(configs)
    try:
        assert not _state(a)["caught_up"]
        killed_at = time.monotonic()
        a.kill()
        stand.faults.clear()  # the stream is at full speed again: the takeover time is the lease's, not the stand's
        wait_for(lambda: _state(b)["state"] != "standby", LEASE_DURATION + TAKE_INTERVAL + 10, "B to take the lease")
        leased = time.monotonic() - killed_at
        wait_for(lambda: _state(b)["changes_applied"] > 0, 10, "B's first window")
        takeover = time.monotonic() - killed_at
        print(
            f"\nSIGKILL takeover: lease taken {leased:.2f} s, first window applied {takeover:.2f} s after the kill "
            f"(bound: lease_duration {LEASE_DURATION:g} s + take_interval {TAKE_INTERVAL:g} s + start-up)"
        )
        assert LEASE_DURATION - RENEW_INTERVAL - MARGIN <= leased, "taken before the lease could have expired"
        assert takeover < LEASE_DURATION + TAKE_INTERVAL + 3
        wait_for(lambda: _state(b)["caught_up"], 60, "B to catch up")
        # B resumed from A's last checkpoint in the table, not from the start of the stream.
        assert _state(b)["changes_applied"] < history.n_records
    finally:
        b.terminate()
        if a.proc.poll() is None:
            a.kill()
    assert b.wait(30) == 0, b.log_tail()
    assert_converged(history.reference, replica("neptune", stand, tmp_path))


def test_sigterm_of_the_active_one_hands_over_without_waiting_for_expiry(
    stand: NeptuneStand, moto_server: str, history, tmp_path: Path
) -> None:
    half = len(history.commits) // 2
    load_history(stand, history, slice(0, half))
    configs = _configs(tmp_path, stand, moto_server, limit=500)
    a, b = _start_pair(configs)
    try:
        wait_for(lambda: _state(a)["caught_up"], 60, "A to catch up")
        term_at = time.monotonic()
        a.terminate()
        assert a.wait(30) == 0, a.log_tail()
        assert any(line.get("event") == "lease released" for line in a.log_lines()), a.log_tail()
        load_history(stand, history, slice(half, None))
        wait_for(lambda: _state(b)["state"] != "standby", LEASE_DURATION + 10, "B to take the lease")
        leased = time.monotonic() - term_at
        wait_for(lambda: _state(b)["changes_applied"] > 0, LEASE_DURATION + 10, "B's first window")
        takeover = time.monotonic() - term_at
        print(
            f"\nSIGTERM takeover: lease taken {leased:.2f} s, first window applied {takeover:.2f} s after SIGTERM "
            f"(lease_duration {LEASE_DURATION:g} s)"
        )
        # The hand-over itself: B held the lease before it could have expired. (Its first window follows after the
        # sink call and the stream read, which a loaded machine stretches, so that is reported, not asserted.)
        assert leased < LEASE_DURATION, "the standby waited for the lease to expire instead of the hand-over"
        wait_for(lambda: _state(b)["caught_up"], 60, "B to catch up")
        # B resumed from A's checkpoint in the table: it applied only the second half.
        assert _state(b)["changes_applied"] < history.n_records
    finally:
        b.terminate()
        if a.proc.poll() is None:
            a.kill()
    assert b.wait(30) == 0, b.log_tail()
    assert_converged(history.reference, replica("neptune", stand, tmp_path))


def test_a_standby_with_exit_when_idle_exits_while_another_live_instance_holds_the_lease(
    stand: NeptuneStand, moto_server: str, history, tmp_path: Path
) -> None:
    """`run --exit-when-idle` on a standby: it holds no lease and another live instance holds it, so it has
    nothing to apply and exits 0 (without taking the lease from under the holder)."""
    load_history(stand, history, slice(0, 50))
    configs = _configs(tmp_path, stand, moto_server, limit=500)
    a = DaemonProcess(configs[0], exit_when_idle=False)
    try:
        wait_for(lambda: _state(a)["caught_up"], 30, "A to take the lease and catch up")
        b = DaemonProcess(configs[1], exit_when_idle=True)
        assert b.wait(30) == 0, b.log_tail()
        assert any("held by another live instance" in line.get("event", "") for line in b.log_lines()), b.log_tail()
        assert not any(line.get("event") == "lease held; applying" for line in b.log_lines()), b.log_tail()
        assert _state(a)["state"] != "standby", "A kept its lease"
    finally:
        a.terminate()
    assert a.wait(30) == 0, a.log_tail()
