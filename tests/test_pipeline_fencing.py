"""Self-fencing in the pipeline (in process, fakes for the source, planner, sink and lease store): a window is
not written when `may_write` is False, and a `LeaseLost` from a checkpoint write stops the pipeline at once,
with the coordinator's lease dropped so nothing of this process writes the partition again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemon.leases import FencedOff, Lease, LeaseLost
from daemon.model import ChangeBatch, GraphChange
from daemon.pipeline import Pipeline
from daemon.supervisor import LeasedCheckpoints


class FakeSource:
    name = "main"
    state = "polling"
    polling = True

    async def run(self, out: asyncio.Queue[ChangeBatch], resume: dict[str, Any]) -> None:
        for commit in range(1, 100):
            await out.put(ChangeBatch("", [GraphChange("vl", True, f"v{commit}", "L")], (commit, 1)))
        await asyncio.Event().wait()

    def acknowledge(self, applied: dict[str, Any]) -> None:
        pass


class FakePlanner:
    async def plan(self, changes: list[GraphChange]) -> Any:
        return type("Plan", (), {"skipped": [], "changes": changes})()


class FakeApplier:
    def __init__(self) -> None:
        self.applied: list[int] = []
        self.sink = type("Sink", (), {"name": "target"})()
        self.healthy = True

    async def apply(self, plan: Any) -> int:
        self.applied.append(len(plan.changes))
        return len(plan.changes)


class FakeCoordinator:
    source = "main"

    def __init__(self) -> None:
        self.held = {"": Lease("main", "", "me", 1)}
        self.lost: list[str] = []

    def may_write(self, partition: str) -> bool:
        return partition in self.held

    def now(self) -> float:
        return 0.0

    def written(self, partition: str, sent_at: float) -> None:
        pass

    def deadline(self, partition: str) -> float | None:
        return float("inf") if partition in self.held else None

    async def lease_lost(self, partition: str) -> None:
        self.lost.append(partition)
        self.held.pop(partition, None)


class TableStore:
    """The shared table after another instance took the lease: every checkpoint write fails its condition."""

    def __init__(self) -> None:
        self.saves = 0

    async def load(self, source: str) -> dict[str, Any]:
        return {}

    async def save_many(self, source: str, positions: dict[str, Any], leases: Any) -> None:
        self.saves += 1
        raise LeaseLost(source, "", "me", "other", 1, 2)

    async def forget(self, source: str, partitions: list[str], leases: Any) -> None:
        raise AssertionError("not reached")


def _pipeline(coordinator: FakeCoordinator, store: TableStore, applier: FakeApplier) -> Pipeline:
    return Pipeline(
        FakeSource(),
        FakePlanner(),  # type: ignore[arg-type]
        applier,  # type: ignore[arg-type]
        LeasedCheckpoints(store, coordinator),  # type: ignore[arg-type]
        queue_size=4,
        window_max_changes=1,
        ownership=coordinator,
    )


async def test_a_lost_lease_at_checkpoint_stops_the_pipeline_at_once() -> None:
    coordinator, store, applier = FakeCoordinator(), TableStore(), FakeApplier()
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(_pipeline(coordinator, store, applier).run(), 5)
    assert applier.applied == [1] and store.saves == 1  # one window written, its checkpoint refused, then nothing
    assert coordinator.lost == [""] and not coordinator.may_write("")


async def test_no_sink_write_without_the_lease() -> None:
    coordinator, store, applier = FakeCoordinator(), TableStore(), FakeApplier()
    coordinator.held.clear()  # the deadline passed (or the lease was dropped at renewal)
    with pytest.raises(FencedOff):
        await asyncio.wait_for(_pipeline(coordinator, store, applier).run(), 5)
    assert applier.applied == [] and store.saves == 0
