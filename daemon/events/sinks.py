"""Event sinks: deliver CloudEvents in batches, in per-element order, with classified retries and dead letters.

An `EventSink` knows one target's batch call (`send`) and limits; `EventDelivery` does the rest, the same rules
as the graph sinks' `PlanApplier` (DESIGN rule 6):

* Keyed targets (Kinesis, SQS, ...) take **at most one event per ordering key (the element id) per call**, the
  oldest undelivered one of each key. A call's entries succeed or fail one by one (PutRecords and
  SendMessageBatch report each), so two events of one element in one call could land out of order when the
  first fails and the second does not. One per key per call means a failed event is always retried before the
  next event of its element is even sent: a later event never overtakes it.
* Ordered targets (a webhook: one request succeeds or fails as a whole) get the events in order, a request at
  a time.
* A retryable failure (throttling, 5xx, 429, timeouts, connection errors) is retried with full jitter, forever
  (a target that is down stops this sink's progress, it loses nothing); a `Retry-After` is honoured. A call
  refused for its data (a 4xx) is split in halves down to the poison event, which goes to the dead-letter file;
  an event larger than the target's record limit is dead-lettered with its size before any call; anything
  else (access denied, a missing stream) is raised and the supervisor restarts the pipeline with backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog

from daemon.deadletter import DeadLetterFile
from daemon.observability import METRICS
from daemon.sinks.base import REJECTED, RETRY, ErrorClass, RetryPolicy

log = structlog.get_logger("daemon.events")

SIGNATURE_HEADER = "X-Graph-Replicator-Signature"
T = TypeVar("T")
_DEAD = ErrorClass(False, "dead_lettered")  # an outcome: the event was written to the dead-letter file


class Entry:
    """One event ready to send: its encoded body, its ordering key and its size as the target counts it."""

    __slots__ = ("body", "event", "key", "size")

    def __init__(self, event: dict[str, Any], body: bytes, key: str) -> None:
        self.event, self.body, self.key = event, body, key
        self.size = len(body) + (len(key) if key.isascii() else len(key.encode()))


class EventSink(ABC):
    """One event target: its batch call and its limits."""

    name: str
    kind: str
    keyed: bool = True  # entries of a call succeed or fail one by one: one entry per key per call
    max_records: int = 10
    max_call_bytes: int = 256 * 1024
    max_record_bytes: int = 256 * 1024

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def entry(self, event: dict[str, Any]) -> Entry:
        return Entry(event, encode(event), ordering_key(event["subject"], 256))

    @abstractmethod
    async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
        """One batch call: per entry None (delivered) or why it failed; raise when the whole call failed."""

    @abstractmethod
    def classify(self, exc: BaseException) -> ErrorClass:
        """Whether a failed call is worth retrying, and why it failed."""


def encode(event: dict[str, Any]) -> bytes:
    """An event as JSON bytes, in an object of its own size. orjson hands back its output in the buffer it grew
    it in, which holds about 4 KiB whatever the event's length (orjson 3.13: 100,000 events of 322 bytes held
    391 MB, one page fault each); the copy holds 20 MB and saves about 2.5 µs of CPU per event in page faults
    where a window's or an archive's events are held together."""
    return bytes(memoryview(orjson.dumps(event)))


def ordering_key(element_id: str, limit: int, allowed: re.Pattern[str] | None = None) -> str:
    """The element id as a target's ordering key, or `sha256:<hex>` of it when it is too long (or has characters
    the target refuses): the same element always gets the same key."""
    if len(element_id) <= limit and element_id and (allowed is None or allowed.fullmatch(element_id)):
        return element_id
    return "sha256:" + hashlib.sha256(element_id.encode()).hexdigest()


class EventDelivery:
    """Delivers one source's events to one event sink (see the module docstring)."""

    def __init__(self, sink: EventSink, *, source: str, retry: RetryPolicy, dead_letters: DeadLetterFile) -> None:
        self.sink, self.source, self.retry, self.dead_letters = sink, source, retry, dead_letters
        self.healthy = True
        self.failing_reason: str | None = None
        self.backing_off = False  # the last call failed and is being retried (still healthy until the threshold)
        self.sent = 0
        self.retried = 0  # events sent again after a failed call or a failed entry
        self.dead_lettered = 0
        self.fence: Callable[[], None] | None = None  # raises when this process may no longer write (leases)
        self._m_sent = METRICS.events_sent.labels(source=source, sink=sink.name)
        self._m_seconds = METRICS.batch_duration.labels(sink=sink.name)
        self._m_rows = METRICS.batch_size.labels(sink=sink.name)
        self._m_up = METRICS.sink_up.labels(sink=sink.name)

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        """Return once every event is delivered or dead-lettered."""
        await self.deliver_entries(self.entries(events))

    def entries(self, events: list[dict[str, Any]]) -> list[Entry]:
        """The events encoded for the sink; one larger than the target's record limit is dead-lettered here."""
        entries = []
        make, limit = self.sink.entry, self.sink.max_record_bytes
        for event in events:
            entry = make(event)
            if entry.size > limit:
                self._dead_letter([entry], "too_large", f"{entry.size} bytes > {self.sink.max_record_bytes}")
            else:
                entries.append(entry)
        return entries

    async def deliver_entries(self, entries: list[Entry]) -> None:
        """Return once every entry is delivered or dead-lettered."""
        if self.sink.keyed:
            await self._deliver_keyed(entries)
        else:
            await self._deliver_ordered(entries)

    async def _deliver_keyed(self, entries: list[Entry]) -> None:
        pending: dict[str, deque[Entry]] = {}
        for entry in entries:
            queue = pending.get(entry.key)
            if queue is None:
                pending[entry.key] = queue = deque()
            queue.append(entry)
        most, room = self.sink.max_records, self.sink.max_call_bytes
        attempt = 0
        while pending:
            call, size = [], 0
            for queue in pending.values():
                head = queue[0]
                if size + head.size > room:
                    break
                call.append(head)
                size += head.size
                if len(call) == most:
                    break
            outcomes = await self._call(call)
            failure: ErrorClass | None = None
            for entry, outcome in zip(call, outcomes, strict=True):
                if outcome is not None and outcome is not _DEAD:
                    if not outcome.data_rejected:
                        failure = outcome
                        continue
                    self._dead_letter([entry], outcome.reason, "the target refused the event")
                queue = pending[entry.key]
                if len(queue) == 1:
                    del pending[entry.key]
                else:
                    queue.popleft()
            if failure is None:
                attempt = 0
                continue
            attempt += 1
            failed = sum(1 for o in outcomes if o is not None and o is not _DEAD and not o.data_rejected)
            await self._backoff(failure, attempt, f"{failed} of {len(call)} entries failed", None, failed)

    async def _deliver_ordered(self, entries: list[Entry]) -> None:
        start = 0
        while start < len(entries):
            call, size = [], 0
            for entry in entries[start:]:
                if len(call) >= self.sink.max_records or (call and size + entry.size > self.sink.max_call_bytes):
                    break
                call.append(entry)
                size += entry.size
            await self._call(call)
            start += len(call)

    async def _call(self, call: list[Entry]) -> list[ErrorClass | None]:
        """One call, retried while the whole call fails retryably; a call refused for its data is split down to
        the poison entry (dead-lettered). Returns the per-entry outcomes."""
        attempt = 0
        while True:
            if self.fence is not None:
                self.fence()
            started = time.perf_counter()
            try:
                outcomes = await self.sink.send(call)
            except Exception as exc:
                cls = self.sink.classify(exc)
                METRICS.sink_errors.labels(sink=self.sink.name, error_type=cls.reason, stage="deliver").inc()
                if cls.retryable:
                    attempt += 1
                    await self._backoff(cls, attempt, _short(exc), getattr(exc, "retry_after", None), len(call))
                    continue
                if not cls.data_rejected:
                    raise
                if len(call) == 1:
                    self._dead_letter(call, cls.reason, _short(exc))
                    return [_DEAD]
                half = len(call) // 2
                return [*await self._call(call[:half]), *await self._call(call[half:])]
            self._m_seconds.observe(time.perf_counter() - started)
            self._m_rows.observe(len(call))
            delivered = sum(1 for o in outcomes if o is None)
            self.sent += delivered
            self._m_sent.inc(delivered)
            if delivered:
                self.healthy, self.failing_reason, self.backing_off = True, None, False
                self._m_up.set(1)
            return outcomes

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """A call of the sink's other than a delivery (an archive's listing), retried like one."""
        attempt = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                cls = self.sink.classify(exc)
                METRICS.sink_errors.labels(sink=self.sink.name, error_type=cls.reason, stage="deliver").inc()
                if not cls.retryable:
                    raise
                attempt += 1
                await self._backoff(cls, attempt, _short(exc), None, 0)

    async def _backoff(self, cls: ErrorClass, attempt: int, error: str, retry_after: float | None, events: int) -> None:
        METRICS.retries.labels(sink=self.sink.name, reason=cls.reason).inc()
        self.backing_off = True
        self.retried += events
        if attempt >= self.retry.attempts_before_split:
            self.healthy, self.failing_reason = False, f"{cls.reason}: {error[:200]}"
            self._m_up.set(0)
        delay = self.retry.delay(attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry.max_seconds * 6))
        log.warning("event sink call failed, retrying", sink=self.sink.name, source=self.source, reason=cls.reason,
                    attempt=attempt, delay=round(delay, 3), error=error[:500])  # fmt: skip
        await asyncio.sleep(delay)

    def _dead_letter(self, entries: list[Entry], reason: str, detail: str) -> None:
        self.dead_letters.write(
            stage="deliver",
            source=self.source,
            reason=f"{reason}: {detail}",
            sink=self.sink.name,
            entries=[{"position": e.event["data"]["position"], "size": e.size, "event": e.event} for e in entries],
        )
        self.dead_lettered += len(entries)
        METRICS.events_dead_lettered.labels(source=self.source, sink=self.sink.name, reason=reason).inc(len(entries))
        log.error("event not delivered, written to the dead-letter file", sink=self.sink.name, reason=reason,
                  detail=detail[:300], ids=[e.event["id"] for e in entries[:5]])  # fmt: skip


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


