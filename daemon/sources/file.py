"""File source: replays Neptune property-graph change records from capture files.

Uses: the quick start (a shipped sample), replaying a captured stream into a fresh graph, reproducing a
production problem from a capture (`graph-replicator capture` writes such files).

Input: `path` is a file, or a directory whose files (names starting with "." are ignored) are read in name
order. Every line is JSON: one stream record exactly as GetPropertygraphStream returns it (`commitTimestamp`
or boto3's `commitTimestampInMillis`, `eventId`, `data`, `op`, `isLastOp`), or one whole response page
(`{"records": [...], "lastEventId": ..., ...}`). A file may be gzip, recognised by its magic bytes whatever its
name (concatenated gzip members are read on). Blank lines are ignored.

Positions are the records' own (commitNum, opNum), so checkpoints, the scheduler and the sinks work as with the
live stream: a restart skips every record at or before the checkpoint. Positions must increase through the
whole input.

A malformed line (bad JSON, a truncated or corrupt gzip stream, a record `translate_record` rejects, a position
not after the previous one, a line longer than `max_record_bytes`) is never skipped silently: with
`on_malformed = "stop"` the source raises `CaptureError` naming file:line and the reason, after handing over
everything before it, and its checkpoint stays before the line, so a rerun after a repair reads it (the
supervisor stops the source for good); with `"dead_letter"` the line goes to the dead-letter file with its file,
line, position (when known) and reason, and reading goes on (after a gzip error, with the next file). Malformed
lines before the checkpoint were handled by an earlier run and are not reported again. Of a line over the cap
only its size and first bytes are ever held, so memory stays bounded whatever the input.

At the end of the input the source hands over a caught-up marker (so `run --exit-when-idle` can exit), then
idles; with `follow` it looks for appended lines and new files every `poll_interval_seconds`. While following,
the last file may still be being written: its unfinished last line or gzip member is waited for, and only
becomes an error once a newer file appears.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog

from daemon.deadletter import DeadLetterFile
from daemon.model import ChangeBatch, GraphChange, Position, SourceStopped
from daemon.observability import SourceMetrics
from daemon.sources.pgjson import MalformedRecord, translate_record

log = structlog.get_logger("daemon.source.file")

PARTITION = ""  # a capture of a Neptune stream is one totally ordered partition, like the stream
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # raw bytes read at once
_GZIP_CHUNK = 1 << 16  # compressed bytes read at once: deflate expands at most ~1000x, so one read stays ~64 MiB
_OVERSIZED_HEAD = 256  # bytes of an oversized line kept for its dead letter
_FINE_STEP = 256  # compressed bytes fed at once to find where a corrupt gzip stream breaks


class CaptureError(SourceStopped):
    """The input cannot be read on: the message names the file, the line and the reason."""


class _BadGzip(Exception):
    """The gzip stream of a file is truncated or corrupt at `line`; nothing after it can be read."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line, self.reason = line, reason


@dataclass(slots=True)
class _Oversized:
    """A line longer than the cap: its size and its first bytes (the rest was never held in memory)."""

    size: int
    head: bytes


