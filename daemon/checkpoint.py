"""Checkpoints: per source and partition, the low watermark of applied positions (DESIGN rule 2).

The pipeline writes a position only after every change at or before it has been applied and acknowledged by
the sink, or written to the dead-letter file. The SQLite store keeps one row per (source, partition) in WAL
mode with `synchronous=FULL`, so a checkpoint that was written survives a crash of the process or the host.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import orjson

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