# ------------------------------------------------------------------------------------------------ AWS


class _AwsEventSink(EventSink):
    service = ""

    def __init__(self, name: str, *, region: str, endpoint: str | None, profile: str | None, timeout: float) -> None:
        self.name, self.region, self.endpoint, self.profile, self.timeout = name, region, endpoint, profile, timeout
        self._stack: AsyncExitStack | None = None
        self.client: Any = None

    async def start(self) -> None:
        if self.client is not None:
            return
        from daemon.aws import open_client

        stack = AsyncExitStack()
        self.client = await open_client(
            stack, self.service, endpoint=self.endpoint, region=self.region, profile=self.profile,
            timeout_seconds=self.timeout,
        )  # fmt: skip
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack, self.client = None, None

    def classify(self, exc: BaseException) -> ErrorClass:
        from daemon.aws import classify_aws_error

        return classify_aws_error(exc)


_KINESIS_RETRYABLE = {
    "ProvisionedThroughputExceededException": "throttling",
    "KMSThrottlingException": "throttling",
    "InternalFailure": "server_error",
    "InternalFailureException": "server_error",
    "ServiceUnavailable": "server_error",
}


class KinesisSink(_AwsEventSink):
    """`PutRecords` into a data stream: partition key = element id (hashed past Kinesis' 256 characters)."""

    kind = "kinesis"
    service = "kinesis"
    max_records = 500
    max_call_bytes = 5 * 1024 * 1024
    max_record_bytes = 1024 * 1024

    def __init__(self, name: str, *, stream: str, **aws: Any) -> None:
        super().__init__(name, **aws)
        self.stream = stream

    async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
        target = {"StreamARN": self.stream} if self.stream.startswith("arn:") else {"StreamName": self.stream}
        answer = await self.client.put_records(
            Records=[{"Data": e.body, "PartitionKey": e.key} for e in entries], **target
        )
        outcomes: list[ErrorClass | None] = []
        for record in answer["Records"]:
            code = record.get("ErrorCode")
            if not code:
                outcomes.append(None)
            elif code in _KINESIS_RETRYABLE:
                outcomes.append(RETRY[_KINESIS_RETRYABLE[code]])
            else:
                outcomes.append(REJECTED)
        return outcomes


