"""The lease table when `run` starts (`[checkpoint] kind = "dynamodb"`): unreachable, the daemon keeps trying
with backoff, not ready and saying why in /readyz and /status, and drains cleanly on SIGTERM meanwhile; a table
that answers late is used as soon as it answers; a refusal that retrying cannot fix (access denied) ends the
process with exit code 5 and the reason. The lease table is the session's moto server, reached through a TCP
proxy that starts listening late; the refusal comes from a small HTTP endpoint answering as DynamoDB does."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from daemon.config import load_config
from daemon.supervisor import EXIT_LEASE_TABLE, Supervisor
from tests.stand.comparator import assert_converged
from tests.stand.daemon_process import AWS_ENV, DaemonProcess, write_config
from tests.stand.harness import add_lease_table, load_history, neptune_source, replica, sink_config, wait_for
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import generate_history


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_file(tmp_path: Path, stand: NeptuneStand, endpoint: str, **daemon: object) -> Path:
    return add_lease_table(
        write_config(
            tmp_path / "c.toml",
            data_dir=tmp_path / "data",
            source=neptune_source(stand),
            sink=sink_config("neptune", stand, batch_size=200),
            daemon={"restart_backoff_max_seconds": 0.5, **daemon},
        ),
        endpoint,
        f"leases-{uuid.uuid4().hex[:8]}",
        lease_duration_seconds=3.0,
        renew_interval_seconds=0.5,
        take_interval_seconds=0.2,
        fencing_margin_seconds=0.5,
    )


async def proxy(port: int, target: str) -> asyncio.Server:
    """A TCP proxy on 127.0.0.1:`port` to `target` (http://host:port)."""
    host, target_port = target.removeprefix("http://").split(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(target_port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def test_a_lease_table_that_answers_late_is_waited_for_not_ready_meanwhile(
    stand: NeptuneStand, moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    history = generate_history(seed=21, n_changes=600)
    load_history(stand, history)
    port = free_port()
    config = load_config(config_file(tmp_path, stand, f"http://127.0.0.1:{port}", http_address=""))
    supervisor = Supervisor(config, exit_when_idle=True)
    run = asyncio.create_task(supervisor.run())
    for _ in range(200):
        if supervisor.store_trouble is not None:
            break
        assert not run.done(), "run gave up on an unreachable lease table"
        await asyncio.sleep(0.05)
    ready, reasons = supervisor.readiness()
    assert not ready and any(r.startswith("lease table unreachable (") for r in reasons), reasons
    assert "EndpointConnectionError" in supervisor.store_trouble or "connect" in supervisor.store_trouble.lower()
    assert supervisor.status()["reasons"] == reasons
    await asyncio.sleep(1.5)  # still trying, with backoff
    assert not run.done()
    server = await proxy(port, moto_server)
    try:
        assert await asyncio.wait_for(run, 60) == 0
    finally:
        server.close()
    assert supervisor.store_trouble is None and supervisor.fatal is None
    assert supervisor.summary is not None and supervisor.summary.changes_applied > 0
    assert_converged(history.reference, replica("neptune", stand, tmp_path))


def test_sigterm_while_the_lease_table_is_unreachable_exits_cleanly(stand: NeptuneStand, tmp_path: Path) -> None:
    daemon = DaemonProcess(config_file(tmp_path, stand, f"http://127.0.0.1:{free_port()}"), exit_when_idle=False)
    try:

        def unready() -> list[str] | None:
            code, body = daemon.get("/readyz")
            reasons = orjson.loads(body)["reasons"]
            return reasons if code == 503 and any("lease table unreachable" in r for r in reasons) else None

        wait_for(unready, 30, "/readyz to say the lease table is unreachable")
        code, body = daemon.get("/status")
        assert code == 200
        (source,) = orjson.loads(body)["sources"]
        assert source["owner_id"] is None and source["leases"] == [], "nothing is known of the table yet"
    finally:
        daemon.terminate()
    assert daemon.wait(20) == 0, daemon.log_tail()
    assert any(line.get("event", "").startswith("drained while waiting") for line in daemon.log_lines())


@pytest.fixture
async def refusing_endpoint() -> AsyncIterator[str]:
    """An HTTP endpoint that answers every DynamoDB call as DynamoDB does for a role lacking permission."""

    async def refuse(request: web.Request) -> web.Response:
        operation = request.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        body = {
            "__type": "com.amazon.coral.service#AccessDeniedException",
            "message": f"User: arn:aws:sts::111122223333:assumed-role/replicator/i-0 is not authorized to perform: "
            f"dynamodb:{operation} on resource: arn:aws:dynamodb:us-east-1:111122223333:table/leases",
        }
        return web.Response(status=400, body=orjson.dumps(body), content_type="application/x-amz-json-1.0")

    app = web.Application()
    app.router.add_post("/", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_access_denied_on_the_lease_table_stops_with_the_reason(
    stand: NeptuneStand, refusing_endpoint: str, tmp_path: Path
) -> None:
    daemon = DaemonProcess(config_file(tmp_path, stand, refusing_endpoint), exit_when_idle=False)
    code = await asyncio.to_thread(daemon.wait, 30)
    assert code == EXIT_LEASE_TABLE, daemon.log_tail()
    log = daemon.log_path.read_text()
    assert "graph-replicator run: cannot use the lease table" in log
    assert "AccessDeniedException" in log and "dynamodb:DescribeTable" in log
