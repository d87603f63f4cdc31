"""Reading a Neptune change stream page by page: the property-graph stream (`GetPropertygraphStream`) or the
SPARQL stream (`GetSparqlStream`, same wire shape and rules); the `neptune` and `neptune-sparql` sources and
`graph-replicator capture` read through it.

* Start: a resume position (`AFTER_SEQUENCE_NUMBER`; `(N, 0)`, the start of commit N that `checkpoint set N` stores,
  as `AT_SEQUENCE_NUMBER` N/1), else `start`: `trim_horizon`, `latest` (after the most
  recent change at start-up) or `{commit_num, op_num}` (`AT_SEQUENCE_NUMBER`, inclusive).
* A page of records is followed at once while pages are full; after a short page it waits
  `idle_min`. "Caught up" (HTTP 404 `StreamRecordsNotFoundException`, "startEventId is from the future", or an
  empty page) is yielded as an empty page, then the reader waits, doubling from `idle_min` to `idle_max`.
* Page size: `limit` when caught up; while behind (a full page) the next page asks for twice as many, up to
  `limit_max`, as long as `may_grow()` holds (the sources pass "the apply loop has no page waiting": larger
  pages then mean fewer requests and larger windows; with pages waiting they would only wait too, and hold
  more memory). A page shorter than `limit`, or `may_grow()` false, brings it back to `limit`. A page between
  `limit` and the size asked for (the API cut it at 10 MB, or the reader is near the head) keeps the size and
  is followed at once.
* Throttling, 5xx and connection failures back off with full jitter (the caller is told through `on_retry`);
  other failures are raised. botocore's own retries are off (see `daemon.aws`).
* `ExpiredStreamException`: the position is older than the stream's retention, changes are lost to whoever
  reads from here, so it raises `StreamExpired` (DESIGN rule 4): a loud stop, never a restart from the horizon.
* "From the future" after a position names the stream's last valid event id. Equal to the position: caught up.
  Behind it (an empty stream, commitNum 0, included): the stream is not the one the checkpoint was taken on (the
  cluster was restored from a snapshot or re-created), so it raises `StreamReset`, a loud stop: idling as
  "caught up" would wait for commit numbers that the new stream reuses for other changes, or never reaches.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from daemon.aws import classify_aws_error, error_code, open_client
from daemon.config import NeptuneSourceConfig, NeptuneSparqlSourceConfig
from daemon.model import Position, SourceStopped
from daemon.sinks.base import ErrorClass, full_jitter

RetryHook = Callable[[ErrorClass, int, float, BaseException], None]  # class, attempt, delay, error


class StreamExpired(SourceStopped):
    """The requested position is older than the stream's retention window."""


class StreamReset(SourceStopped):
    """The stream's head is behind the position read up to: the stream was reset (restore, re-creation)."""

    def __init__(self, message: str, *, head: Position, after: Position) -> None:
        super().__init__(message)
        self.head, self.after = head, after


@dataclass(slots=True)
class Page:
    """Records in stream order; `after` is the position everything up to which has been read ((0, 0) when the
    reader started at the horizon and has read nothing); `caught_up` says the stream has nothing after it."""

    records: list[dict[str, Any]]
    after: Position
    caught_up: bool = False


