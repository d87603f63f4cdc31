"""Disk spools: records that must wait until a bootstrap stage is over, as JSON lines in a temporary file.

Room in the design: bootstrap side channels. `ChangeSpool` holds the *residual*, what the CSV files cannot
carry, until the loader is done (`daemon.bootstrap.csv_files`); the DynamoDB snapshot reader holds edge items
in a `Spool` of its own until the vertex pass is over (`daemon.bootstrap.dynamodb_reader`). Records go to disk,
so a large snapshot does not grow the process, and come back in chunks, in the order they were written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson

from daemon.model import GraphChange, Position

T = TypeVar("T")


class Spool(Generic[T]):
    """Records of one kind as JSON lines; a subclass says how a record becomes a JSON list and back."""

    def __init__(self, directory: Path | None = None, *, name: str) -> None:
        fd, path = tempfile.mkstemp(prefix=f"bootstrap-{name}-", suffix=".jsonl", dir=directory)
        self.path = Path(path)
        self._file = os.fdopen(fd, "wb")
        self.count = 0

    def encode(self, record: T) -> list[Any]:
        raise NotImplementedError

    def decode(self, fields: list[Any]) -> T:
        raise NotImplementedError

    def add(self, records: list[T]) -> None:
        self._file.write(b"".join(orjson.dumps(self.encode(r)) + b"\n" for r in records))
        self.count += len(records)

    def chunks(self, size: int) -> Iterator[list[T]]:
        """Everything added, in order, `size` records at a time."""
        self._file.flush()
        chunk: list[T] = []
        with open(self.path, "rb") as fh:
            for line in fh:
                chunk.append(self.decode(orjson.loads(line)))
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ChangeSpool(Spool[GraphChange]):
    def __init__(self, directory: Path | None = None, *, name: str = "residual") -> None:
        super().__init__(directory, name=name)

    def encode(self, c: GraphChange) -> list[Any]:
        return [c.kind, c.add, c.id, c.key, c.value, c.from_id, c.to_id, list(c.position)]

    def decode(self, fields: list[Any]) -> GraphChange:
        kind, add, element_id, key, value, from_id, to_id, position = fields
        pos: Position = tuple(position)
        return GraphChange(kind, add, element_id, key, value, from_id, to_id, position=pos)
