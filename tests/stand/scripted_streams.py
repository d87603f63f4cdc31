"""A scripted DynamoDB Streams endpoint: shard lineage, closing shards, late children, iterator expiry and
throttling, none of which moto serves (one shard per table, never closed).

It speaks the service's JSON 1.0 protocol (`X-Amz-Target: DynamoDBStreams_20120810.<Operation>`, errors as
`{"__type": "...#Code", "message": ...}` with HTTP 400), so the daemon's production aiobotocore client talks to
it unchanged. The script is a set of shards (`ScriptedShard`): records, a parent, whether the shard is closed,
and when DescribeStream starts listing it (once another shard was read to its end, and optionally only after
more listings than that). `status` is the stream's `StreamStatus`; `trimmed` shards are gone as after 24
hours (not listed; GetShardIterator answers `ResourceNotFoundException`). Faults are seeded: a share of
GetRecords calls answer `LimitExceededException`, a share of iterators are refused once with
`ExpiredIteratorException`, and some pages come back empty although records follow (as DynamoDB does).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/scripted/stream/2026-01-01T00:00:00.000"
_ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"


def _sequence(record: dict[str, Any]) -> int | None:
    """A scripted record's sequence number; None for the hostile records some tests script."""
    try:
        return int(record["dynamodb"]["SequenceNumber"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class ScriptedShard:
    id: str
    parent: str | None = None
    closed: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    listed_after_end_of: str | None = None  # DescribeStream lists this shard only once that shard was read to its end
    listed_after_listings: int = 0  # ... and only after this many more listings (DescribeStream without a start id)


@dataclass
class Calls:
    """What the daemon did, for assertions."""

    get_records: list[tuple[str, int]] = field(default_factory=list)  # (shard, records returned)
    ended: dict[str, int] = field(default_factory=dict)  # shard -> index in get_records where its end was read
    first_read: dict[str, int] = field(default_factory=dict)  # shard -> index of its first GetRecords
    listings: int = 0  # DescribeStream calls without ExclusiveStartShardId (each starts a listing)
    ended_at_listing: dict[str, int] = field(default_factory=dict)  # shard -> `listings` when its end was read
    throttled: int = 0
    expired: int = 0
    empty_injected: int = 0


class ScriptedStreams:
    def __init__(
        self,
        shards: list[ScriptedShard],
        *,
        seed: int = 0,
        throttle_rate: float = 0.0,
        expire_rate: float = 0.0,
        empty_rate: float = 0.0,
        describe_page_size: int = 2,
    ) -> None:
        self.shards = {s.id: s for s in shards}
        self.order = [s.id for s in shards]
        self.rng = random.Random(seed)
        self.throttle_rate, self.expire_rate, self.empty_rate = throttle_rate, expire_rate, empty_rate
        self.describe_page_size = describe_page_size
        self.status = "ENABLED"
        self.trimmed: set[str] = set()
        self.calls = Calls()
        self._expired_once: set[str] = set()
        self._emptied: set[tuple[str, int]] = set()
        self.app = web.Application()
        self.app.router.add_post("/", self._handle)

    # -- helpers to build a script ---------------------------------------------------------------------

    @staticmethod
    def record(
        sequence: int, event: str, keys: dict[str, Any], new: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ApproximateCreationDateTime": 1_700_000_000 + sequence % 1_000_000 // 100,
            "Keys": keys,
            "SequenceNumber": str(sequence),
            "SizeBytes": 100,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
        if new is not None:
            body["NewImage"] = new
        if old is not None:
            body["OldImage"] = old
        return {
            "eventID": f"e{sequence}",
            "eventName": event,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": body,
        }

    # -- protocol ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        body = orjson.loads(await request.read() or b"{}")
        handler = getattr(self, f"_op_{operation}", None)
        if handler is None:
            return _error("UnknownOperationException", operation)
        try:
            return _json(handler(body))
        except _Fault as fault:
            return _error(fault.code, fault.message)

    def _op_DescribeStream(self, body: dict[str, Any]) -> dict[str, Any]:
        start = body.get("ExclusiveStartShardId")
        if start is None:
            self.calls.listings += 1
        visible = [sid for sid in self.order if sid not in self.trimmed and self._listed(self.shards[sid])]
        if start is not None:
            visible = visible[visible.index(start) + 1 :] if start in visible else []
        limit = min(int(body.get("Limit", 100)), self.describe_page_size)
        page, more = visible[:limit], len(visible) > limit
        shards = []
        for sid in page:
            shard = self.shards[sid]
            sequences = [n for r in shard.records if (n := _sequence(r)) is not None] or [1]
            seq_range = {"StartingSequenceNumber": str(min(sequences))}
            if shard.closed:
                seq_range["EndingSequenceNumber"] = str(max(sequences))
            entry: dict[str, Any] = {"ShardId": sid, "SequenceNumberRange": seq_range}
            if shard.parent:
                entry["ParentShardId"] = shard.parent
            shards.append(entry)
        description: dict[str, Any] = {
            "StreamArn": STREAM_ARN,
            "StreamLabel": "2026-01-01T00:00:00.000",
            "StreamStatus": self.status,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
            "TableName": "scripted",
            "KeySchema": [{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
            "Shards": shards,
        }
        if more:
            description["LastEvaluatedShardId"] = page[-1]
        return {"StreamDescription": description}

    def _listed(self, shard: ScriptedShard) -> bool:
        after = shard.listed_after_end_of
        if after is None:
            return True
        if after not in self.calls.ended:
            return False
        if not shard.listed_after_listings:
            return True
        return self.calls.listings - self.calls.ended_at_listing[after] > shard.listed_after_listings

    def _op_GetShardIterator(self, body: dict[str, Any]) -> dict[str, Any]:
        shard = self.shards.get(body["ShardId"])
        if shard is None or shard.id in self.trimmed:
            raise _Fault("ResourceNotFoundException", f"shard {body['ShardId']} not found")
        kind = body["ShardIteratorType"]
        if kind == "TRIM_HORIZON":
            index = 0
        elif kind == "LATEST":
            index = len(shard.records)
        else:
            sequence = int(body["SequenceNumber"])
            sequences = [_sequence(r) for r in shard.records]
            if sequence not in sequences:
                raise _Fault("TrimmedDataAccessException", f"sequence number {sequence} is not in the shard")
            index = sequences.index(sequence) + (1 if kind == "AFTER_SEQUENCE_NUMBER" else 0)
        return {"ShardIterator": self._token(shard.id, index)}

    def _op_GetRecords(self, body: dict[str, Any]) -> dict[str, Any]:
        token = body["ShardIterator"]
        shard_id, _, index_text = token.partition("|")
        index = int(index_text.partition("|")[0])
        shard = self.shards[shard_id]
        if self.rng.random() < self.throttle_rate:
            self.calls.throttled += 1
            raise _Fault("LimitExceededException", "Rate exceeded for shard")
        if token not in self._expired_once and self.rng.random() < self.expire_rate:
            self._expired_once.add(token)
            self.calls.expired += 1
            raise _Fault("ExpiredIteratorException", "Iterator expired")
        call = len(self.calls.get_records)
        self.calls.first_read.setdefault(shard_id, call)
        limit = int(body.get("Limit", 1000))
        if (
            index < len(shard.records)
            and (shard_id, index) not in self._emptied
            and self.rng.random() < self.empty_rate
        ):
            self._emptied.add((shard_id, index))  # once per position: DynamoDB does not loop on one forever
            self.calls.empty_injected += 1
            records: list[dict[str, Any]] = []
        else:
            records = shard.records[index : index + limit]
        self.calls.get_records.append((shard_id, len(records)))
        after = index + len(records)
        out: dict[str, Any] = {"Records": records}
        if shard.closed and after >= len(shard.records):
            self.calls.ended.setdefault(shard_id, call)
            self.calls.ended_at_listing.setdefault(shard_id, self.calls.listings)
        else:
            out["NextShardIterator"] = self._token(shard_id, after)
        return out

    def _token(self, shard_id: str, index: int) -> str:
        return f"{shard_id}|{index}|{self.rng.randrange(10**9)}"


class _Fault(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/x-amz-json-1.0")


def _error(code: str, message: str) -> web.Response:
    return web.Response(
        status=400,
        body=orjson.dumps({"__type": _ERROR_PREFIX + code, "message": message}),
        content_type="application/x-amz-json-1.0",
    )