class StreamReader:
    def __init__(
        self,
        client: Any,
        *,
        start: str | dict[str, int] = "trim_horizon",
        resume: Position | None = None,
        limit: int = 1000,
        limit_max: int | None = None,
        may_grow: Callable[[], bool] | None = None,
        idle_min: float = 0.05,
        idle_max: float = 5.0,
        on_retry: RetryHook | None = None,
        operation: str = "get_propertygraph_stream",
    ) -> None:
        self.client = client
        self._operation = operation  # get_propertygraph_stream | get_sparql_stream
        self.limit = limit  # the next page's size; may be lowered between pages (capture --max-records)
        self._base = limit
        self._limit_max = max(limit, limit_max or limit)  # > limit: adaptive page size (see the module doc)
        self._may_grow = may_grow or (lambda: True)
        self._start, self._resume = start, resume
        self._idle_min, self._idle_max = idle_min, idle_max
        self._on_retry = on_retry
        self._failures = 0

    async def _read(self, **params: Any) -> dict[str, Any]:
        """One stream call (the client is looked up at call time: a reader can be built before it has one)."""
        return await getattr(self.client, self._operation)(**params)

    async def pages(self) -> AsyncIterator[Page]:
        """Pages forever (the caller stops iterating when it has enough)."""
        params = await self._start_params()
        idle = self._idle_min
        while True:
            requested = self.limit
            try:
                response = await self._read(limit=requested, **params)
            except Exception as exc:
                code = error_code(exc)
                if code == "StreamRecordsNotFoundException":
                    _check_not_reset(params, str(exc))
                    self._failures = 0
                    self._caught_up()
                    yield Page([], _after(params), caught_up=True)
                    await asyncio.sleep(idle)
                    idle = min(idle * 2, self._idle_max)
                    continue
                if code == "ExpiredStreamException":
                    raise StreamExpired(
                        f"the stream no longer holds the changes after commitNum {params.get('commitNum')}, "
                        f"opNum {params.get('opNum')} (older than the stream retention window); changes after "
                        "it were lost to this replica. Bootstrap the target again from a full copy of the source, "
                        "then restart."
                    ) from exc
                await self._backoff(exc)
                continue
            self._failures = 0
            records = response.get("records") or []
            if not records:
                self._caught_up()
                yield Page([], _after(params), caught_up=True)
                await asyncio.sleep(idle)
                idle = min(idle * 2, self._idle_max)
                continue
            idle = self._idle_min
            after = _last_position(records)
            params = {"iteratorType": "AFTER_SEQUENCE_NUMBER", "commitNum": after[0], "opNum": after[1]}
            yield Page(records, after)
            if self._limit_max > self._base:
                self.limit = self._next_limit(len(records), requested)
                short = len(records) < self._base
            else:
                short = len(records) < requested
            if short:
                await asyncio.sleep(self._idle_min)

    def _caught_up(self) -> None:
        if self._limit_max > self._base:
            self.limit = self._base

    def _next_limit(self, count: int, requested: int) -> int:
        """The adaptive page size after a page of `count` records asked for with `requested`."""
        if count < self._base or not self._may_grow():
            return self._base
        if count >= requested:
            return min(requested * 2, self._limit_max)
        return requested

    async def _start_params(self) -> dict[str, Any]:
        if self._resume is not None:
            if self._resume[1] == 0 and self._resume[0] >= 1:  # before commit N's first op (`checkpoint set N`)
                return {"iteratorType": "AT_SEQUENCE_NUMBER", "commitNum": self._resume[0], "opNum": 1}
            return {"iteratorType": "AFTER_SEQUENCE_NUMBER", "commitNum": self._resume[0], "opNum": self._resume[1]}
        if isinstance(self._start, dict):
            return {
                "iteratorType": "AT_SEQUENCE_NUMBER",
                "commitNum": self._start["commit_num"],
                "opNum": self._start["op_num"],
            }
        if self._start != "latest":
            return {"iteratorType": "TRIM_HORIZON"}
        while True:
            try:
                event = (await self._read(iteratorType="LATEST", limit=1))["lastEventId"]
            except Exception as exc:
                if error_code(exc) == "StreamRecordsNotFoundException":
                    return {"iteratorType": "TRIM_HORIZON"}  # an empty stream: everything to come is new
                await self._backoff(exc)
                continue
            return {"iteratorType": "AFTER_SEQUENCE_NUMBER", "commitNum": event["commitNum"], "opNum": event["opNum"]}

    async def head(self) -> Position | None:
        """The event id of the newest change in the stream (one `LATEST` read of one record), or None when the
        stream is empty. Raises what the read raised; used for `commits_behind_head`, never for positions."""
        try:
            event = (await self._read(iteratorType="LATEST", limit=1))["lastEventId"]
        except Exception as exc:
            if error_code(exc) == "StreamRecordsNotFoundException":
                return _last_valid_event_id(str(exc))
            raise
        return (int(event["commitNum"]), int(event["opNum"]))

    async def _backoff(self, exc: BaseException) -> None:
        cls = classify_aws_error(exc)
        if not cls.retryable:
            raise exc
        self._failures += 1
        delay = full_jitter(self._failures, 0.1, self._idle_max * 4, max_exponent=10)
        if self._on_retry is not None:
            self._on_retry(cls, self._failures, delay, exc)
        await asyncio.sleep(delay)


NeptuneStreamConfig = NeptuneSourceConfig | NeptuneSparqlSourceConfig


