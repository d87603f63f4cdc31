"""Neptune Streams source: polls `GetPropertygraphStream` and hands `ChangeBatch`es to the pipeline.

* Start: the checkpoint (`AFTER_SEQUENCE_NUMBER`), else the configured `start`: `trim_horizon`, `latest`
  (after the most recent change at start-up) or an explicit `{commit_num, op_num}` (`AT_SEQUENCE_NUMBER`).
* Polling is adaptive: a full page is followed at once; a short page or "caught up" (HTTP 404
  `StreamRecordsNotFoundException`, "startEventId is from the future") waits, doubling from
  `poll_interval_min_seconds` up to `poll_interval_max_seconds` while the stream stays idle.
* Throttling, 5xx and connection failures back off with full jitter and are counted; botocore's own retries
  are off (see `daemon.aws`).
* `ExpiredStreamException` means the checkpoint is older than the stream's retention: changes were lost to
  the replica, so this is a loud stop (`StreamExpired`), never a silent restart from the horizon (rule 4).
* A record that cannot be translated goes to the dead-letter file with its position; the rest of the page
  goes on.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack
from typing import Any

import structlog
from botocore.exceptions import ClientError

from daemon.aws import classify_aws_error, error_code, open_client
from daemon.deadletter import DeadLetterFile
from daemon.model import ChangeBatch, GraphChange, Position, SourceStopped
from daemon.observability import METRICS
from daemon.sources.pgjson import MalformedRecord, translate_record

log = structlog.get_logger("daemon.source.neptune")

PARTITION = ""  # a Neptune stream is one totally ordered partition


class StreamExpired(SourceStopped):
    """The requested position is older than the stream's retention window."""


