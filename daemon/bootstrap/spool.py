"""A disk spool of change records: what the CSV files cannot carry waits here until the loader is done.

Room in the design: bootstrap step 3's side channel (the *residual*, see `daemon.bootstrap.csv_files`). Changes
are appended as JSON lines to a temporary file, so a graph with many such values does not grow the process, and
read back in chunks, in the order they were written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson

from daemon.model import GraphChange, Position


class ChangeSpool:
    def __init__(self, directory: Path | None = None, *, name: str = "residual") -> None:
        fd, path = tempfile.mkstemp(prefix=f"bootstrap-{name}-", suffix=".jsonl", dir=directory)
        self.path = Path(path)
        self._file = os.fdopen(fd, "wb")
        self.count = 0

    def add(self, changes: list[GraphChange]) -> None:
        self._file.write(
            b"".join(
                orjson.dumps([c.kind, c.add, c.id, c.key, c.value, c.from_id, c.to_id, list(c.position)]) + b"\n"
                for c in changes
            )
        )
        self.count += len(changes)

    def chunks(self, size: int) -> Iterator[list[GraphChange]]:
        """Everything added, in order, `size` changes at a time."""
        self._file.flush()
        chunk: list[GraphChange] = []
        with open(self.path, "rb") as fh:
            for line in fh:
                kind, add, element_id, key, value, from_id, to_id, position = orjson.loads(line)
                pos: Position = tuple(position)
                chunk.append(GraphChange(kind, add, element_id, key, value, from_id, to_id, position=pos))
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)
