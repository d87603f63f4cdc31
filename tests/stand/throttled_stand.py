"""A Neptune stand whose openCypher endpoint can be slowed to a fixed number of rows per second (benchmarks).

`ThrottledStand.throttle(rows_per_second)` makes every query wait for a token bucket that refills at that rate
before it runs; a query costs as many tokens as the rows of its `UNWIND` list (the first list among its
parameters; 1 for a query without one). `throttle(None)` lifts the limit at once (waiting queries go on).
The bucket holds at most one second of tokens, so a slowed endpoint never bursts far above its rate.
`rows` and `queries` count what was executed (by statement head, e.g. "UNWIND $rows AS r MERGE").

`fsync` sets the engine's appendfsync (default "everysec", where the plain stand fsyncs every write: with
`always`, a benchmark that drains a large backlog through the stand waits mostly for the disk).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from daemon.engine import EmbeddedFalkorDB
from tests.stand.neptune_endpoint import NeptuneStand

__all__ = ["ThrottledStand"]


def _rows_of(parameters: dict[str, Any]) -> int:
    for value in parameters.values():
        if isinstance(value, list):
            return max(1, len(value))
    return 1


class ThrottledStand(NeptuneStand):
    def __init__(self, *args: Any, fsync: str = "everysec", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine = EmbeddedFalkorDB(self.data_dir / "engine", fsync=fsync)
        self._rate: float | None = None
        self._tokens = 0.0
        self._refilled = time.monotonic()
        self._bucket_lock: asyncio.Lock | None = None
        self.rows: Counter[str] = Counter()
        self.queries: Counter[str] = Counter()

    def throttle(self, rows_per_second: float | None) -> None:
        """Limit executed rows per second (None: no limit)."""
        self._rate = rows_per_second
        self._tokens = 0.0
        self._refilled = time.monotonic()

    async def _take(self, rows: int) -> None:
        if self._bucket_lock is None:
            self._bucket_lock = asyncio.Lock()
        async with self._bucket_lock:  # first come, first served
            while self._rate is not None:
                now = time.monotonic()
                self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
                self._refilled = now
                if self._tokens >= rows or (rows > self._rate and self._tokens >= self._rate):
                    self._tokens -= rows
                    return
                await asyncio.sleep(min(0.05, (rows - self._tokens) / self._rate))

    async def _execute(self, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        rows = _rows_of(parameters)
        await self._take(rows)
        head = " ".join(query.split()[:5])
        self.rows[head] += rows
        self.queries[head] += 1
        return await super()._execute(query, parameters)
