"""Snapshot quads -> rolled, gzipped N-Quads files for the Neptune bulk loader (`format = "nquads"`).

Room in the design: bootstrap step 3 for RDF sources going into a Neptune cluster, the twin of
`daemon.bootstrap.csv_files`. Quads arrive as the replica holds them (blank nodes skolemised, the default graph
as the default graph: a line without a graph, which the loader puts into Neptune's `DefaultNamedGraph`, where a
streamed `INSERT DATA` without `GRAPH` writes too). Lines are serialised by pyoxigraph (N-Quads escapes are its
own), a file is closed at `file_max_bytes` of text, gzipped in a worker thread and uploaded while the reader goes
on (one upload in flight). N-Quads needs no residual: every quad the replica can hold has a line.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pyoxigraph import Quad, RdfFormat, serialize

QUADS = "quads"


@dataclass(slots=True)
class NQuadsFile:
    name: str  # the key under the run's prefix: quads/quads-00001.nq.gz
    data: bytes  # gzipped
    rows: int


@dataclass(slots=True)
class NQuadsStats:
    files: int = 0
    rows: int = 0
    text_bytes: int = 0
    gzip_bytes: int = 0
    encode_seconds: float = 0.0


class NQuadsSnapshotWriter:
    def __init__(self, put: Callable[[NQuadsFile], Awaitable[None]], *, file_max_bytes: int) -> None:
        self._put = put
        self.file_max_bytes = file_max_bytes
        self.stats = NQuadsStats()
        self._parts: list[bytes] = []
        self._size = 0
        self._rows = 0
        self._upload: asyncio.Task[None] | None = None

    async def add(self, quads: list[Quad]) -> None:
        if not quads:
            return
        started = time.perf_counter()
        text = serialize(quads, format=RdfFormat.N_QUADS)
        self.stats.encode_seconds += time.perf_counter() - started
        self._parts.append(text)
        self._size += len(text)
        self._rows += len(quads)
        if self._size >= self.file_max_bytes:
            await self._roll()

    async def close(self) -> None:
        if self._rows:
            await self._roll()
        await self._wait_upload()

    async def abort(self) -> None:
        if self._upload is not None:
            self._upload.cancel()
            try:
                await self._upload
            except BaseException:  # the copy failed already; its error is the one reported
                pass
            self._upload = None

    async def _roll(self) -> None:
        text, rows = b"".join(self._parts), self._rows
        self._parts, self._size, self._rows = [], 0, 0
        started = time.perf_counter()
        data = await asyncio.to_thread(gzip.compress, text, 6)
        self.stats.encode_seconds += time.perf_counter() - started
        self.stats.files += 1
        self.stats.rows += rows
        self.stats.text_bytes += len(text)
        self.stats.gzip_bytes += len(data)
        await self._wait_upload()  # one upload in flight: memory stays at about two files
        self._upload = asyncio.create_task(
            self._put(NQuadsFile(f"{QUADS}/{QUADS}-{self.stats.files:05d}.nq.gz", data, rows))
        )

    async def _wait_upload(self) -> None:
        upload, self._upload = self._upload, None
        if upload is not None:
            await upload
