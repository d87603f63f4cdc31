"""The supervisor in-process: a pipeline whose target is unreachable at start is restarted with backoff and
catches up once the target appears; readiness says why it is not ready meanwhile."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import falkordb

from daemon.config import load_config
from daemon.engine import EmbeddedFalkorDB, engine_password
from daemon.observability import METRICS
from daemon.supervisor import Supervisor
from tests.stand.comparator import assert_converged, read_falkordb_graph
from tests.stand.daemon_process import AWS_ENV, write_config
from tests.stand.harness import load_history, neptune_source
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import generate_history


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_target_is_retried_until_it_appears(stand: NeptuneStand, tmp_path: Path, monkeypatch) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    history = generate_history(seed=9, n_changes=1500)
    load_history(stand, history)
    port = free_port()
    (tmp_path / "late-engine").mkdir()
    password = engine_password(tmp_path / "late-engine")  # the engine started below reads the same one
    config = load_config(
        write_config(
            tmp_path / "c.toml",
            data_dir=tmp_path / "data",
            source=neptune_source(stand),
            sink={"kind": "falkordb", "url": f"redis://127.0.0.1:{port}", "graph": "late", "password": password},
            daemon={"restart_backoff_max_seconds": 0.5, "http_address": ""},
        )
    )
    supervisor = Supervisor(config, exit_when_idle=True)
    restarts = METRICS.task_restarts.labels(source="main")
    before = restarts._value.get()
    run = asyncio.create_task(supervisor.run())
    while restarts._value.get() < before + 2:  # two failed starts, two backoffs
        assert not run.done(), "the supervisor gave up instead of retrying"
        await asyncio.sleep(0.05)
    ready, reasons = supervisor.readiness()
    assert not ready and reasons
    engine = EmbeddedFalkorDB(tmp_path / "late-engine", port=port)
    await engine.start()
    try:
        assert await asyncio.wait_for(run, 60) == 0
        graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=password).select_graph("late")
        assert_converged(history.reference, await asyncio.to_thread(read_falkordb_graph, graph))
    finally:
        await engine.stop()
