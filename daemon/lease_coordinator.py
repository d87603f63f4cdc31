"""The lease coordinator: which partitions of a source this instance reads, and until when it may write them
(DESIGN, "Shared state and leases"; KCL's LeaseCoordinator / LeaseRenewer / LeaseTaker, in three small roles).

* `LeaseRenewer` heartbeats only the leases this instance holds, drops each one whose renewal found it lost,
  and hands a lease over when another instance asked for it (a steal request, recorded on the item).
* `LeaseTaker` decides what to take: leases handed to us, then free or expired ones (parents finished first),
  up to an even share; only then asks the most loaded instance for a bounded number, and only when it holds
  more than `steal_tolerance` above our count plus one. N instances settle on an even share plus or minus one,
  and once there nobody asks for anything (no thrashing).
* `LeaseCoordinator` runs both on timers, answers `may_write(partition)` and releases everything on stop.

Timing and self-fencing. Expiry is judged as KCL does, by observation: an instance treats another's lease as
expired only after watching its counter stay unchanged for `lease_duration` on its own monotonic clock. The
holder's deadline for a lease is `sent + lease_duration - margin`, where `sent` is the holder's monotonic time
just BEFORE it sent the take or renew that succeeded. That write reached the table after `sent`; any other
instance saw the new counter only after it reached the table, and then waits `lease_duration` more, so nobody
can take the lease before `sent + lease_duration` in real time. The holder's `may_write` turns False `margin`
earlier, which covers clock-rate drift between hosts (wall-clock skew plays no part: only intervals are
measured) and the gap between a writer's check and its write reaching the sink. A paused process (GC, SIGSTOP,
a suspended host: the clock is CLOCK_BOOTTIME) finds on waking that its monotonic clock has run past the
deadline, so `may_write` is already False; its checkpoint writes are fenced anyway by the conditional write on
owner + counter. Steals never move a lease under a live owner: the owner hands it over at its next renewal
(after dropping it, so it stops writing first) and a silent owner's lease expires by the rule above, so the
deadline argument holds for steals too, where KCL lets a stealer take over while the victim still writes.

Renewals run every `renew_interval`, at most half of `lease_duration - margin`, so one late or failed
heartbeat does not stop the writes.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any

import structlog

from daemon.leases import Lease, LeaseLost, LeaseStore, monotonic, new_owner_id

log = structlog.get_logger("daemon.leases")

Clock = Callable[[], float]


class LeaseRenewer:
    """Heartbeats the leases this instance holds and keeps each one's write deadline."""

    def __init__(
        self, store: LeaseStore, owner: str, *, lease_duration: float, margin: float, clock: Clock = monotonic
    ) -> None:
        self.store, self.owner = store, owner
        self.lease_duration, self.margin, self.clock = lease_duration, margin, clock
        self.held: dict[str, Lease] = {}
        self._deadline: dict[str, float] = {}
        self.handed_off = 0

    def adopt(self, lease: Lease, sent_at: float) -> None:
        """Hold `lease`, taken by a write sent at monotonic time `sent_at`."""
        self.held[lease.partition] = lease
        self._deadline[lease.partition] = sent_at + self.lease_duration - self.margin

    def drop(self, partition: str) -> Lease | None:
        self._deadline.pop(partition, None)
        return self.held.pop(partition, None)

    def deadline(self, partition: str) -> float | None:
        return self._deadline.get(partition)

    def may_write(self, partition: str) -> bool:
        deadline = self._deadline.get(partition)
        return deadline is not None and self.clock() < deadline

    async def renew_all(self) -> list[str]:
        """Renew every held lease (concurrently); return the partitions dropped (lost, handed over, finished
        at `SHARD_END`, or past their deadline after a failed renewal)."""
        partitions = list(self.held)
        results = await asyncio.gather(*(self._renew(p) for p in partitions))
        return [p for p, kept in zip(partitions, results, strict=True) if not kept]

    async def _renew(self, partition: str) -> bool:
        lease = self.held[partition]
        if lease.shard_end:  # read to its end and checkpointed: free it, so its children become ready
            self.drop(partition)
            with suppress(LeaseLost):
                await self.store.release(lease)
            return False
        sent = self.clock()
        try:
            await self.store.renew(lease)
        except LeaseLost as exc:
            log.warning("lease lost at renewal", source=lease.source, partition=partition, owner=exc.actual_owner)
            self.drop(partition)
            return False
        except Exception as exc:  # retries exhausted: keep it while the deadline lasts
            if not self.may_write(partition):
                log.warning("lease renewal failed past its deadline; dropped", partition=partition, error=str(exc))
                self.drop(partition)
                return False
            log.info("lease renewal failed; will retry", partition=partition, error=str(exc))
            return True
        if partition in self.held:  # not dropped (by a failed save) while the renewal was in flight
            self._deadline[partition] = sent + self.lease_duration - self.margin
        wanted_by = lease.pending_owner
        if wanted_by and wanted_by != self.owner:
            self.drop(partition)  # stop writing first, then hand over
            self.handed_off += 1
            with suppress(LeaseLost):
                await self.store.release(lease, to=wanted_by)
            return False
        return True


