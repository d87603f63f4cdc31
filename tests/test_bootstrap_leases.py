"""`graph-replicator bootstrap` with `[checkpoint] kind = "dynamodb"`: the hand-off positions become free leases
holding those checkpoints in the lease table (moto), and `run` continues from there; a lease held by a live
instance refuses the bootstrap unless `--force` (which fences that instance off); a dead owner's lease is
replaced after one lease duration of watching it stand still."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from daemon.bootstrap import Bootstrap, BootstrapConfigError
from daemon.bootstrap.progress import Progress
from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore
from daemon.config import Config, load_config
from daemon.deadletter import DeadLetterFile
from daemon.lease_coordinator import LeaseCoordinator
from daemon.leases import LeaseLost
from tests.stand.bootstrap_graph import ChurnApplier, build_scenario, prepare_source
from tests.stand.comparator import assert_converged
from tests.stand.daemon_process import AWS_ENV, DaemonProcess, write_config
from tests.stand.harness import add_lease_table, neptune_source, replica, sink_config
from tests.stand.neptune_endpoint import NeptuneStand

LEASE_DURATION = 1.5


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def source_stand() -> Iterator[NeptuneStand]:
    with NeptuneStand(graph_name="source") as stand:
        yield stand


@pytest.fixture
def table() -> str:
    return f"leases-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(moto_server: str, table: str) -> AsyncIterator[DynamoDBCheckpointStore]:
    async with AsyncExitStack() as stack:
        yield await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)


def config_path(tmp_path: Path, source: NeptuneStand, target: NeptuneStand, moto_server: str, table: str) -> Path:
    return add_lease_table(
        write_config(
            tmp_path / "config.toml",
            data_dir=tmp_path / "data",
            source=neptune_source(source, limit=5000),
            sink=sink_config("neptune-analytics", target, batch_size=2000),
        ),
        moto_server,
        table,
        lease_duration_seconds=LEASE_DURATION,
        renew_interval_seconds=0.3,
        take_interval_seconds=0.2,
        fencing_margin_seconds=0.3,
    )


@pytest.fixture
def empty_source_config(
    stand: NeptuneStand, source_stand: NeptuneStand, moto_server: str, table: str, tmp_path: Path
) -> Config:
    """A config whose source is empty (the bootstrap copies nothing and hands off (0, 0))."""
    source_stand.reset()
    return load_config(config_path(tmp_path, source_stand, stand, moto_server, table))


async def bootstrap(config: Config, **kwargs: bool) -> object:
    return await Bootstrap(config, "main", progress=Progress("main", tty=False), **kwargs).run()


async def test_bootstrap_hands_off_to_the_lease_table_and_run_continues_from_there(
    stand: NeptuneStand, source_stand: NeptuneStand, moto_server: str, table: str, tmp_path: Path
) -> None:
    scenario = build_scenario(seed=11, n_vertices=300, n_edges=600, n_churn=300)
    position = prepare_source(source_stand, scenario)
    path = config_path(tmp_path, source_stand, stand, moto_server, table)
    config = load_config(path)
    result = await bootstrap(config)
    assert result.positions == {"": position}  # type: ignore[attr-defined]
    async with AsyncExitStack() as stack:
        store = await DynamoDBCheckpointStore.open(stack, table=table, region="us-east-1", endpoint=moto_server)
        (lease,) = await store.list_leases("main")
    assert (lease.partition, lease.owner, lease.position) == ("", None, position), "a free lease with its checkpoint"
    with pytest.raises(BootstrapConfigError, match=rf"already has a checkpoint .* in the lease table '{table}'"):
        await bootstrap(config)
    churn = ChurnApplier(source_stand, scenario, chunks=1, dead_letters=DeadLetterFile(tmp_path / "churn-dl"))
    await churn.finish()  # changes after the copy: streamed by `run` from the handed-off position
    daemon = DaemonProcess(path)
    assert await asyncio.to_thread(daemon.wait, 120) == 0, daemon.log_tail()
    assert_converged(scenario.final, replica("neptune-analytics", stand, tmp_path / "data"))


async def test_a_lease_held_by_a_live_instance_refuses_the_bootstrap_unless_forced(
    empty_source_config: Config, store: DynamoDBCheckpointStore
) -> None:
    config = empty_source_config
    await store.ensure_leases("main", {"": ()})
    live = LeaseCoordinator(store, "main", "live-instance", lease_duration=30, renew_interval=0.2, margin=1)
    await live.start()  # holds the lease and renews it on its timer, as a running `run` does
    try:
        assert live.may_write("")
        with pytest.raises(BootstrapConfigError, match=r"held by live instances \(stream by live-instance"):
            await bootstrap(config)
        (lease,) = await store.list_leases("main")
        assert lease.owner == "live-instance" and lease.position is None, "a refused bootstrap writes nothing"
        held = live.held[""]  # (taken now: the live instance's renewal timer may drop it once it is replaced)
        await bootstrap(config, force=True)
        (lease,) = await store.list_leases("main")
        assert lease.owner is None and lease.position == (0, 0)
        with pytest.raises(LeaseLost):  # the fenced instance's checkpoint writes are refused from here on
            await store.save_many("main", {"": (5, 1)}, {"": held})
        await live.renew_once()
        assert not live.may_write("") and "" not in live.held
    finally:
        await live.stop(release=False)


async def test_a_dead_owners_lease_is_replaced_after_watching_it_for_a_lease_duration(
    empty_source_config: Config, store: DynamoDBCheckpointStore
) -> None:
    config = empty_source_config
    await store.ensure_leases("main", {"": ()})
    dead = await store.take("main", "", "killed-instance", 0)  # taken, never renewed: its process died
    started = asyncio.get_running_loop().time()
    await bootstrap(config)
    assert asyncio.get_running_loop().time() - started >= LEASE_DURATION
    (lease,) = await store.list_leases("main")
    assert lease.owner is None and lease.position == (0, 0) and lease.counter == dead.counter + 1