class NeptuneStreamSource:
    def __init__(
        self,
        name: str,
        *,
        endpoint: str,
        region: str,
        profile: str | None = None,
        start: str | dict[str, int] = "trim_horizon",
        limit: int = 1000,
        poll_interval_min_seconds: float = 0.05,
        poll_interval_max_seconds: float = 5.0,
        request_timeout_seconds: float = 30.0,
        dead_letters: DeadLetterFile,
    ) -> None:
        self.name = name
        self._endpoint, self._region, self._profile = endpoint, region, profile
        self._start, self._limit = start, limit
        self._idle_min, self._idle_max = poll_interval_min_seconds, poll_interval_max_seconds
        self._timeout = request_timeout_seconds
        self._dead_letters = dead_letters
        self.state = "starting"
        self.head: Position | None = None  # the last event id the stream reported when caught up
        self.polling = False
        self._m_read = METRICS.records_read.labels(source=name)
        self._m_polls = METRICS.source_polls.labels(source=name)
        self._m_empty = METRICS.source_empty_polls.labels(source=name)
        self._m_dead = METRICS.records_dead_lettered.labels(source=name, stage="translate")

    async def run(self, out: asyncio.Queue[ChangeBatch], resume: Position | None) -> None:
        """Poll forever, putting batches on `out` (which blocks when the pipeline is behind)."""
        async with AsyncExitStack() as stack:
            client = await open_client(
                stack,
                "neptunedata",
                endpoint=self._endpoint,
                region=self._region,
                profile=self._profile,
                timeout_seconds=self._timeout,
                max_connections=2,
            )
            params = await self._start_params(client, resume)
            idle_delay = self._idle_min
            failures = 0
            signalled_caught_up = False
            self.state = "polling"
            while True:
                self._m_polls.inc()
                try:
                    response = await client.get_propertygraph_stream(limit=self._limit, **params)
                except ClientError as exc:
                    code = error_code(exc)
                    if code == "StreamRecordsNotFoundException":
                        self.polling, failures = True, 0
                        METRICS.source_up.labels(source=self.name).set(1)
                        self._m_empty.inc()
                        if not signalled_caught_up:
                            position = _params_position(params)
                            await out.put(ChangeBatch(PARTITION, [], position, caught_up=True))
                            signalled_caught_up = True
                        self.state = "caught_up"
                        await asyncio.sleep(idle_delay)
                        idle_delay = min(idle_delay * 2, self._idle_max)
                        continue
                    if code == "ExpiredStreamException":
                        self.state = "expired"
                        METRICS.stream_expired.labels(source=self.name).set(1)
                        raise StreamExpired(
                            f"source {self.name!r}: the stream no longer holds the changes after "
                            f"commitNum {params.get('commitNum')}, opNum {params.get('opNum')} "
                            "(older than the stream retention window); changes after it were lost to this "
                            "replica. Bootstrap the target again from a full copy of the source, then restart."
                        ) from exc
                    failures = await self._backoff(exc, failures)
                    continue
                except Exception as exc:
                    if not classify_aws_error(exc).retryable:
                        raise
                    failures = await self._backoff(exc, failures)
                    continue
                failures = 0
                self.polling = True
                METRICS.source_up.labels(source=self.name).set(1)
                records = response.get("records", [])
                if not records:
                    self._m_empty.inc()
                    await asyncio.sleep(idle_delay)
                    idle_delay = min(idle_delay * 2, self._idle_max)
                    continue
                idle_delay = self._idle_min
                signalled_caught_up = False
                self.state = "polling"
                changes, position = self._translate(records)
                self._m_read.inc(len(records))
                params = {
                    "iteratorType": "AFTER_SEQUENCE_NUMBER",
                    "commitNum": position[0],
                    "opNum": position[1],
                }
                short_page = len(records) < self._limit
                await out.put(ChangeBatch(PARTITION, changes, position))
                if short_page:
                    await asyncio.sleep(self._idle_min)

    def _translate(self, records: list[dict[str, Any]]) -> tuple[list[GraphChange], Position]:
        changes: list[GraphChange] = []
        position: Position | None = None
        for record in records:
            try:
                change = translate_record(record, PARTITION)
            except MalformedRecord as exc:
                self._dead_letter(record, exc)
                if exc.position is not None:
                    position = exc.position
                continue
            changes.append(change)
            position = change.position
        if position is None:
            # Without a position the stream cannot be followed past this page; re-reading it would loop.
            self.state = "failed"
            raise SourceStopped(
                f"source {self.name!r}: a stream page had no record with a readable eventId (records written to "
                "the dead-letter file); the stream cannot be followed past it"
            )
        return changes, position

    def _dead_letter(self, record: dict[str, Any], exc: MalformedRecord) -> None:
        self._dead_letters.write(
            stage="translate",
            source=self.name,
            reason=exc.reason,
            entries=[{"position": list(exc.position) if exc.position else None, "record": record}],
        )
        self._m_dead.inc()
        log.error(
            "malformed stream record written to the dead-letter file",
            source=self.name,
            position=exc.position,
            reason=exc.reason,
            dead_letter_file=str(self._dead_letters.path),
        )

    async def _start_params(self, client: Any, resume: Position | None) -> dict[str, Any]:
        if resume is not None:
            return {"iteratorType": "AFTER_SEQUENCE_NUMBER", "commitNum": resume[0], "opNum": resume[1]}
        if isinstance(self._start, dict):
            return {
                "iteratorType": "AT_SEQUENCE_NUMBER",
                "commitNum": self._start["commit_num"],
                "opNum": self._start["op_num"],
            }
        if self._start == "latest":
            failures = 0
            while True:
                try:
                    response = await client.get_propertygraph_stream(iteratorType="LATEST", limit=1)
                    event = response["lastEventId"]
                    return {
                        "iteratorType": "AFTER_SEQUENCE_NUMBER",
                        "commitNum": event["commitNum"],
                        "opNum": event["opNum"],
                    }
                except ClientError as exc:
                    if error_code(exc) == "StreamRecordsNotFoundException":
                        return {"iteratorType": "TRIM_HORIZON"}  # an empty stream: everything to come is new
                    failures = await self._backoff(exc, failures)
                except Exception as exc:
                    if not classify_aws_error(exc).retryable:
                        raise
                    failures = await self._backoff(exc, failures)
        return {"iteratorType": "TRIM_HORIZON"}

    async def _backoff(self, exc: BaseException, failures: int) -> int:
        cls = classify_aws_error(exc)
        if not cls.retryable:
            raise exc
        failures += 1
        METRICS.source_errors.labels(source=self.name, error_type=cls.reason).inc()
        if failures >= 3:
            self.polling = False
            METRICS.source_up.labels(source=self.name).set(0)
        delay = random.uniform(0, min(self._idle_max * 4, 0.1 * 2 ** min(failures, 10)))
        log.warning(
            "stream read failed, retrying",
            source=self.name,
            reason=cls.reason,
            attempt=failures,
            delay=round(delay, 3),
            error=str(exc)[:300],
        )
        await asyncio.sleep(delay)
        return failures


def _params_position(params: dict[str, Any]) -> Position:
    """The position everything before which has been read: only an AFTER_SEQUENCE_NUMBER request says so."""
    if params.get("iteratorType") == "AFTER_SEQUENCE_NUMBER":
        return (int(params["commitNum"]), int(params["opNum"]))
    return (0, 0)
