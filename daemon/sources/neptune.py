"""Neptune Streams source: reads the stream through `StreamReader` from the checkpoint (or the configured
start) and hands `ChangeBatch`es to the pipeline.

* Pages become batches of translated changes; a record that cannot be translated goes to the dead-letter
  file with its position and the rest of the page goes on.
* The first "caught up" after data puts a marker batch on the queue (what `--exit-when-idle` and the latency
  gauge wait for).
* Read failures are counted by reason; a source that failed three reads in a row is not ready.
* An expired position (`StreamExpired`) stops the source for good with `graph_replicator_stream_expired` = 1;
  a stream whose head is behind the checkpoint (`StreamReset`: a restored or re-created cluster) stops it with
  state `reset` and `graph_replicator_stream_reset` = 1.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, suppress
from typing import Any

import structlog

from daemon.config import NeptuneSourceConfig
from daemon.deadletter import DeadLetterFile
from daemon.model import ChangeBatch, GraphChange, Position, SourceStopped
from daemon.observability import METRICS, SourceMetrics
from daemon.sinks.base import ErrorClass
from daemon.sources.pgjson import MalformedRecord, record_position, translate_record
from daemon.sources.stream_reader import StreamExpired, StreamReader, StreamReset, open_stream_reader

__all__ = ["PARTITION", "NeptuneStreamSource", "StreamExpired", "StreamReset"]

log = structlog.get_logger("daemon.source.neptune")

PARTITION = ""  # a Neptune stream is one totally ordered partition
HEAD_PROBE_SECONDS = 30.0  # how often a source that is behind asks for the stream head (commits_behind_head)


class NeptuneStreamSource:
    def __init__(self, cfg: NeptuneSourceConfig, *, dead_letters: DeadLetterFile) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._dead_letters = dead_letters
        self.state = "starting"
        self.head: Position | None = None  # the last event id the stream reported when caught up
        self.polling = False
        self._m = SourceMetrics(cfg.name)

    async def run(self, out: asyncio.Queue[ChangeBatch], resume: dict[str, Position]) -> None:
        """Poll forever, putting batches on `out` (which blocks when the pipeline is behind)."""
        async with AsyncExitStack() as stack:
            reader = await open_stream_reader(
                stack, self._cfg, resume=resume.get(PARTITION), on_retry=self._on_retry, may_grow=out.empty
            )
            signalled_caught_up = False
            self.state = "polling"
            probe = asyncio.create_task(self._probe_head(reader), name=f"head-probe:{self.name}")
            stack.push_async_callback(_cancel, probe)
            try:
                async for page in reader.pages():
                    self._m.polls.inc()
                    self.polling = True
                    self._m.up.set(1)
                    if page.after[0]:
                        METRICS.note_stream_head(self.name, page.after[0], PARTITION)
                    if page.caught_up:
                        self._m.empty_polls.inc()
                        self.state = "caught_up"
                        if not signalled_caught_up:
                            await out.put(ChangeBatch(PARTITION, [], page.after, caught_up=True))
                            signalled_caught_up = True
                        continue
                    self.state = "polling"
                    signalled_caught_up = False
                    self._m.read.inc(len(page.records))
                    complete = page.records[-1].get("isLastOp") is True
                    # a page of `limit` records or more is followed at once (see StreamReader): the source is behind
                    more = len(page.records) >= self._cfg.limit
                    batch = ChangeBatch(
                        PARTITION, self._translate(page.records), page.after, commit_complete=complete, more=more
                    )
                    await out.put(batch)
            except StreamExpired as exc:
                self.state = "expired"
                METRICS.stream_expired.labels(source=self.name).set(1)
                raise StreamExpired(f"source {self.name!r}: {exc}") from exc
            except StreamReset as exc:
                self.state = "reset"
                METRICS.stream_reset.labels(source=self.name).set(1)
                log.error(
                    "stream reset: its head is behind the checkpoint",
                    source=self.name,
                    head=exc.head,
                    checkpoint=exc.after,
                )
                raise StreamReset(f"source {self.name!r}: {exc}", head=exc.head, after=exc.after) from exc
            except SourceStopped:
                self.state = "failed"
                raise

    def acknowledge(self, applied: dict[str, Position]) -> None:
        """Nothing waits on what is applied: the stream is one partition, read in order."""

    async def _probe_head(self, reader: StreamReader) -> None:
        """While behind, ask the stream for its newest event id every `HEAD_PROBE_SECONDS`, so that
        `commits_behind_head` tells how far a catch-up has to go (when caught up, the pages tell it)."""
        failures = 0
        while True:
            if self.state != "caught_up":
                try:
                    head = await reader.head()
                except Exception as exc:  # the reads themselves count and log stream errors
                    log.debug("stream head probe failed", source=self.name, error=str(exc)[:300])
                    failures += 1
                    await asyncio.sleep(min(HEAD_PROBE_SECONDS, 2.0 ** (failures - 1)))
                    continue
                failures = 0
                if head is not None:
                    METRICS.note_stream_head(self.name, head[0], PARTITION)
            await asyncio.sleep(HEAD_PROBE_SECONDS)

    def _translate_one(self, record: dict[str, Any]) -> Any:
        """One record as a change (`GraphChange`; a SPARQL source's `QuadChange`), or `MalformedRecord`."""
        return translate_record(record, PARTITION)

    def _translate(self, records: list[dict[str, Any]]) -> list[GraphChange]:
        changes: list[GraphChange] = []
        for record in records:
            try:
                changes.append(self._translate_one(record))
            except MalformedRecord as exc:
                self._dead_letter(record, exc)
            except (MemoryError, RecursionError):
                raise
            except Exception as exc:  # a record the parser did not foresee must not stop the source on every restart
                reason = f"internal error while translating the record: {type(exc).__name__}: {str(exc)[:300]}"
                self._dead_letter(record, MalformedRecord(reason, _readable_position(record)))
        return changes

    def _on_retry(self, cls: ErrorClass, attempt: int, delay: float, exc: BaseException) -> None:
        if self._m.retried(cls.reason, attempt):
            self.polling = False
        log.warning(
            "stream read failed, retrying",
            source=self.name,
            reason=cls.reason,
            attempt=attempt,
            delay=round(delay, 3),
            error=str(exc)[:300],
        )

    def _dead_letter(self, record: dict[str, Any], exc: MalformedRecord) -> None:
        self._dead_letters.write(
            stage="translate",
            source=self.name,
            reason=exc.reason,
            entries=[{"position": list(exc.position) if exc.position else None, "record": record}],
        )
        self._m.dead_lettered.inc()
        log.error(
            "malformed stream record written to the dead-letter file",
            source=self.name,
            position=exc.position,
            reason=exc.reason,
            dead_letter_file=str(self._dead_letters.path),
        )


def _readable_position(record: Any) -> Position | None:
    try:
        return record_position(record)
    except Exception:
        return None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
