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

Observability (`daemon.observability.LeaseMetrics`, docs/metrics.md): takes, steal requests, losses and releases
are counted where they happen; the taker keeps its last view of the whole table (`last_seen`, which `/status`
shows without reading the table) and, from it, the partitions by state and how long the longest unowned one
has been owned by nobody: a free lease since this instance first saw it free, an expired one since it expired
(its counter stood still for `lease_duration`), so a normal failover reads at most `take_interval`.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Set
from contextlib import suppress
from dataclasses import replace
from typing import Any

import structlog

from daemon.leases import Lease, LeaseLost, LeaseStore, monotonic, new_owner_id
from daemon.observability import LeaseMetrics, Metrics

log = structlog.get_logger("daemon.leases")

Clock = Callable[[], float]


class LeaseRenewer:
    """Heartbeats the leases this instance holds and keeps each one's write deadline."""

    def __init__(
        self,
        store: LeaseStore,
        owner: str,
        *,
        lease_duration: float,
        margin: float,
        clock: Clock = monotonic,
        metrics: LeaseMetrics | None = None,
    ) -> None:
        self.store, self.owner = store, owner
        self.lease_duration, self.margin, self.clock = lease_duration, margin, clock
        self.metrics = metrics
        self.held: dict[str, Lease] = {}
        self._deadline: dict[str, float] = {}
        self._written: dict[str, float] = {}  # partition -> when its last checkpoint write (a renewal too) was sent
        self.skip_after_write = 0.0  # a lease written this recently is not renewed (the coordinator's interval)
        self.handed_off = 0
        self.handoffs: list[tuple[Lease, str, float | None]] = []  # dropped for (lease, wanted by, its deadline)

    def adopt(self, lease: Lease, sent_at: float) -> None:
        """Hold `lease`, taken by a write sent at monotonic time `sent_at`."""
        self.held[lease.partition] = lease
        self._deadline[lease.partition] = sent_at + self.lease_duration - self.margin

    def drop(self, partition: str) -> Lease | None:
        self._deadline.pop(partition, None)
        self._written.pop(partition, None)
        return self.held.pop(partition, None)

    def written(self, partition: str, sent_at: float) -> None:
        """A checkpoint write of `partition` sent at `sent_at` landed: it bumped the counter, so it extends the
        deadline as a renewal would. Not when a hand-over was asked for: the next renewal answers that."""
        lease = self.held.get(partition)
        if lease is None or (lease.pending_owner and lease.pending_owner != self.owner):
            return
        self._deadline[partition] = max(self._deadline.get(partition, 0.0), sent_at + self.lease_duration - self.margin)
        self._written[partition] = sent_at

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
            await self.give_up(lease, "shard_end")
            return False
        sent = self.clock()
        if sent - self._written.get(partition, float("-inf")) < self.skip_after_write:
            return True  # a checkpoint write renewed it lately; its deadline is at least a renewal away
        try:
            await self.store.renew(lease)
        except LeaseLost as exc:
            if self.held.get(partition) is lease:  # (not released here meanwhile: finished, or handed over)
                log.warning("lease lost at renewal", source=lease.source, partition=partition, owner=exc.actual_owner)
                self.drop(partition)
                self._lost()
            return False
        except Exception as exc:  # retries exhausted: keep it while the deadline lasts
            if not self.may_write(partition):
                log.warning("lease renewal failed past its deadline; dropped", partition=partition, error=str(exc))
                self.drop(partition)
                self._lost()
                return False
            log.info("lease renewal failed; will retry", partition=partition, error=str(exc))
            return True
        if partition in self.held:  # not dropped (by a failed save) while the renewal was in flight
            self._deadline[partition] = sent + self.lease_duration - self.margin
        wanted_by = lease.pending_owner
        if wanted_by and wanted_by != self.owner:
            deadline = self.deadline(partition)
            self.drop(partition)  # stop writing first; the coordinator hands it over once the writes are done
            self.handoffs.append((lease, wanted_by, deadline))
            return False
        return True

    async def give_up(self, lease: Lease, reason: str, to: str | None = None) -> None:
        """Free a lease already dropped (or hand it to `to`), counted as a release by `reason`. A write of ours
        that landed without its answer reaching us (a renewal cancelled in flight) moved the counter: while the
        table still names us, release at its counter. One another instance holds by now counts as lost."""
        for _ in range(3):
            try:
                await self.store.release(lease, to=to)
            except LeaseLost as exc:
                if exc.actual_owner != self.owner or exc.actual_counter is None:
                    self._lost()
                    return  # someone else's now: nothing to release
                if lease.partition in self.held:
                    return  # taken again meanwhile (a new counter): ours and held, not ours to give away
                lease.counter = exc.actual_counter
                continue
            if self.metrics is not None:
                self.metrics.released[reason].inc()
            return

    def _lost(self) -> None:
        if self.metrics is not None:
            self.metrics.losses.inc()


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
        metrics: LeaseMetrics | None = None,
    ) -> None:
        self.store, self.source, self.owner = store, source, owner
        self.lease_duration, self.max_steal, self.steal_tolerance = lease_duration, max_steal, steal_tolerance
        self.clock = clock
        self.metrics = metrics
        self._seen: dict[str, tuple[str | None, int, float]] = {}  # partition -> (owner, counter, since)
        self.takes = 0
        self.steals = 0
        self.rounds = 0  # take rounds that listed the table
        self.last_seen: list[Lease] = []  # the table as the last round saw it (taken leases as taken), by partition
        self.ready_unowned = 0  # partitions the last round left free or expired and ready to take (0: all placed)
        self._unowned_since: dict[str, float] = {}  # takeable partition -> monotonic time it lost its owner

    def expired(self, lease: Lease, now: float) -> bool:
        """Free, or its counter has stood still for `lease_duration` as this instance watched it."""
        seen = self._seen.get(lease.partition)
        return lease.owner is None or seen is None or now - seen[2] >= self.lease_duration

    def unowned_seconds(self) -> float:
        """How long the longest unowned takeable partition of the last round has been owned by nobody."""
        if not self._unowned_since:
            return 0.0
        return max(0.0, self.clock() - min(self._unowned_since.values()))

    def others_hold_everything(self, held: Mapping[str, Lease]) -> bool:
        """This instance holds nothing, and its last round saw unfinished partitions, every one owned by another
        instance whose lease has not expired: it has nothing to apply (a standby's idea of idle). A table with
        no unfinished partition yet (a source that has not registered its shards) is not idle."""
        active = [lease for lease in self.last_seen if not lease.shard_end]
        if held or not active:
            return False
        now = self.clock()
        return all(
            lease.owner is not None and lease.owner != self.owner and not self.expired(lease, now) for lease in active
        )

    async def take_round(
        self, held: Mapping[str, Lease], handing_over: Set[str] = frozenset()
    ) -> list[tuple[Lease, float]]:
        """One round: returns the leases taken, each with the monotonic time its take was sent. A lease this
        instance is handing over (dropped, not released yet) still names it in the table but is not taken again."""
        leases = await self.store.list_leases(self.source)
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
            return self.expired(lease, now)

        def ready(lease: Lease) -> bool:
            parents = (by_partition.get(p) for p in lease.parents)
            return all(parent is None or parent.shard_end for parent in parents)

        self.rounds += 1
        self._observe(leases, now, expired, ready)  # before taking: a take that fails leaves the view in place

        mine = [lease for lease in active if lease.partition in held]
        handed = [
            lease
            for lease in active
            if lease.owner == self.owner and lease.partition not in held and lease.partition not in handing_over
        ]
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
        if taken:
            copies = {lease.partition: replace(lease) for lease, _ in taken}  # the held ones change as they renew
            for lease in copies.values():
                self._seen[lease.partition] = (lease.owner, lease.counter, now)
            self._observe([copies.get(lease.partition, lease) for lease in leases], now, expired, ready)
            if self.metrics is not None:
                self.metrics.acquired.inc(len(taken))
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
                if self.metrics is not None:
                    self.metrics.steals.inc()
            except LeaseLost:
                continue
        return taken

    def _observe(
        self, leases: list[Lease], now: float, expired: Callable[[Lease], bool], ready: Callable[[Lease], bool]
    ) -> None:
        """Remember this round's view of the table: `last_seen`, the partitions by state, and since when each
        takeable partition has been owned by nobody."""
        self.last_seen = sorted(leases, key=lambda lease: lease.partition)
        states: Counter[str] = Counter()
        unowned: dict[str, float] = {}
        for lease in leases:
            if lease.shard_end:
                states["finished"] += 1
            elif not expired(lease):
                states["owned"] += 1
            elif not ready(lease):
                states["waiting"] += 1
            else:
                states["unowned"] += 1
                since = self._seen[lease.partition][2]
                unowned[lease.partition] = since if lease.owner is None else since + self.lease_duration
        self._unowned_since = unowned
        if self.metrics is not None:
            for state, gauge in self.metrics.partitions.items():
                gauge.set(states[state])


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
        metrics: Metrics | None = None,
    ) -> None:
        if 2 * renew_interval > lease_duration - margin:
            raise ValueError("renew_interval should be at most half of lease_duration - margin")
        self.store, self.source = store, source
        self.owner = owner or new_owner_id()
        self.renew_interval, self.take_interval = renew_interval, take_interval
        self.metrics = LeaseMetrics(source, metrics)
        self.renewer = LeaseRenewer(
            store, self.owner, lease_duration=lease_duration, margin=margin, clock=clock, metrics=self.metrics
        )
        self.renewer.skip_after_write = renew_interval
        self.taker = LeaseTaker(
            store,
            source,
            self.owner,
            lease_duration=lease_duration,
            max_steal=max_steal,
            steal_tolerance=steal_tolerance,
            clock=clock,
            metrics=self.metrics,
        )
        self.metrics.held.set_function(lambda: len(self.renewer.held))
        self.metrics.duration.set(lease_duration)
        self.metrics.unowned_seconds.set_function(lambda: 0.0 if self._closed else self.taker.unowned_seconds())
        self.on_change = on_change  # told the held partitions whenever they change (the source reads those)
        # Returns once nothing of this process writes the partition any more (the pipeline's `quiesce`).
        self.quiesce: Callable[[str], Awaitable[None]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._take_now = asyncio.Event()  # a lease was freed here: look for work without waiting a whole interval
        self._wakes = 0  # `wake` calls so far
        self._wakes_seen = 0  # of those, the ones a take round that ended had started after
        # Hand-overs in progress, by partition: those are not taken back by our own take rounds.
        self._handovers: dict[str, asyncio.Task[None]] = {}

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

    def now(self) -> float:
        """This coordinator's monotonic clock (`daemon.leases.monotonic`)."""
        return self.renewer.clock()

    def written(self, partition: str, sent_at: float) -> None:
        """A conditional checkpoint write of `partition`, sent at `now()` = `sent_at`, landed (it renews)."""
        self.renewer.written(partition, sent_at)

    def deadline(self, partition: str) -> float | None:
        """The monotonic time (`daemon.leases.monotonic`) from which `partition` may no longer be written."""
        return self.renewer.deadline(partition)

    def view(self) -> list[dict[str, Any]]:
        """Every partition of the source as the last take round saw the table (a held lease as it is now), for
        `/status`: partition, owner, held_by_me, position (the checkpoint, a list) and pending_owner."""
        held = self.renewer.held
        rows = []
        for seen in self.taker.last_seen:
            lease = held.get(seen.partition, seen)
            rows.append(
                {
                    "partition": lease.partition,
                    "owner": lease.owner,
                    "held_by_me": lease.partition in held,
                    "position": list(lease.position) if lease.position is not None else None,
                    "pending_owner": lease.pending_owner,
                }
            )
        return rows

    def standby_idle(self) -> bool:
        """Nothing for this instance to apply: it holds no lease and, in its last take round, every unfinished
        partition had another live owner (`run --exit-when-idle` counts such a source as idle)."""
        return self.taker.others_hold_everything(self.renewer.held)

    async def lease_lost(self, partition: str) -> None:
        """A conditional write found the lease gone (`LeaseLost`): stop writing the partition at once."""
        if self.renewer.drop(partition) is not None:
            self.metrics.losses.inc()
            await self._changed()

    @property
    def take_pending(self) -> bool:
        """`wake` asked for a take round that has not ended yet."""
        return self._wakes != self._wakes_seen

    def wake(self) -> None:
        """Run a take round now (new leases were registered, or one was freed here)."""
        self._wakes += 1
        self._take_now.set()

    async def finished(self, partition: str) -> None:
        """The partition was read to its end and that end checkpointed (`SHARD_END`): release it at once, so its
        children become ready, and look for them now rather than at the next take round."""
        lease = self.renewer.drop(partition)
        if lease is None:
            return
        await self.renewer.give_up(lease, "shard_end")
        self.wake()
        await self._changed()

    async def renew_once(self) -> None:
        if self.renewer.held and await self.renewer.renew_all():
            await self._changed()
        handoffs, self.renewer.handoffs = self.renewer.handoffs, []
        for lease, wanted_by, deadline in handoffs:  # each in its own task: renewals never wait for a hand-over
            task = asyncio.create_task(self._hand_over(lease, wanted_by, deadline), name=f"hand-over:{lease.partition}")
            self._handovers[lease.partition] = task
            task.add_done_callback(lambda _, partition=lease.partition: self._handovers.pop(partition, None))

    async def handovers_done(self) -> None:
        """Wait for the hand-overs in progress (tests; `stop` does it for a drain)."""
        await asyncio.gather(*self._handovers.values(), return_exceptions=True)

    async def _hand_over(self, lease: Lease, wanted_by: str, deadline: float | None) -> None:
        """Release a lease another instance asked for, once this process's writes to it are done (`quiesce`: a
        batch call sent before the drop may still be in flight). One still busy at its deadline is not
        released: it expires, by which time every call of ours was abandoned."""
        if self.quiesce is not None:
            try:
                wait = 0.0 if deadline is None else max(0.0, deadline - self.renewer.clock())
                await asyncio.wait_for(self.quiesce(lease.partition), wait)
            except TimeoutError:
                log.warning("lease not handed over: writes still in flight at its deadline; it will expire",
                            source=lease.source, partition=lease.partition)  # fmt: skip
                self.metrics.losses.inc()
                return
        if lease.shard_end:  # its end was checkpointed while the hand-over waited: free it (children become ready)
            await self.renewer.give_up(lease, "shard_end")
            self.wake()
            return
        self.renewer.handed_off += 1
        await self.renewer.give_up(lease, "handoff", wanted_by)

    async def take_once(self) -> None:
        wakes = self._wakes
        # Dropped for a hand-over: its task starts once the whole renewal round has answered, the lease still
        # names us meanwhile and is not ours to take back.
        handing_over = self._handovers.keys() | {lease.partition for lease, _, _ in self.renewer.handoffs}
        taken = await self.taker.take_round(self.renewer.held, handing_over)
        for lease, sent in taken:
            self.renewer.adopt(lease, sent)
        if taken:
            await self._changed()
        self._wakes_seen = wakes  # the round saw what the wakes before it were for

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
        if release:  # a drain: nothing is written any more, so hand-overs in progress finish at once
            await self.handovers_done()
        else:
            for task in list(self._handovers.values()):
                task.cancel()
            await asyncio.gather(*self._handovers.values(), return_exceptions=True)
        if release:
            for partition in list(self.renewer.held):
                lease = self.renewer.drop(partition)
                if lease is not None:
                    await self.renewer.give_up(lease, "drain")
            await self._release_strays()

    async def _release_strays(self) -> None:
        """Release what the table names us owner of without our knowing: a take cancelled in flight by the drain
        (its conditional write may still land) would otherwise keep its partition from the others until it
        expires. Nothing of it was read or written, so it is free to give up."""
        try:
            leases = await self.store.list_leases(self.source)
        except Exception as exc:
            log.warning("leases not re-read at drain; any taken in flight expire", source=self.source,
                        error=f"{type(exc).__name__}: {str(exc)[:300]}")  # fmt: skip
            return
        for lease in leases:
            if lease.owner == self.owner:
                log.info("releasing a lease taken in flight at drain", source=self.source, partition=lease.partition)
                try:
                    await self.renewer.give_up(lease, "drain")
                except Exception as exc:
                    log.warning("lease not released at drain; it expires", source=self.source,
                                partition=lease.partition, error=f"{type(exc).__name__}: {str(exc)[:300]}")  # fmt: skip

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