class LeaseTaker:
    """Decides which leases this instance takes or asks for, one round at a time."""

    def __init__(
        self,
        store: LeaseStore,
        source: str,
        owner: str,
        *,
        lease_duration: float,
        max_steal: int = 1,
        steal_tolerance: int = 1,
        clock: Clock = monotonic,
    ) -> None:
        self.store, self.source, self.owner = store, source, owner
        self.lease_duration, self.max_steal, self.steal_tolerance = lease_duration, max_steal, steal_tolerance
        self.clock = clock
        self._seen: dict[str, tuple[str | None, int, float]] = {}  # partition -> (owner, counter, since)
        self.takes = 0
        self.steals = 0
        self.last_seen: list[Lease] = []  # the whole table of this source as the last round read it
        self.ready_unowned = 0  # partitions the last round left free or expired and ready to take (0: all placed)

    async def take_round(self, held: Mapping[str, Lease]) -> list[tuple[Lease, float]]:
        """One round: returns the leases taken, each with the monotonic time its take was sent."""
        leases = await self.store.list_leases(self.source)
        self.last_seen = leases
        now = self.clock()
        by_partition = {lease.partition: lease for lease in leases}
        for partition in set(self._seen) - set(by_partition):
            del self._seen[partition]
        for lease in leases:
            seen = self._seen.get(lease.partition)
            if seen is None or seen[:2] != (lease.owner, lease.counter):
                self._seen[lease.partition] = (lease.owner, lease.counter, now)

        active = [lease for lease in leases if not lease.shard_end]

        def expired(lease: Lease) -> bool:
            return lease.owner is None or now - self._seen[lease.partition][2] >= self.lease_duration

        def ready(lease: Lease) -> bool:
            parents = (by_partition.get(p) for p in lease.parents)
            return all(parent is None or parent.shard_end for parent in parents)

        mine = [lease for lease in active if lease.partition in held]
        handed = [lease for lease in active if lease.owner == self.owner and lease.partition not in held]
        asked = [  # steal requests not answered yet (an expired one is simply taken below)
            lease
            for lease in active
            if lease.pending_owner == self.owner and lease.owner != self.owner and not expired(lease)
        ]
        loads: Counter[str] = Counter(
            lease.owner for lease in active if lease.owner and lease.owner != self.owner and not expired(lease)
        )
        workers = len(set(loads) | {self.owner})
        target = math.ceil(len(active) / workers) if active else 0
        my_load = len(mine) + len(handed) + len(asked)

        wanted = list(handed)
        free = [lease for lease in active if lease.owner != self.owner and expired(lease) and ready(lease)]
        free.sort(key=lambda lease: (lease.owner is not None, lease.partition))  # free ones before expired ones
        wanted += free[: max(0, target - my_load)]

        taken: list[tuple[Lease, float]] = []
        for lease in wanted:
            sent = self.clock()
            try:
                taken.append((await self.store.take(self.source, lease.partition, self.owner, lease.counter), sent))
                self.takes += 1
            except LeaseLost:
                continue  # another instance was quicker
        self.ready_unowned = len({lease.partition for lease in free} - {lease.partition for lease, _ in taken})
        if wanted or asked or not loads:
            return taken

        victim, most = loads.most_common(1)[0]
        mine_now = len(mine) + len(taken)
        if most <= mine_now + self.steal_tolerance or mine_now >= target:
            return taken
        count = min(self.max_steal, (most - mine_now) // 2)
        candidates = [
            lease for lease in active if lease.owner == victim and lease.pending_owner is None and ready(lease)
        ]
        for lease in sorted(candidates, key=lambda lease: lease.partition)[:count]:
            try:
                await self.store.steal(self.source, lease.partition, self.owner, victim, lease.counter)
                self.steals += 1
            except LeaseLost:
                continue
        return taken


class LeaseCoordinator:
    """Runs the renewer and the taker of one source on timers and answers `may_write`."""

    def __init__(
        self,
        store: LeaseStore,
        source: str,
        owner: str | None = None,
        *,
        lease_duration: float = 15.0,
        renew_interval: float = 3.0,
        take_interval: float = 5.0,
        margin: float = 3.0,
        max_steal: int = 1,
        steal_tolerance: int = 1,
        clock: Clock = monotonic,
        on_change: Callable[[set[str]], Awaitable[None] | None] | None = None,
    ) -> None:
        if 2 * renew_interval > lease_duration - margin:
            raise ValueError("renew_interval should be at most half of lease_duration - margin")
        self.store, self.source = store, source
        self.owner = owner or new_owner_id()
        self.renew_interval, self.take_interval = renew_interval, take_interval
        self.renewer = LeaseRenewer(store, self.owner, lease_duration=lease_duration, margin=margin, clock=clock)
        self.taker = LeaseTaker(
            store,
            source,
            self.owner,
            lease_duration=lease_duration,
            max_steal=max_steal,
            steal_tolerance=steal_tolerance,
            clock=clock,
        )
        self.on_change = on_change  # told the held partitions whenever they change (the source reads those)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._take_now = asyncio.Event()  # a lease was freed here: look for work without waiting a whole interval
        self.take_pending = False  # `wake` asked for a take round that has not started yet

    @classmethod
    def from_config(cls, store: LeaseStore, source: str, config: Any, owner: str | None = None) -> LeaseCoordinator:
        """From a `DynamoDBCheckpointConfig`."""
        return cls(
            store,
            source,
            owner,
            lease_duration=config.lease_duration_seconds,
            renew_interval=config.renew_interval_seconds,
            take_interval=config.take_interval_seconds,
            margin=config.fencing_margin_seconds,
            max_steal=config.max_steal,
            steal_tolerance=config.steal_tolerance,
        )

    @property
    def held(self) -> dict[str, Lease]:
        """The leases held now, by partition (hand them to `save_many`)."""
        return self.renewer.held

    def may_write(self, partition: str) -> bool:
        """True while this instance may still write `partition`: False from `margin` before the earliest moment
        another instance could take the lease, and at once after a lost lease."""
        return self.renewer.may_write(partition)

    def deadline(self, partition: str) -> float | None:
        """The monotonic time (`daemon.leases.monotonic`) from which `partition` may no longer be written."""
        return self.renewer.deadline(partition)

    async def lease_lost(self, partition: str) -> None:
        """A conditional write found the lease gone (`LeaseLost`): stop writing the partition at once."""
        if self.renewer.drop(partition) is not None:
            await self._changed()

    def wake(self) -> None:
        """Run a take round now (new leases were registered, or one was freed here)."""
        self.take_pending = True
        self._take_now.set()

    async def finished(self, partition: str) -> None:
        """The partition was read to its end and that end checkpointed (`SHARD_END`): release it at once, so its
        children become ready, and look for them now rather than at the next take round."""
        lease = self.renewer.drop(partition)
        if lease is None:
            return
        with suppress(LeaseLost):
            await self.store.release(lease)
        self.wake()
        await self._changed()

    async def renew_once(self) -> None:
        if self.renewer.held and await self.renewer.renew_all():
            await self._changed()

    async def take_once(self) -> None:
        self.take_pending = False
        taken = await self.taker.take_round(self.renewer.held)
        for lease, sent in taken:
            self.renewer.adopt(lease, sent)
        if taken:
            await self._changed()

    async def start(self) -> None:
        """Take what is free now, then keep renewing and taking on timers."""
        await self.take_once()
        self._tasks = [
            asyncio.create_task(self._every(self.renew_interval, self.renew_once), name=f"lease-renewer:{self.source}"),
            asyncio.create_task(
                self._every(self.take_interval, self.take_once, self._take_now), name=f"lease-taker:{self.source}"
            ),
        ]

    async def stop(self, release: bool = True) -> None:
        """Stop the timers and (for a drain) release every held lease so others take them without waiting."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if release:
            for partition in list(self.renewer.held):
                lease = self.renewer.drop(partition)
                if lease is not None:
                    await self._release_at_stop(lease)

    async def _release_at_stop(self, lease: Lease) -> None:
        """Release a lease at a drain. A renewal cancelled just above may have reached the table without its
        answer being absorbed: the table still names us, one counter on. Nobody else writes a lease that names us,
        so release it at the table's counter rather than leave it owned until it expires."""
        try:
            await self.store.release(lease)
        except LeaseLost as exc:
            if exc.actual_owner != self.owner or exc.actual_counter is None:
                return  # another instance holds it now
            lease.counter = exc.actual_counter
            with suppress(LeaseLost):
                await self.store.release(lease)

    async def _every(
        self, interval: float, step: Callable[[], Awaitable[None]], wake: asyncio.Event | None = None
    ) -> None:
        while not self._closed:
            if wake is not None:
                wake.clear()
            try:
                await step()
            except Exception as exc:  # a failed round is retried next time; deadlines keep the writes fenced
                log.warning("lease round failed", source=self.source, error=f"{type(exc).__name__}: {exc}")
            if wake is None:
                await asyncio.sleep(interval)
            else:
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=interval)

    async def _changed(self) -> None:
        if self.on_change is not None:
            result = self.on_change(set(self.renewer.held))
            if result is not None:
                await result