# SQS allows these characters in MessageGroupId and MessageDeduplicationId (128 at most).
_SQS_ID = re.compile(r"[!-~]{1,128}")


class _MessagingSink(_AwsEventSink):
    """SQS and SNS: batches of 10 messages / 256 KiB; on a FIFO target (its name ends in `.fifo`)
    `MessageGroupId` = element id and `MessageDeduplicationId` = event id, each hashed when the service would
    refuse it; per-entry failures come back in `Failed`, a sender fault meaning the message is refused."""

    max_records = 10
    max_call_bytes = 256 * 1024
    max_record_bytes = 256 * 1024
    body_field = ""
    fifo = False

    def entry(self, event: dict[str, Any]) -> Entry:
        return Entry(event, encode(event), ordering_key(event["subject"], 128, _SQS_ID))

    def messages(self, entries: list[Entry]) -> list[dict[str, Any]]:
        batch = []
        for i, e in enumerate(entries):
            message: dict[str, Any] = {"Id": str(i), self.body_field: e.body.decode()}
            if self.fifo:
                message["MessageGroupId"] = e.key
                message["MessageDeduplicationId"] = ordering_key(e.event["id"], 128, _SQS_ID)
            batch.append(message)
        return batch

    @staticmethod
    def outcomes(answer: dict[str, Any], n: int) -> list[ErrorClass | None]:
        outcomes: list[ErrorClass | None] = [None] * n
        for failed in answer.get("Failed", []):
            outcomes[int(failed["Id"])] = REJECTED if failed.get("SenderFault") else RETRY["server_error"]
        return outcomes