async def open_neptune_client(stack: AsyncExitStack, cfg: NeptuneStreamConfig, timeout_seconds: float = 0.0) -> Any:
    """The `neptunedata` client of a `neptune` or `neptune-sparql` source (stream and snapshot reads), bound to
    `stack`; the request timeout is the source's, or `timeout_seconds` when that is longer."""
    return await open_client(
        stack,
        "neptunedata",
        endpoint=cfg.endpoint,
        region=cfg.region,
        profile=cfg.profile,
        timeout_seconds=max(timeout_seconds, cfg.request_timeout_seconds),
        max_connections=2,
    )


async def open_stream_reader(
    stack: AsyncExitStack,
    cfg: NeptuneStreamConfig,
    *,
    resume: Position | None = None,
    limit: int | None = None,
    on_retry: RetryHook | None = None,
    may_grow: Callable[[], bool] | None = None,
) -> StreamReader:
    """A reader of the stream a `neptune` (property graph) or `neptune-sparql` source config names, its client
    bound to `stack`. With `may_grow` (the sources pass it) pages grow while behind, up to the config's
    `limit_max`; without it (capture) every page asks for `limit` (or the `limit` given)."""
    client = await open_neptune_client(stack, cfg)
    return StreamReader(
        client,
        start=cfg.start if isinstance(cfg.start, str) else cfg.start.model_dump(),
        resume=resume,
        limit=cfg.limit if limit is None else limit,
        limit_max=cfg.page_limit_max if may_grow is not None else None,
        may_grow=may_grow,
        idle_min=cfg.poll_interval_min_seconds,
        idle_max=cfg.poll_interval_max_seconds,
        on_retry=on_retry,
        operation="get_sparql_stream" if cfg.kind == "neptune-sparql" else "get_propertygraph_stream",
    )


_LAST_VALID = re.compile(r"Last valid eventId is \[commitNum = (\d+), opNum = (\d+)\]")


def _last_valid_event_id(message: str) -> Position | None:
    """The head position a `StreamRecordsNotFoundException` message names ("... from the future. Last valid
    eventId is [commitNum = N, opNum = M]"); None when it names none or the stream is empty (commitNum 0)."""
    match = _LAST_VALID.search(message)
    if match is None or int(match.group(1)) == 0:
        return None
    return (int(match.group(1)), int(match.group(2)))


def _check_not_reset(params: dict[str, Any], message: str) -> None:
    """Raise `StreamReset` when a "from the future" answer to a read after a position names a last valid event id
    behind that position. A message without one cannot be compared and counts as caught up."""
    if params.get("iteratorType") != "AFTER_SEQUENCE_NUMBER":
        return
    match = _LAST_VALID.search(message)
    if match is None:
        return
    head = (int(match.group(1)), int(match.group(2)))
    after = (int(params["commitNum"]), int(params["opNum"]))
    if head >= after:
        return
    empty = " (the stream is empty)" if head[0] == 0 else ""
    raise StreamReset(
        f"the stream's head is commitNum {head[0]}, opNum {head[1]}{empty}, behind the position already read "
        f"and checkpointed, commitNum {after[0]}, opNum {after[1]}: the stream was reset (the cluster was restored "
        "from a snapshot or re-created), and the commit numbers it hands out from here may name other changes. "
        "Bootstrap the target again from a full copy of the source (graph-replicator bootstrap --force), then "
        "restart; or, only if the target already matches the source as it is now, rewind the checkpoint to the "
        "stream's head and restart (see docs/operations.md, GraphReplicatorStreamReset).",
        head=head,
        after=after,
    )


def _after(params: dict[str, Any]) -> Position:
    """The position everything before which has been read: only an AFTER_SEQUENCE_NUMBER request says so."""
    if params.get("iteratorType") == "AFTER_SEQUENCE_NUMBER":
        return (int(params["commitNum"]), int(params["opNum"]))
    return (0, 0)


def _last_position(records: list[dict[str, Any]]) -> Position:
    """The eventId of the last record that has a readable one."""
    for record in reversed(records):
        event = record.get("eventId")
        if isinstance(event, dict):
            commit, op = event.get("commitNum"), event.get("opNum")
            if isinstance(commit, int) and isinstance(op, int) and not isinstance(commit, bool):
                return (commit, op)
    # Without a position the stream cannot be followed past this page; re-reading it would loop.
    raise SourceStopped("a stream page had no record with a readable eventId; the stream cannot be followed past it")
