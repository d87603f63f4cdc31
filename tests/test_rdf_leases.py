"""RDF sources on the DynamoDB checkpoint store (moto in server mode): two daemon processes run one config with a
`neptune-sparql` source (the stand's GetSparqlStream) into the stand's SPARQL endpoint. One holds the lease and
applies, the other stands by; after a SIGKILL of the active one the standby takes the lease once it expires,
resumes from the checkpoint the first one left in the table and the target converges on the reference dataset."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from pyoxigraph import Quad

from daemon.rdf import default_blank_node_prefix, nquad
from tests.stand.daemon_process import DaemonProcess, write_config
from tests.stand.harness import add_lease_table, status, wait_for
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.rdf_workload import RdfHistory, generate_rdf_history

LEASE_DURATION, RENEW_INTERVAL, TAKE_INTERVAL, MARGIN = 3.0, 0.5, 0.2, 0.5


@pytest.fixture(scope="module")
def history() -> RdfHistory:
    return generate_rdf_history(29, 500, blank_node_prefix=default_blank_node_prefix("main"))


def _state(daemon: DaemonProcess) -> dict:
    return status(daemon)["sources"][0]


def _assert_same(expected: set[Quad], got: set[Quad]) -> None:
    missing, extra = sorted(map(nquad, expected - got)), sorted(map(nquad, got - expected))
    assert not missing and not extra, f"missing {missing[:5]} extra {extra[:5]} ({len(missing)}/{len(extra)})"


def test_sigkill_of_the_active_one_the_standby_resumes_from_the_table_and_converges(
    stand: NeptuneStand, moto_server: str, history: RdfHistory, tmp_path: Path
) -> None:
    for ops in history.commits:
        stand.sparql_stream.append_commit(ops)
    stand.faults.configure(rate=1.0, kinds=["slow"], seed=4, paths=("sparql_stream",))  # the kill lands mid-run
    table = f"rdf-leases-{uuid.uuid4().hex[:8]}"
    source = {"kind": "neptune-sparql", "endpoint": stand.url, "region": "us-east-1", "limit": 40, "queue_size": 2}
    sink = {"kind": "sparql", "update_url": f"{stand.url}/sparql", "auth": "sigv4", "region": "us-east-1",
            "batch_size": 50}  # fmt: skip
    configs = [
        add_lease_table(
            write_config(
                tmp_path / f"{name}.toml",
                data_dir=tmp_path / f"data-{name}",
                source=source,
                sink=sink,
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
    a = DaemonProcess(configs[0], exit_when_idle=False)
    b: DaemonProcess | None = None
    try:
        wait_for(lambda: (_state(a)["position"] or [0])[0] > 20, 60, "A to take the lease and apply")
        b = DaemonProcess(configs[1], exit_when_idle=False)
        wait_for(lambda: _state(b)["state"] == "standby" and status(b)["ready"], 30, "B to stand by, ready")
        time.sleep(0.5)
        assert _state(b)["changes_applied"] == 0 and not _state(a)["caught_up"]
        killed_at = _state(a)["position"]
        a.kill()
        stand.faults.clear()
        wait_for(lambda: _state(b)["state"] != "standby", LEASE_DURATION + TAKE_INTERVAL + 15, "B to take the lease")
        wait_for(lambda: _state(b)["caught_up"], 60, "B to catch up")
        # B resumed from A's checkpoint in the lease table (at or before where A was killed), not from the horizon
        assert 0 < _state(b)["changes_applied"] < history.n_ops
        assert tuple(_state(b)["position"]) == stand.sparql_stream.last_event_id() > tuple(killed_at)
    finally:
        if b is not None:
            b.terminate()
        if a.proc.poll() is None:
            a.kill()
    assert b.wait(30) == 0, b.log_tail()
    _assert_same(history.reference, set(stand.rdf_store.quads_for_pattern(None, None, None, None)))
