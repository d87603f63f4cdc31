"""The dead-letter file: changes the daemon gave up on, with their position and the reason, one JSON per line.

Nothing is dropped silently: a record that cannot be translated, or a change the sink rejects for good after
bisection, is appended here (and fsynced) before the checkpoint may move past it (DESIGN rule 6).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson


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
            lines.append(orjson.dumps(line, option=orjson.OPT_NON_STR_KEYS, default=repr) + b"\n")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.writelines(lines)
                fh.flush()
                os.fsync(fh.fileno())
            self.count += len(lines)
