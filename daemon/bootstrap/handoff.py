"""Where `graph-replicator bootstrap` hands its stream positions to `run`: the checkpoint store of the config.

Room in the design: the last step of the bootstrap (`daemon.bootstrap.runner`), for either store.

* SQLite: the positions are written as the source's checkpoints in the data directory's file (the bootstrap
  holds the data-directory lock, so no `run` shares it).
* DynamoDB (`[checkpoint] kind = "dynamodb"`): the positions are written into the lease table as free leases
  holding those checkpoints, so whichever instance takes a lease first continues from the hand-off. Instances
  on other hosts may be running: before the copy, a lease owned by a live instance (its counter moves while the
  bootstrap watches it for one lease duration, the rule every instance uses to judge expiry) refuses the
  bootstrap unless `--force`; an owner that stopped renewing is dead and its lease is simply replaced. The
  hand-off write is conditional on the counters seen then, so an instance that takes a lease during the copy
  makes the hand-off fail instead of being overwritten. `--force` writes regardless: a live owner's next
  renewal or checkpoint then fails (the counter moved), it stops writing the partition, and takes the freed
  lease again from the handed-off position.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Protocol

import structlog

from daemon.bootstrap.records import BootstrapConfigError, BootstrapError
from daemon.checkpoint import SQLiteCheckpointStore
from daemon.config import Config, DynamoDBCheckpointConfig
from daemon.leases import Lease, LeaseLost
from daemon.model import Position

if TYPE_CHECKING:
    from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore

log = structlog.get_logger("daemon.bootstrap")


class HandOff(Protocol):
    where: str  # the store, for messages

    async def existing(self) -> dict[str, Position]:
        """The source's checkpoints already in the store."""

    async def check_owners(self, force: bool) -> None:
        """Refuse (`BootstrapConfigError`) while another process replicates the source, unless `force`."""

    async def write(self, positions: dict[str, Position]) -> None:
        """Record `positions` as the source's checkpoints, where `run` starts from."""


async def open_handoff(stack: AsyncExitStack, config: Config, source: str) -> HandOff:
    """The config's checkpoint store, ready for a bootstrap of `source` (closed with `stack`)."""
    if isinstance(config.checkpoint, DynamoDBCheckpointConfig):
        from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore

        cfg = config.checkpoint
        store = await DynamoDBCheckpointStore.open(
            stack, table=cfg.table, region=cfg.region, endpoint=str(cfg.endpoint) if cfg.endpoint else None
        )
        return LeaseTableHandOff(store, source, cfg)
    path = config.checkpoint_path
    if path is None:
        raise BootstrapConfigError("checkpoint.kind: bootstrap hands its position to a SQLite or DynamoDB store")
    sqlite = SQLiteCheckpointStore(path)
    stack.callback(sqlite.close)
    return SQLiteHandOff(sqlite, source)


class SQLiteHandOff:
    def __init__(self, store: SQLiteCheckpointStore, source: str) -> None:
        self.store, self.source, self.where = store, source, str(store.path)

    async def existing(self) -> dict[str, Position]:
        return self.store.load(self.source)

    async def check_owners(self, force: bool) -> None:
        return None  # the data-directory lock the bootstrap holds keeps `run` away

    async def write(self, positions: dict[str, Position]) -> None:
        await self.store.save_many(self.source, positions)


class LeaseTableHandOff:
    def __init__(self, store: DynamoDBCheckpointStore, source: str, cfg: DynamoDBCheckpointConfig) -> None:
        self.store, self.source, self.cfg = store, source, cfg
        self.where = f"the lease table {cfg.table!r}"
        self.force = False
        self._seen: dict[str, Lease] = {}  # the leases when their owners were judged

    async def existing(self) -> dict[str, Position]:
        return await self.store.load(self.source)

    async def check_owners(self, force: bool) -> None:
        """Watch the owned leases for up to one lease duration: a counter that moves is a live owner."""
        from daemon.checkpoint_dynamodb import watch_owners

        self.force = force
        owners = sorted({lease.owner for lease in await self.store.list_leases(self.source) if lease.owner})
        if owners:
            log.info(
                "bootstrap: watching the lease table to see whether the owners of the source's leases are alive",
                source=self.source,
                owners=owners,
                seconds=self.cfg.lease_duration_seconds,
            )
        live, self._seen = await watch_owners(
            self.store, self.source, self.cfg.lease_duration_seconds, poll=self.cfg.renew_interval_seconds / 2
        )
        if not live:
            return
        held = ", ".join(f"{lease.partition or 'stream'} by {lease.owner}" for lease in live)
        if not force:
            raise BootstrapConfigError(
                f"source {self.source!r} is being replicated: its leases in {self.where} are held by live "
                f"instances ({held}; renewed while bootstrap watched). Stop every `graph-replicator run` of this "
                "source first, or pass --force to take the leases from them at the hand-off (they stop writing "
                "and continue from the handed-off position)."
            )
        log.warning("bootstrap --force: live instances hold the leases; they are replaced at the hand-off", held=held)

    async def write(self, positions: dict[str, Position]) -> None:
        """Each position as a free lease holding it (`DynamoDBCheckpointStore.overwrite`: counter bumped, owner
        removed), conditional on the counter seen when the owners were judged; with `--force`, on the counter
        read just before (a live owner's renewal in between is retried a few times)."""
        for partition, position in positions.items():
            lost: LeaseLost | None = None
            for _ in range(5 if self.force else 1):
                lease = await self.store.get_lease(self.source, partition) if self.force else self._seen.get(partition)
                try:
                    await self.store.overwrite(self.source, partition, position, lease.counter if lease else None)
                    break
                except LeaseLost as exc:
                    lost = exc
            else:
                assert lost is not None
                raise BootstrapError(
                    f"an instance took the lease of partition {partition or 'stream'!r} of source {self.source!r} "
                    f"(owner {lost.actual_owner}) while bootstrap ran: stop every `graph-replicator run` of this "
                    "source and bootstrap again (or pass --force)"
                ) from lost
        log.info("bootstrap: positions written as free leases", source=self.source, table=self.cfg.table)