class _LineReader:
    """The lines of one file as they become available, gunzipped when the file starts with the gzip magic.

    A line longer than `max_bytes` comes out as `_Oversized`: past the cap its bytes are counted, not kept.

    `lines` may be called again after it ends to get lines appended since (following a growing file). A
    generator it returned must be used up before the next call: lines it holds are not handed out again.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.line_no = 0  # number of the last line handed out
        self.done = False  # read to its end as final, or broken: nothing more will come from this file
        self._file: BinaryIO | None = None
        self._gzip: bool | None = None  # unknown until the first two bytes are there
        self._inflate: Any = None  # zlib decompressor while inside a gzip member
        self._pending = b""  # bytes after the last newline
        self._oversized: _Oversized | None = None  # the line being skipped because it is over the cap

    def lines(self, final: bool) -> Iterator[tuple[int, bytes | _Oversized]]:
        """(line number, line) for each complete line not handed out yet.

        `final`: the file will not grow, so an unterminated last line is a line too, and a gzip stream that
        stops inside a member is truncated. Raises `_BadGzip` (after the lines before the damage) or OSError.
        """
        if self.done:
            return
        if self._file is None:
            self._file = self.path.open("rb")
        if self._gzip is None:
            head = self._file.read(2)
            self._file.seek(0)
            if len(head) < 2 and not final:
                return
            self._gzip = head == GZIP_MAGIC
        while raw := self._file.read(_GZIP_CHUNK if self._gzip else _CHUNK):
            data, damage = self._gunzip(raw) if self._gzip else (raw, None)
            yield from self._split(data)
            if damage is not None:
                self.done = True
                raise _BadGzip(self.line_no + 1, damage)
        if not final:
            return
        self.done = True
        if self._inflate is not None:
            raise _BadGzip(self.line_no + 1, "the gzip stream ends before its end marker (truncated file?)")
        if self._oversized is not None:
            self.line_no += 1
            yield self.line_no, self._oversized
            self._oversized = None
        elif self._pending.strip():
            line, self._pending = self._pending, b""
            self.line_no += 1
            yield self.line_no, line

    def _split(self, data: bytes) -> Iterator[tuple[int, bytes | _Oversized]]:
        """The complete lines `data` ends; what follows the last newline waits (or is counted, past the cap)."""
        if self._oversized is not None:
            end = data.find(b"\n")
            if end < 0:
                self._oversized.size += len(data)
                return
            self._oversized.size += end
            self.line_no += 1
            yield self.line_no, self._oversized
            self._oversized, data = None, data[end + 1 :]
        *complete, self._pending = (self._pending + data).split(b"\n")
        for line in complete:
            self.line_no += 1
            yield self.line_no, (line if len(line) <= self.max_bytes else _Oversized(len(line), line[:_OVERSIZED_HEAD]))
        if len(self._pending) > self.max_bytes:
            self._oversized = _Oversized(len(self._pending), self._pending[:_OVERSIZED_HEAD])
            self._pending = b""

    def _gunzip(self, raw: bytes) -> tuple[bytes, str | None]:
        """Continue the gzip stream with `raw`: the bytes it gives, and why it breaks off if it is corrupt.

        On corrupt data the piece is fed again in small steps, so that what precedes the damage is kept and the
        error names the line it is in.
        """
        out: list[bytes] = []
        step = len(raw)
        while raw:
            if self._inflate is None:
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            saved = self._inflate.copy()
            piece, rest = raw[:step], raw[step:]
            try:
                out.append(self._inflate.decompress(piece))
            except zlib.error as exc:
                if step > _FINE_STEP:
                    self._inflate, step = saved, _FINE_STEP
                    continue
                return b"".join(out), f"corrupt gzip data ({exc})"
            raw = rest
            if self._inflate.eof:  # end of a member; another may follow
                raw = self._inflate.unused_data + raw
                self._inflate = None
        return b"".join(out), None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(slots=True)
class _Item:
    """One record to take, or one line that could not be read (`error`)."""

    path: Path
    line: int
    record: Any = None
    text: bytes | None = None  # the raw line, when it is not JSON
    error: str | None = None
    where: str = ""  # "record N of the page: " for a record from a response page
    size: int | None = None  # the line's size, when it was too long to read


@dataclass(slots=True)
class _Batch:
    changes: list[GraphChange] = field(default_factory=list)
    position: Position | None = None  # the last in-order position taken, past the resume position
    taken: int = 0
    commit_complete: bool = True  # the last record taken ends its commit (isLastOp)
    at_end: bool = False  # nothing more to read for now
    error: CaptureError | None = None  # reading stops here (on_malformed = "stop")


class _Reader:
    """One pass over the input, from the start, skipping what an earlier run applied (positions <= `resume`).

    Synchronous: the source runs `next_batch` in a worker thread.
    """

    def __init__(self, source: FileSource, root: Path, resume: Position | None) -> None:
        self._source = source
        self._root = root
        self._resume = resume
        self.position: Position | None = None  # the last in-order position read (skipped records included)
        self._files: list[Path] = []  # in reading order
        self._seen: set[Path] = set()  # every file discovered, read or not
        self._index = -1  # into _files: the file being read
        self._current: _LineReader | None = None
        self._lines: Iterator[tuple[int, bytes]] | None = None
        self._page: list[Any] = []  # records of the response page being read, and where it is
        self._page_at = 0
        self._page_line = 0
        if not root.exists():
            raise CaptureError(f"source {source.name!r}: {root}: no such file or directory")
        self._discover()

    def close(self) -> None:
        if self._current is not None:
            self._current.close()

    # -- files -------------------------------------------------------------------------------------

    def _discover(self) -> list[Path]:
        """Add the files that appeared since the last look; return new ones that sort before the file being read."""
        if not self._root.is_dir():
            if not self._files:
                self._files.append(self._root)
            return []
        new = [p for p in self._root.iterdir() if p.is_file() and not p.name.startswith(".") and p not in self._seen]
        self._seen.update(new)
        read = self._files[: self._index + 1]
        late = sorted(p for p in new if read and p < read[-1])
        self._files = read + sorted(self._files[self._index + 1 :] + [p for p in new if p not in late])
        return late

    def _next_line(self) -> tuple[_LineReader, int, bytes | _Oversized] | _Item | None:
        """The next line of the input; an `_Item` with an error for unreadable data; None at the end for now."""
        while True:
            if self._lines is None:
                if self._source.follow:
                    late = self._discover()
                    if late:
                        return self._late_files(late)
                if self._current is None or self._current.done:
                    if self._index + 1 >= len(self._files):
                        return None
                    if self._current is not None:
                        self._current.close()
                    self._index += 1
                    self._current = _LineReader(self._files[self._index], self._source.max_record_bytes)
                # Only the last file of a followed input may still grow.
                final = not self._source.follow or self._index < len(self._files) - 1
                self._lines = self._current.lines(final)
            current = self._current
            assert current is not None
            try:
                for line_no, line in self._lines:
                    return current, line_no, line
            except _BadGzip as exc:
                self._lines = None
                return _Item(current.path, exc.line, error=exc.reason)
            except OSError as exc:
                self._lines, current.done = None, True
                return _Item(current.path, current.line_no + 1, error=f"cannot read the file ({exc})")
            self._lines = None
            if not current.done:
                return None  # the followed last file has nothing more for now

    def _late_files(self, late: list[Path]) -> _Item:
        names = ", ".join(p.name for p in late)
        return _Item(
            self._root,
            0,
            error=f"file(s) {names} appeared after a file that sorts after them was read; files must arrive "
            "in name order, so their records were not read",
        )

    # -- records -----------------------------------------------------------------------------------

    def _next_item(self) -> _Item | None:
        while True:
            if self._page_at < len(self._page):
                index = self._page_at
                self._page_at += 1
                where = f"record {index + 1} of the page: "
                assert self._current is not None
                return _Item(self._current.path, self._page_line, record=self._page[index], where=where)
            got = self._next_line()
            if got is None or isinstance(got, _Item):
                return got
            reader, line_no, line = got
            if isinstance(line, _Oversized):
                cap = self._source.max_record_bytes
                reason = f"the line is {line.size:,} bytes, over max_record_bytes ({cap:,}); it was not read"
                return _Item(reader.path, line_no, text=line.head, error=reason, size=line.size)
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                return _Item(reader.path, line_no, text=line, error=f"not valid JSON ({exc})")
            if isinstance(doc, dict) and isinstance(doc.get("records"), list):
                self._page, self._page_at, self._page_line = doc["records"], 0, line_no
                continue
            return _Item(reader.path, line_no, record=doc)

    def next_batch(self) -> _Batch:
        """Up to `limit` records (skipped ones not counted), stopping early at the end or a stopping error."""
        batch = _Batch()
        while batch.taken < self._source.limit:
            item = self._next_item()
            if item is None:
                batch.at_end = True
                break
            if not self._take(item, batch):
                break
        return batch

    def _take(self, item: _Item, batch: _Batch) -> bool:
        """Translate one item into the batch; False when reading must stop (an error with on_malformed = "stop")."""
        change: GraphChange | None = None
        position: Position | None = None
        reason = item.error
        if reason is None:
            if not isinstance(item.record, dict):
                reason = f"{item.where}expected a JSON object (a stream record or a response page)"
            else:
                try:
                    change = self._source.translate(item.record)
                    position = change.position
                except MalformedRecord as exc:
                    position, reason = exc.position, item.where + exc.reason
        previous, resume = self.position, self._resume
        before_resume = resume is not None and (previous is None or previous < resume)
        reached = batch.position
        if position is not None and (previous is None or position > previous):
            self.position = position
            if resume is not None and position <= resume:
                return True  # applied by an earlier run
            batch.position = position
        elif before_resume and item.line:
            return True  # read by an earlier run, which reported it (a late file, line 0, is news)
        elif position is not None:
            assert previous is not None
            reason = (
                f"{item.where}position {_show(position)} is not after the previous record's {_show(previous)} "
                "(positions must increase through the input)"
            )
        batch.taken += 1
        if reason is None:
            assert change is not None
            batch.changes.append(change)
            batch.commit_complete = item.record.get("isLastOp") is True
            return True
        if self._source.on_malformed == "stop":
            # The checkpoint must stay before the bad record, so that a rerun after the repair reads it again.
            batch.position, self.position = reached, previous
        return self._malformed(item, position, reason, batch)

    def _malformed(self, item: _Item, position: Position | None, reason: str, batch: _Batch) -> bool:
        where = f"{item.path}:{item.line}" if item.line else str(item.path)
        source = self._source
        if source.on_malformed == "stop":
            batch.error = CaptureError(
                f"source {source.name!r}: {where}: {reason}. Nothing after it was read: repair or remove the "
                'input there, or set on_malformed = "dead_letter" to set such lines aside, and run again.'
            )
            return False
        entry: dict[str, Any] = {
            "file": str(item.path),
            "line": item.line,
            "position": list(position) if position else None,
        }
        if item.record is not None:
            entry["record"] = item.record
        elif item.text is not None:
            entry["text"] = item.text.decode(errors="replace")
        if item.size is not None:
            entry["size"] = item.size
        source.dead_letter(reason, entry)
        return True


def _show(position: Position) -> str:
    return f"(commitNum {position[0]}, opNum {position[1]})"


class FileSource:
    """Reads capture files; the same interface as `NeptuneStreamSource`."""

    def __init__(
        self,
        name: str,
        *,
        path: Path,
        limit: int = 5000,
        on_malformed: str = "stop",
        follow: bool = False,
        poll_interval_seconds: float = 1.0,
        max_record_bytes: int = 16 << 20,
        dead_letters: DeadLetterFile,
        translate: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        if on_malformed not in ("stop", "dead_letter"):
            raise ValueError(f'on_malformed must be "stop" or "dead_letter", not {on_malformed!r}')
        self.name = name
        self.path = path
        self.limit = limit
        self.on_malformed = on_malformed
        self.follow = follow
        self.max_record_bytes = max_record_bytes
        # record -> change, or MalformedRecord: PG_JSON by default; a SPARQL capture's translation for RDF
        self.translate = translate or (lambda record: translate_record(record, PARTITION))
        self._poll_interval = poll_interval_seconds
        self._dead_letters = dead_letters
        self.state = "starting"
        self.head: Position | None = None  # the last position in the input, once its end was reached
        self.polling = False
        self._m = SourceMetrics(name)

    async def run(self, out: asyncio.Queue[ChangeBatch], resume: dict[str, Position]) -> None:
        """Read the input from the start, putting batches on `out` (which blocks when the pipeline is behind)."""
        try:
            reader = _Reader(self, self.path, resume.get(PARTITION))
        except CaptureError:
            self.state = "failed"
            raise
        self.polling = True
        self._m.up.set(1)
        self.state = "reading"
        signalled_caught_up = False
        try:
            while True:
                self._m.polls.inc()
                batch = await asyncio.to_thread(reader.next_batch)
                self._m.read.inc(batch.taken)
                if batch.position is not None:  # read past the resume position (changes come with one)
                    signalled_caught_up, self.state = False, "reading"
                    await out.put(
                        ChangeBatch(PARTITION, batch.changes, batch.position, commit_complete=batch.commit_complete)
                    )
                if batch.error is not None:
                    self.state, self.polling = "failed", False
                    self._m.up.set(0)
                    raise batch.error
                if not batch.at_end:
                    continue
                self._m.empty_polls.inc()
                if not signalled_caught_up:
                    self.head = reader.position
                    await out.put(ChangeBatch(PARTITION, [], reader.position or (0, 0), caught_up=True))
                    signalled_caught_up, self.state = True, "caught_up"
                    log.info("end of input", source=self.name, position=reader.position, follow=self.follow)
                if not self.follow:
                    await asyncio.Event().wait()  # idle until cancelled
                await asyncio.sleep(self._poll_interval)
        finally:
            reader.close()

    def acknowledge(self, applied: dict[str, Position]) -> None:
        """Nothing waits on what is applied: a capture is one partition, read in order."""

    def dead_letter(self, reason: str, entry: dict[str, Any]) -> None:
        """Write one unreadable line to the dead-letter file (called from the reading thread)."""
        self._dead_letters.write(stage="translate", source=self.name, reason=reason, entries=[entry])
        self._m.dead_lettered.inc()
        log.error(
            "malformed input line written to the dead-letter file",
            source=self.name,
            file=entry["file"],
            line=entry["line"],
            position=entry["position"],
            reason=reason,
            dead_letter_file=str(self._dead_letters.path),
        )
