"""Leases: who may read a source partition and move its checkpoint (DESIGN, "Shared state and leases").

Room in the design: the vocabulary every checkpoint store shares. A `Lease` is one (source, partition) item as
the store holds it: owner, counter, heartbeat, parent partitions and the checkpointed position (`SHARD_END` for a
DynamoDB shard read to its end). `LeaseStore` is the interface the pipeline and the `LeaseCoordinator` use;
every write of a store that several processes share is conditional on the lease's owner and counter, and a
failed condition raises `LeaseLost`. `SQLiteCheckpointStore` (one owner: the data-directory lock) implements it
through `SQLiteLeaseStore`, whose leases are always held; `DynamoDBCheckpointStore` implements it for real.

Partition names: the whole stream of a Neptune source is partition `""`; a DynamoDB shard is its shard id.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from daemon.model import SHARD_END, Position


def new_owner_id() -> str:
    """An owner id unique to this process start: host, pid and 8 random hex digits (a restarted process, even
    with the same pid, never mistakes a lease of its previous life for its own)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def monotonic() -> float:
    """Seconds on a clock that never jumps and keeps counting while the host is suspended (CLOCK_BOOTTIME on
    Linux): a lease deadline must expire during a suspend too, since other instances' clocks keep running."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


@dataclass(slots=True)
class Lease:
    """One (source, partition) lease as last read or written by this process."""

    source: str
    partition: str
    owner: str | None = None  # None: free
    counter: int = 0  # bumped by every take, renew, release and hand-off; saves are conditional on it
    heartbeat: float = 0.0  # wall-clock epoch seconds of the last owner write: for people, never for expiry
    parents: tuple[str, ...] = ()  # parent shard ids (DynamoDB lineage); read a child after its parents end
    position: Position | None = None  # the checkpoint; None before the first save
    pending_owner: str | None = None  # an instance that asked for this lease (a steal waiting for hand-off)
    branches: dict[str, Position] = field(default_factory=dict)  # a shared shard's event sinks' positions (by sink)

    @property
    def shard_end(self) -> bool:
        """The partition was read to its end and applied: nobody needs to hold it any more."""
        return self.position == SHARD_END

    def held_by(self, owner: str) -> bool:
        return self.owner == owner


class LeaseLost(Exception):
    """A conditional write found the lease no longer ours: another instance took it, or it changed under us.
    The caller must stop writing the partition at once."""

    def __init__(
        self,
        source: str,
        partition: str,
        expected_owner: str | None,
        actual_owner: str | None,
        expected_counter: int | None = None,
        actual_counter: int | None = None,
    ) -> None:
        self.source, self.partition = source, partition
        self.expected_owner, self.actual_owner = expected_owner, actual_owner
        self.expected_counter, self.actual_counter = expected_counter, actual_counter
        super().__init__(
            f"lease lost on {source!r} partition {partition!r}: expected owner {expected_owner!r} "
            f"counter {expected_counter}, the table has owner {actual_owner!r} counter {actual_counter}"
        )


class FencedOff(Exception):
    """This process may no longer write a partition (its lease is lost, or its write deadline passed): its sink
    writes stop at once, and nothing more of it is checkpointed."""


class LeaseStore(Protocol):
    """Checkpoints as operations of a lease holder. `save_many` and `forget` need the caller's current lease of
    each partition (the coordinator's `held`); a store shared between processes refuses them with `LeaseLost`
    when the lease moved."""

    async def load(self, source: str) -> dict[str, Position]: ...

    async def save_many(self, source: str, positions: dict[str, Position], leases: Mapping[str, Lease]) -> None: ...

    async def forget(self, source: str, partitions: list[str], leases: Mapping[str, Lease]) -> None: ...

    async def ensure_leases(
        self,
        source: str,
        partitions: Mapping[str, tuple[str, ...]],
        positions: Mapping[str, Position] | None = None,
    ) -> None: ...

    async def list_leases(self, source: str) -> list[Lease]: ...

    async def take(self, source: str, partition: str, owner: str, expected_counter: int) -> Lease: ...

    async def renew(self, lease: Lease) -> Lease: ...

    async def release(self, lease: Lease, to: str | None = None) -> None: ...

    async def steal(self, source: str, partition: str, owner: str, victim: str, expected_counter: int) -> Lease: ...