class SQSSink(_MessagingSink):
    """`SendMessageBatch` into a queue (FIFO when the URL ends in `.fifo`). A standard queue keeps no order."""

    kind = "sqs"
    service = "sqs"
    body_field = "MessageBody"

    def __init__(self, name: str, *, queue_url: str, **aws: Any) -> None:
        super().__init__(name, **aws)
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")

    async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
        answer = await self.client.send_message_batch(QueueUrl=self.queue_url, Entries=self.messages(entries))
        return self.outcomes(answer, len(entries))


class SNSSink(_MessagingSink):
    """`PublishBatch` to a topic (FIFO when the ARN ends in `.fifo`)."""

    kind = "sns"
    service = "sns"
    body_field = "Message"

    def __init__(self, name: str, *, topic_arn: str, **aws: Any) -> None:
        super().__init__(name, **aws)
        self.topic_arn = topic_arn
        self.fifo = topic_arn.endswith(".fifo")

    async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
        answer = await self.client.publish_batch(
            TopicArn=self.topic_arn, PublishBatchRequestEntries=self.messages(entries)
        )
        return self.outcomes(answer, len(entries))


_EVENTBRIDGE_RETRYABLE = {"ThrottlingException": "throttling", "InternalFailure": "server_error",
                          "InternalException": "server_error"}  # fmt: skip


