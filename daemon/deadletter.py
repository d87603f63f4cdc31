"""The dead-letter file: changes the daemon gave up on, with their position and the reason, one JSON per line.

Nothing is dropped silently: a record that cannot be translated, or a change the sink rejects for good after
bisection, is appended here (and fsynced) before the checkpoint may move past it (DESIGN rule 6).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from daemon.values import show


class DeadLetterFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.count = 0

    def write(self, *, stage: str, source: str, reason: str, entries: list[dict[str, Any]], **extra: Any) -> None:
        """Append one line per entry; each names its stage (translate | apply), source, reason and position."""
        now = time.time()
        lines = []
        for entry in entries:
            line = {"time": now, "stage": stage, "source": source, "reason": reason, **extra, **entry}
            lines.append(_encode(line) + b"\n")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.writelines(lines)
                fh.flush()
                os.fsync(fh.fileno())
            self.count += len(lines)


def _encode(line: dict[str, Any]) -> bytes:
    """One JSON line, whatever the rejected record holds.

    Records parsed by the standard library (botocore) can hold what orjson refuses: integers beyond 64 bits and
    lone surrogates (`\\ud800` escapes). The standard encoder writes both (surrogates as escapes again); a
    record nested too deep for either is kept as a bounded repr. A dead letter that cannot be written would
    stop the source on the record it was setting aside, again after every restart.
    """
    try:
        return orjson.dumps(line, option=orjson.OPT_NON_STR_KEYS, default=repr)
    except TypeError:
        pass
    try:
        return json.dumps(line, default=repr).encode()
    except (TypeError, ValueError, RecursionError):
        safe = {str(k): v if v is None or isinstance(v, str | int | float) else show(v) for k, v in line.items()}
        return json.dumps(safe, default=repr).encode()
