"""Checkpoints: per source and partition, the low watermark of applied positions (DESIGN rule 2).

The pipeline writes a position only after every change at or before it has been applied and acknowledged by
the sink, or written to the dead-letter file. The SQLite store keeps one row per (source, partition) in WAL
mode with `synchronous=FULL`, so a checkpoint that was written survives a crash of the process or the host.
It has one owner, the holder of the data-directory lock (`daemon.datadir`); `SQLiteLeaseStore` presents it
through the shared `LeaseStore` interface (`daemon.leases`) with every lease held by that one owner, so code
written for the shared DynamoDB store runs on it unchanged.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

import orjson

from daemon.leases import Lease, new_owner_id
from daemon.model import Position

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    source     TEXT NOT NULL,
    partition  TEXT NOT NULL,
    position   TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, partition)
)
"""


class SQLiteCheckpointStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._lock = asyncio.Lock()

    def load(self, source: str) -> dict[str, Position]:
        """Every partition's checkpointed position for `source`."""
        rows = self._db.execute("SELECT partition, position FROM checkpoints WHERE source = ?", (source,))
        return {partition: tuple(orjson.loads(position)) for partition, position in rows}

    async def save(self, source: str, partition: str, position: Position) -> None:
        await self.save_many(source, {partition: position})

    async def save_many(self, source: str, positions: dict[str, Position]) -> None:
        """Write several partitions' positions in one transaction (a window spans several DynamoDB shards)."""
        async with self._lock:
            await asyncio.to_thread(self._save, source, positions)

    async def forget(self, source: str, partitions: list[str]) -> None:
        """Drop the rows of partitions that no longer exist (DynamoDB shards trimmed after they were finished),
        in one transaction. The pipeline calls it with what the source's `take_forgotten` hands out."""
        async with self._lock:
            await asyncio.to_thread(self._forget, source, partitions)

    def _forget(self, source: str, partitions: list[str]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "DELETE FROM checkpoints WHERE source = ? AND partition = ?",
                [(source, partition) for partition in partitions],
            )

    def _save(self, source: str, positions: dict[str, Position]) -> None:
        now = time.time()
        rows = [(source, part, orjson.dumps(list(pos)).decode(), now) for part, pos in positions.items()]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO checkpoints (source, partition, position, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (source, partition) DO UPDATE SET position = excluded.position, "
                "updated_at = excluded.updated_at",
                rows,
            )

    def close(self) -> None:
        self._db.close()


class SQLiteLeaseStore:
    """`SQLiteCheckpointStore` as a `LeaseStore`: one owner (this process, by the data-directory lock), so every
    lease is always held, takes and renewals always succeed and nothing is ever stolen."""

    def __init__(self, store: SQLiteCheckpointStore, owner: str | None = None) -> None:
        self.store = store
        self.owner = owner or new_owner_id()
        self._parents: dict[tuple[str, str], tuple[str, ...]] = {}

    async def load(self, source: str) -> dict[str, Position]:
        return self.store.load(source)

    async def save_many(
        self, source: str, positions: dict[str, Position], leases: Mapping[str, Lease] | None = None
    ) -> None:
        await self.store.save_many(source, positions)
        for partition, position in positions.items():
            if leases and partition in leases:
                leases[partition].position = tuple(position)

    async def forget(self, source: str, partitions: list[str], leases: Mapping[str, Lease] | None = None) -> None:
        await self.store.forget(source, partitions)

    async def ensure_leases(
        self,
        source: str,
        partitions: Mapping[str, tuple[str, ...]],
        positions: Mapping[str, Position] | None = None,
    ) -> None:
        for partition, parents in partitions.items():
            self._parents.setdefault((source, partition), tuple(parents))

    async def list_leases(self, source: str) -> list[Lease]:
        positions = self.store.load(source)
        names = set(positions) | {p for s, p in self._parents if s == source}
        return [self._lease(source, p, positions.get(p)) for p in sorted(names)]

    async def take(self, source: str, partition: str, owner: str, expected_counter: int) -> Lease:
        return self._lease(source, partition, self.store.load(source).get(partition))

    async def renew(self, lease: Lease) -> Lease:
        lease.heartbeat = time.time()
        return lease

    async def release(self, lease: Lease, to: str | None = None) -> None:
        return None

    async def steal(self, source: str, partition: str, owner: str, victim: str, expected_counter: int) -> Lease:
        return await self.take(source, partition, owner, expected_counter)

    def _lease(self, source: str, partition: str, position: Position | None) -> Lease:
        parents = self._parents.get((source, partition), ())
        return Lease(source, partition, self.owner, 1, time.time(), parents, position)