class EventBridgeSink(_AwsEventSink):
    """`PutEvents` on an event bus: `Source` = `graph-replicator.<source>`, `DetailType` = the event type,
    `Detail` = the whole CloudEvent. EventBridge keeps no order between events: rules and targets see them in
    any order (the keyed delivery still never sends two events of one element in one call)."""

    kind = "eventbridge"
    service = "events"
    max_records = 10
    max_call_bytes = 256 * 1024
    max_record_bytes = 256 * 1024

    def __init__(self, name: str, *, event_bus: str, **aws: Any) -> None:
        super().__init__(name, **aws)
        self.event_bus = event_bus

    async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
        batch = [
            {
                "Source": e.event["source"].replace("/", "."),
                "DetailType": e.event["type"],
                "Detail": e.body.decode(),
                "EventBusName": self.event_bus,
            }
            for e in entries
        ]
        answer = await self.client.put_events(Entries=batch)
        outcomes: list[ErrorClass | None] = []
        for result in answer["Entries"]:
            code = result.get("ErrorCode")
            if not code:
                outcomes.append(None)
            elif code in _EVENTBRIDGE_RETRYABLE:
                outcomes.append(RETRY[_EVENTBRIDGE_RETRYABLE[code]])
            else:
                outcomes.append(REJECTED)
        return outcomes


# --------------------------------------------------------------------------------------------- webhook


class WebhookError(Exception):
    def __init__(self, status: int, text: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status, self.retry_after = status, retry_after


class WebhookSink(EventSink):
    """HTTP POST of a JSON array of events (`application/cloudevents-batch+json`), signed with HMAC-SHA256 of the
    body under the secret (`X-Graph-Replicator-Signature: sha256=<hex>`). A request succeeds or fails whole, so
    requests go one at a time, in order."""

    kind = "webhook"
    keyed = False

    def __init__(
        self,
        name: str,
        *,
        url: str,
        secret: str | None,
        events_per_request: int,
        max_request_bytes: int,
        timeout: float,
        text_template: str | None = None,
    ) -> None:
        self.name, self.url, self.timeout = name, url, timeout
        self.secret = secret.encode() if secret else None
        self.text_template = text_template
        self.max_records = events_per_request
        self.max_call_bytes = max_request_bytes
        self.max_record_bytes = max_request_bytes
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
        assert self._session is not None
        if self.text_template is None:
            body = b"[" + b",".join(e.body for e in entries) + b"]"
            headers = {"Content-Type": "application/cloudevents-batch+json"}
        else:  # a chat message (Slack's incoming webhooks): {"text": one line per event}
            text = "\n".join(render(self.text_template, e.event) for e in entries)
            body, headers = orjson.dumps({"text": text}), {"Content-Type": "application/json"}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        async with self._session.post(self.url, data=body, headers=headers) as response:
            if response.status < 300:
                return [None] * len(entries)
            raise WebhookError(response.status, await response.text(), _retry_after(response.headers))

    def classify(self, exc: BaseException) -> ErrorClass:
        if isinstance(exc, WebhookError):
            if exc.status == 429:
                return RETRY["throttling"]
            if exc.status >= 500 or exc.status == 408:
                return RETRY["server_error"]
            if exc.status in (401, 403):
                return ErrorClass(False, "access_denied")
            return REJECTED
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            return RETRY["timeout"]
        if isinstance(exc, aiohttp.ClientError | ConnectionError):
            return RETRY["connection"]
        return ErrorClass(False, "internal")


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def render(template: str, event: dict[str, Any]) -> str:
    """`template` with `{type}`, `{subject}`, `{time}`, `{id}`, `{source}` and the data fields as `{data_NAME}`
    (`{data_label}`, `{data_type}`, `{data_from}`, `{data_to}`, `{data_key}`, `{data_value}`) filled in; a field
    the event lacks is empty."""
    fields = _Fields({k: v for k, v in event.items() if k != "data"})
    fields.update({f"data_{k}": v for k, v in event["data"].items()})
    try:
        return template.format_map(fields)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):  # e.g. {data_value.x} on a number
        return f"{event['type']} {event['subject']}"


def _retry_after(headers: Any) -> float | None:
    """`Retry-After` in seconds (the HTTP-date form is read as 'soon': the jittered delay applies)."""
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def sign(secret: str, body: bytes) -> str:
    """The signature header value a receiver compares with (`hmac.compare_digest`)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
