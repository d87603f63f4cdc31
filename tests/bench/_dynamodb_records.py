"""DynamoDB stream records for the benchmarks, without a DynamoDB: `SocialWorkload` driven against an in-memory
table that emits the records a `NEW_AND_OLD_IMAGES` stream would, in botocore's parsed shape.

Room in the design: input for `tests/bench/pipeline_cost.py` (the DynamoDB rows). `social_records` gives the
records in botocore's model-parsed shape (`ApproximateCreationDateTime` a datetime, binary values bytes);
`wire_page` gives the JSON a GetRecords response carries, which is what the `dynamodb` source receives (its
model extras declare the records a document). Like real DynamoDB (and unlike moto), a write that changes
nothing emits no record.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import re
from typing import Any

import orjson

from tests.stand.dynamodb_workload import TABLE, SocialWorkload

_ASSIGN = re.compile(r"(#\w+)\s*=\s*(:\w+)")


class _RecordingTable:
    """Just enough of a boto3 `dynamodb` client for `SocialWorkload`: items in a dict, stream records out."""

    def __init__(self, start: dt.datetime) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.records: list[dict[str, Any]] = []
        self._sequence = 10**20
        self._clock = start

    def _emit(self, key: dict[str, Any], old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if old == new:
            return
        self._sequence += 17
        self._clock += dt.timedelta(milliseconds=20)
        body: dict[str, Any] = {
            "ApproximateCreationDateTime": self._clock.replace(microsecond=0),
            "Keys": copy.deepcopy(key),
            "SequenceNumber": str(self._sequence),
            "SizeBytes": 100,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
        if new is not None:
            body["NewImage"] = copy.deepcopy(new)
        if old is not None:
            body["OldImage"] = copy.deepcopy(old)
        event = "REMOVE" if new is None else ("INSERT" if old is None else "MODIFY")
        self.records.append(
            {
                "eventID": f"{self._sequence:x}",
                "eventName": event,
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": body,
            }
        )

    @staticmethod
    def _key(item: dict[str, Any]) -> tuple[str, str]:
        return (item["PK"]["S"], item["SK"]["S"])

    def put_item(self, TableName: str, Item: dict[str, Any]) -> None:
        key = self._key(Item)
        old = self.items.get(key)
        self.items[key] = copy.deepcopy(Item)
        self._emit({"PK": Item["PK"], "SK": Item["SK"]}, old, Item)

    def delete_item(self, TableName: str, Key: dict[str, Any]) -> None:
        old = self.items.pop(self._key(Key), None)
        if old is not None:
            self._emit(Key, old, None)

    def update_item(self, TableName: str, Key: dict[str, Any], UpdateExpression: str, **params: Any) -> None:
        names = params.get("ExpressionAttributeNames", {})
        values = params.get("ExpressionAttributeValues", {})
        key = self._key(Key)
        old = self.items.get(key)
        new = copy.deepcopy(old) if old is not None else copy.deepcopy(Key)
        set_part, _, remove_part = UpdateExpression.partition(" REMOVE ")
        for name, value in _ASSIGN.findall(set_part):
            new[names[name]] = copy.deepcopy(values[value])
        for name in filter(None, (n.strip() for n in remove_part.split(","))):
            new.pop(names[name], None)
        self.items[key] = new
        self._emit(Key, old, new)

    def batch_write_item(self, RequestItems: dict[str, list[dict[str, Any]]]) -> None:
        for request in RequestItems[TABLE]:
            if "PutRequest" in request:
                self.put_item(TABLE, request["PutRequest"]["Item"])
            else:
                self.delete_item(TABLE, request["DeleteRequest"]["Key"])


def social_records(
    n_records: int, seed: int = 7, *, users: int = 2000, posts: int = 1000, plain: bool = False
) -> list[dict[str, Any]]:
    """At least `n_records` stream records of the social workload (`config/dynamodb-social.toml`); `plain`:
    attributes of the common types only (S, N, BOOL) instead of every DynamoDB type."""
    table = _RecordingTable(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    workload = SocialWorkload(table, seed, users=users, posts=posts, plain=plain)
    target = n_records
    while len(table.records) < n_records:
        target += max(100, (n_records - len(table.records)) * 11 // 10)
        workload.run(target)
    return table.records[:n_records]


def _wire(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def wire_page(records: list[dict[str, Any]]) -> bytes:
    """The body of a GetRecords response holding `records`, as DynamoDB Streams sends it."""
    return orjson.dumps({"Records": _wire(records), "NextShardIterator": "AAAA" * 20})
