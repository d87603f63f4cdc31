"""`graph-replicator capture`: copy a live Neptune property-graph stream into a file the `file` source replays.

The capture reads GetPropertygraphStream with a `neptune` source's config keys (`endpoint`, `region`,
`profile`, `start`, `limit`, the poll intervals, `request_timeout_seconds`) and the same start semantics, but
reads and writes no checkpoint. It writes one JSON line per record with the wire field names (boto3 renames
`commitTimestamp` to `commitTimestampInMillis`; it is written back as `commitTimestamp`), gzip-compressed when
the output name ends in `.gz`.

It stops after `--max-records`, when caught up (HTTP 404 `StreamRecordsNotFoundException`) with
`--until-caught-up`, or on Ctrl-C / SIGTERM. Each page is written whole between stream reads and the file is
closed on every way out (the gzip trailer included), so the output is always a complete, valid capture. A
progress line goes to stderr: updated in place on a terminal, one line every few seconds otherwise.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, Any, TextIO

import orjson
from botocore.exceptions import ClientError

from daemon.config import NeptuneSourceConfig
from daemon.model import Position, SourceStopped
from daemon.sinks.base import ErrorClass
from daemon.sources.stream_reader import open_stream_reader

EXIT_OK, EXIT_FAILED = 0, 1


class CaptureFailed(RuntimeError):
    """The stream cannot be captured (the message says why)."""


def wire_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as botocore returns it -> as Neptune sends it (`commitTimestamp`), keeping the key order."""
    if "commitTimestampInMillis" not in record:
        return record
    return {("commitTimestamp" if key == "commitTimestampInMillis" else key): value for key, value in record.items()}


def json_line(record: dict[str, Any]) -> bytes:
    """One record as a JSON line. botocore parses pages with the json module, so a record may hold what orjson
    refuses (an integer beyond 64 bits, a lone surrogate from a `\\ud800` escape): those are written by the json
    module, as the stream sent them, and the replay sets them aside as it would from the live stream."""
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError:
        pass
    try:
        return json.dumps(record).encode() + b"\n"
    except (TypeError, ValueError, RecursionError) as exc:
        raise CaptureFailed(f"record {record.get('eventId')!r} cannot be written as JSON: {exc}") from None


def _show(position: Position | None) -> str:
    return "-" if position is None else f"commitNum {position[0]}, opNum {position[1]}"


class _Progress:
    """The progress line: rewritten in place on a terminal, a new line every `interval` seconds otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = 0.25 if self._tty else 5.0
        self._started = self._shown = time.monotonic()
        self._dirty = False  # a carriage-return line is on screen

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def update(self, records: int, last: Position | None, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown < self._interval:
            return
        self._shown = now
        rate = records / max(now - self._started, 1e-6)
        text = f"captured {records:,} records, last eventId {_show(last)}, {rate:,.0f} records/s"
        if self._tty:
            self._stream.write(f"\r\x1b[K{text}")
            self._dirty = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def note(self, text: str) -> None:
        """A message on a line of its own."""
        if self._dirty:
            self._stream.write("\n")
            self._dirty = False
        self._stream.write(text + "\n")
        self._stream.flush()


class Capture:
    """One capture run; `main` is the whole command (exit status)."""

    def __init__(
        self,
        source: NeptuneSourceConfig,
        output: Path,
        *,
        max_records: int | None = None,
        until_caught_up: bool = False,
        progress: TextIO,
    ) -> None:
        self.source = source
        self.output = output
        self.max_records = max_records
        self.until_caught_up = until_caught_up
        self.records = 0
        self.last_event: Position | None = None
        self._progress = _Progress(progress)
        self._interrupted = False

    async def main(self) -> int:
        """Capture until a stop condition; report; 0 when the file is complete, 1 on a failure."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupt() -> None:
            self._interrupted = True
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        start = self.source.start if isinstance(self.source.start, str) else _show(self.source.start.position)
        self._progress.note(
            f"capturing source {self.source.name!r} ({self.source.endpoint}) from {start} into {self.output}; "
            "Ctrl-C stops"
        )
        try:
            why = await self.run()
            code = EXIT_OK
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            why, code = "interrupted", EXIT_OK
        except (CaptureFailed, OSError) as exc:
            self._progress.note(f"capture failed: {exc}")
            why, code = "failed", EXIT_FAILED
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        seconds = self._progress.elapsed()
        self._progress.update(self.records, self.last_event, force=True)
        self._progress.note(
            f"capture {why}: {self.records:,} records (last eventId {_show(self.last_event)}) written to "
            f"{self.output} in {seconds:.1f} s ({self.records / max(seconds, 1e-6):,.0f} records/s)"
        )
        return code

    async def run(self) -> str:
        """Write records until a stop condition; return which one ("reached --max-records", "caught up")."""
        async with AsyncExitStack() as stack:
            out = stack.enter_context(_open_output(self.output))
            reader = await open_stream_reader(stack, self.source, limit=self._page_limit(), on_retry=self._on_retry)
            try:
                async for page in reader.pages():
                    if page.caught_up:
                        if self.until_caught_up:
                            return "caught up"
                        self._progress.update(self.records, self.last_event)
                        continue
                    out.write(b"".join(json_line(wire_record(r)) for r in page.records))
                    out.flush()
                    self.records += len(page.records)
                    self.last_event = page.after
                    self._progress.update(self.records, self.last_event)
                    if self.max_records is not None and self.records >= self.max_records:
                        break
                    reader.limit = self._page_limit()
            except (SourceStopped, ClientError) as exc:
                raise CaptureFailed(f"stream read failed: {_describe(exc)}") from exc
            return "reached --max-records"

    def _page_limit(self) -> int:
        if self.max_records is None:
            return self.source.limit
        return min(self.source.limit, self.max_records - self.records)

    def _on_retry(self, cls: ErrorClass, attempt: int, delay: float, exc: BaseException) -> None:
        self._progress.note(f"stream read failed ({cls.reason}), retry {attempt} in {delay:.1f} s: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"
    return text[:300]


def _open_output(path: Path) -> IO[bytes]:
    """The output file, gzip-compressed when its name ends in .gz."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "wb")
    return path.open("wb")
