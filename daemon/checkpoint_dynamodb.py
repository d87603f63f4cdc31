"""Checkpoints and leases in one DynamoDB table, shared by every instance of the daemon (DESIGN, "Shared state
and leases"; the `LeaseStore` interface of `daemon.leases`).

Room in the design: the store half of KCL's lease table, reached through the daemon's own aiobotocore client
(`daemon.aws.open_client`, botocore retries off). Throttling and 5xx answers are retried here with full jitter
(`daemon.sinks.base.full_jitter`) a bounded number of times; a failed condition is never retried: it raises
`LeaseLost` naming the partition, the owner and counter we expected and the ones the table holds.

Table (created on first use when missing, on-demand billing):

    source       S  HASH   the source name
    lease_key    S  RANGE  "p#" + partition (DynamoDB refuses empty key strings; a Neptune source's partition is "")
    partition    S         the partition itself
    owner        S         owner id of the holder; absent when the lease is free
    lease_counter N        bumped by every take, renew, release and hand-off
    heartbeat    N         epoch seconds of the owner's last write (for people; expiry is judged by the counter)
    parents      L of S    parent shard ids
    checkpoint   S         the position as JSON text, exactly as the SQLite store keeps it; ["SHARD_END"] at the end
    pending_owner S        an instance that asked for the lease (steal); the owner hands it over at its next renew
    cp@SINK      S         a DynamoDB shard's event sink SINK: its position on this shard (JSON text, as `checkpoint`),
                           on the lease item so a hand-over carries every sink's position (docs/events.md)
    updated_at   N         epoch seconds of the last checkpoint write

Every write that changes an owned lease is conditional on `owner = :me AND lease_counter = :counter`; a take is
conditional on the counter the taker saw; a steal request on the victim's owner and counter; an operator's change
(`overwrite`, from `graph-replicator checkpoint`) on the counter it saw, bumping it and freeing the lease.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import orjson
from botocore.exceptions import ClientError

from daemon.aws import classify_aws_error, error_code, open_client
from daemon.leases import Lease, LeaseLost
from daemon.model import SHARD_END, Position
from daemon.observability import METRICS, Metrics
from daemon.sinks.base import ErrorClass, full_jitter

CONDITION_FAILED = "ConditionalCheckFailedException"
_NAMES = {
    "#s": "source",
    "#k": "lease_key",
    "#o": "owner",
    "#c": "lease_counter",
    "#h": "heartbeat",
    "#cp": "checkpoint",
    "#p": "pending_owner",
    "#u": "updated_at",
}


def classify_table_error(exc: BaseException) -> ErrorClass:
    """Retry throttling, 5xx, timeouts and connection errors; never a failed condition (the lease moved)."""
    if error_code(exc) == CONDITION_FAILED:
        return ErrorClass(False, "lease_lost")
    cls = classify_aws_error(exc)
    return cls if cls.retryable else ErrorClass(False, cls.reason)


def _names_in(*expressions: str) -> dict[str, str]:
    """The attribute names the expressions use (DynamoDB refuses unused ones)."""
    tokens = set(re.findall(r"#\w+", " ".join(expressions)))
    return {name: attr for name, attr in _NAMES.items() if name in tokens}


def _key(source: str, partition: str) -> dict[str, Any]:
    return {"source": {"S": source}, "lease_key": {"S": "p#" + partition}}


def _position_text(position: Position) -> str:
    return orjson.dumps(list(position)).decode()


BRANCH_PREFIX = "cp@"  # the attribute of an event sink's position on a shard's lease item: cp@SINK


def lease_from_item(item: Mapping[str, Any]) -> Lease:
    checkpoint = item.get("checkpoint", {}).get("S")
    branches = {
        name[len(BRANCH_PREFIX) :]: tuple(orjson.loads(value["S"]))
        for name, value in item.items()
        if name.startswith(BRANCH_PREFIX)
    }
    return Lease(
        source=item["source"]["S"],
        partition=item["partition"]["S"],
        owner=item.get("owner", {}).get("S"),
        counter=int(item.get("lease_counter", {}).get("N", "0")),
        heartbeat=float(item.get("heartbeat", {}).get("N", "0")),
        parents=tuple(p["S"] for p in item.get("parents", {}).get("L", [])),
        position=tuple(orjson.loads(checkpoint)) if checkpoint is not None else None,
        pending_owner=item.get("pending_owner", {}).get("S"),
        branches=branches,
    )


def _absorb(lease: Lease, written: Lease) -> Lease:
    """Update the caller's lease object in place (the coordinator and the pipeline share it)."""
    lease.owner, lease.counter, lease.heartbeat = written.owner, written.counter, written.heartbeat
    lease.parents, lease.position, lease.pending_owner = written.parents, written.position, written.pending_owner
    lease.branches = written.branches
    return lease


def _operator_write(
    table: str, source: str, partition: str, position: Position | None, expected_counter: int | None
) -> tuple[str, dict[str, Any]] | None:
    """An operator's write of one row (see `DynamoDBCheckpointStore.overwrite`) as (Put | Update | Delete, its
    arguments), usable alone or in a transaction; None when there is nothing to do (delete a missing row)."""
    condition, names = "#c = :seen", {"#c": "lease_counter"}
    now = {"N": repr(time.time())}
    if expected_counter is None:
        if position is None:
            return None
        item = {
            **_key(source, partition),
            "partition": {"S": partition},
            "lease_counter": {"N": "0"},
            "parents": {"L": []},
            "checkpoint": {"S": _position_text(position)},
            "updated_at": now,
        }
        return "Put", {"TableName": table, "Item": item, "ConditionExpression": "attribute_not_exists(#c)",
                       "ExpressionAttributeNames": names}  # fmt: skip
    common = {"TableName": table, "Key": _key(source, partition), "ConditionExpression": condition}
    values: dict[str, Any] = {":seen": {"N": str(expected_counter)}}
    if position is None:
        return "Delete", {**common, "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}
    update = "SET #cp = :cp, #u = :now, #c = #c + :one REMOVE #o, #p"
    values.update({":cp": {"S": _position_text(position)}, ":now": now, ":one": {"N": "1"}})
    return "Update", {**common, "UpdateExpression": update, "ExpressionAttributeNames": _names_in(update, "#c"),
                      "ExpressionAttributeValues": values}  # fmt: skip


class DynamoDBCheckpointStore:
    """Positions and leases of every source, one item per (source, partition)."""

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        retry_attempts: int = 5,
        retry_initial_seconds: float = 0.05,
        retry_max_seconds: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.table = table
        self.retry_attempts = retry_attempts
        self.retry_initial_seconds = retry_initial_seconds
        self.retry_max_seconds = retry_max_seconds
        self.retries: Counter[str] = Counter()  # retried table calls by reason (also the metric below)
        self._m_retries = (metrics or METRICS).lease_table_retries
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @classmethod
    async def open(
        cls, stack: AsyncExitStack, *, table: str, region: str, endpoint: str | None = None, **kwargs: Any
    ) -> DynamoDBCheckpointStore:
        """A store on its own client (bound to `stack`), with the table created if it is missing."""
        store = await cls.connect(stack, table=table, region=region, endpoint=endpoint, **kwargs)
        await store.ensure_table()
        return store

    @classmethod
    async def connect(
        cls, stack: AsyncExitStack, *, table: str, region: str, endpoint: str | None = None, **kwargs: Any
    ) -> DynamoDBCheckpointStore:
        """A store on its own client (bound to `stack`), before any call to the table: `ensure_table` may then be
        retried on the same client while the table is unreachable."""
        client = await open_client(stack, "dynamodb", endpoint=endpoint, region=region, timeout_seconds=10.0)
        return cls(client, table, **kwargs)

    # ------------------------------------------------------------------------------------------ table

    async def ensure_table(self, wait_seconds: float = 120.0) -> None:
        """Create the table (on-demand) unless it exists, and wait until it is active."""
        try:
            await self._call("describe_table", TableName=self.table)
            return
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
        try:
            await self._call(
                "create_table",
                TableName=self.table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": "source", "AttributeType": "S"},
                    {"AttributeName": "lease_key", "AttributeType": "S"},
                ],
                KeySchema=[
                    {"AttributeName": "source", "KeyType": "HASH"},
                    {"AttributeName": "lease_key", "KeyType": "RANGE"},
                ],
            )
        except ClientError as exc:
            if error_code(exc) != "ResourceInUseException":  # another instance created it first
                raise
        waiter = self.client.get_waiter("table_exists")
        await waiter.wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": max(1, int(wait_seconds))})

    # ------------------------------------------------------------------------------------- checkpoints

    async def load(self, source: str) -> dict[str, Position]:
        """Every partition's checkpointed position for `source`."""
        return {lease.partition: lease.position for lease in await self.list_leases(source) if lease.position}

    async def save_many(self, source: str, positions: dict[str, Position], leases: Mapping[str, Lease]) -> None:
        """Write each partition's position, each conditional on the caller's lease of it (one item per write:
        every partition's watermark stands alone, so they need no transaction). A write bumps the counter and the
        heartbeat like a renewal, so a partition checkpointed often needs no renewal calls of its own."""
        now = time.time()
        for partition, position in positions.items():
            lease = self._held(source, partition, leases)
            if lease.source != source:  # an event sink's SOURCE@SINK row, under the source's lease
                await self._save_branch(source, position, lease, now)
                continue
            await self._conditional_update(
                lease,
                "SET #cp = :cp, #u = :now, #c = #c + :one, #h = :now",
                {":cp": {"S": _position_text(position)}, ":now": {"N": repr(now)}},
                bump=True,
            )
            lease.position = tuple(position)

    async def _save_branch(self, key: str, position: Position, lease: Lease, now: float) -> None:
        """Write the row `key` (an event sink's `SOURCE@SINK`) of the lease's partition in one transaction with a
        check that the source's lease is still ours at the counter we hold, so a process that lost the lease can
        no more move an event sink's checkpoint than the source's. The check leaves the lease as it is (a retry
        after a write that landed unanswered finds the same counter), so the write does not renew it."""
        async with self._locks.setdefault((lease.source, lease.partition), asyncio.Lock()):
            check = "#o = :me AND #c = :c"
            update = "SET #cp = :cp, #u = :now, #pt = :pt, #c = if_not_exists(#c, :zero)"
            items = [
                {
                    "ConditionCheck": {
                        "TableName": self.table,
                        "Key": _key(lease.source, lease.partition),
                        "ConditionExpression": check,
                        "ExpressionAttributeNames": _names_in(check),
                        "ExpressionAttributeValues": {
                            ":me": {"S": lease.owner or ""},
                            ":c": {"N": str(lease.counter)},
                        },
                    }
                },
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": _key(key, lease.partition),
                        "UpdateExpression": update,
                        "ExpressionAttributeNames": {**_names_in(update), "#pt": "partition"},
                        "ExpressionAttributeValues": {
                            ":cp": {"S": _position_text(position)},
                            ":now": {"N": repr(now)},
                            ":pt": {"S": lease.partition},
                            ":zero": {"N": "0"},
                        },
                    }
                },
            ]
            await self._transact(items, lease)

    async def save_shard_branch(self, lease: Lease, sink: str, position: Position) -> None:
        """Write event sink `sink`'s position on a shared shard as an attribute of the shard's lease item
        (`cp@SINK`), conditional on our owner and counter like the shard's own checkpoint (and bumping the counter
        like it, so it also renews): a hand-over carries every sink's position, and an instance that lost the
        shard cannot move any of them (`LeaseLost`)."""
        await self._conditional_update(
            lease,
            "SET #b = :cp, #u = :now, #c = #c + :one, #h = :now",
            {":cp": {"S": _position_text(position)}, ":now": {"N": repr(time.time())}},
            bump=True,
            branch=BRANCH_PREFIX + sink,
        )

    async def _transact(self, items: list[dict[str, Any]], lease: Lease) -> None:
        """TransactWriteItems whose first item checks `lease`: a failed check raises `LeaseLost`; a conflict with
        another transaction in flight on the same items is retried like throttling."""
        for attempt in range(1, self.retry_attempts + 1):
            try:
                await self._call("transact_write_items", TransactItems=items)
                return
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                if "ConditionalCheckFailed" in reasons:
                    await self._lost(lease.source, lease.partition, lease.owner, lease.counter)
                if attempt >= self.retry_attempts or not {"TransactionConflict", "ThrottlingError"} & set(reasons):
                    raise
                self.retries["conflict"] += 1
                self._m_retries.labels(reason="conflict").inc()
                await asyncio.sleep(full_jitter(attempt - 1, self.retry_initial_seconds, self.retry_max_seconds))

    async def forget(self, source: str, partitions: list[str], leases: Mapping[str, Lease] | None = None) -> None:
        """Delete the items of partitions that no longer exist: ones we hold (conditional on our lease), or
        finished (`SHARD_END`) ones nobody holds. An item already gone is fine."""
        for partition in partitions:
            lease = (leases or {}).get(partition)
            values: dict[str, Any]
            if lease is not None and lease.owner is not None:
                condition = "attribute_not_exists(#c) OR (#o = :me AND #c = :c)"
                values = {":me": {"S": lease.owner}, ":c": {"N": str(lease.counter)}}
            else:
                condition = "attribute_not_exists(#c) OR (attribute_not_exists(#o) AND #cp = :end)"
                values = {":end": {"S": _position_text(SHARD_END)}}
            try:
                await self._call(
                    "delete_item",
                    TableName=self.table,
                    Key=_key(source, partition),
                    ConditionExpression=condition,
                    ExpressionAttributeNames=_names_in(condition),
                    ExpressionAttributeValues=values,
                )
            except ClientError as exc:
                if error_code(exc) != CONDITION_FAILED:
                    raise
                await self._lost(source, partition, lease.owner if lease else None, lease.counter if lease else None)

    # ------------------------------------------------------------------------------------------ leases

    async def ensure_leases(
        self,
        source: str,
        partitions: Mapping[str, tuple[str, ...]],
        positions: Mapping[str, Position] | None = None,
        branches: tuple[str, ...] = (),
    ) -> None:
        """Create a free lease for each partition (with its parents, and its first position when `positions`
        gives one, for the source and each event sink of `branches`) that has no item yet. Give parents before
        their children: a child whose parent has no item yet counts as ready to take."""
        for partition, parents in partitions.items():
            position = (positions or {}).get(partition)
            extra = {BRANCH_PREFIX + sink: {"S": _position_text(position)} for sink in branches if position is not None}
            try:
                await self._create(source, partition, parents, position, **extra)
            except ClientError as exc:
                if error_code(exc) != CONDITION_FAILED:
                    raise

    async def _create(
        self, source: str, partition: str, parents: tuple[str, ...], position: Position | None, **extra: Any
    ) -> None:
        """Put a free lease item, conditional on there being none yet (`ConditionalCheckFailedException`)."""
        item = {
            **_key(source, partition),
            "partition": {"S": partition},
            "lease_counter": {"N": "0"},
            "parents": {"L": [{"S": p} for p in parents]},
            **extra,
        }
        if position is not None:
            item["checkpoint"] = {"S": _position_text(position)}
        await self._call(
            "put_item",
            TableName=self.table,
            Item=item,
            ConditionExpression="attribute_not_exists(#c)",
            ExpressionAttributeNames={"#c": "lease_counter"},
        )

    async def list_leases(self, source: str) -> list[Lease]:
        """Every lease of `source`, read consistently."""
        leases: list[Lease] = []
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
            page = await self._call(
                "query",
                TableName=self.table,
                KeyConditionExpression="#s = :s",
                ExpressionAttributeNames={"#s": "source"},
                ExpressionAttributeValues={":s": {"S": source}},
                ConsistentRead=True,
                **kwargs,
            )
            leases.extend(lease_from_item(item) for item in page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if not start:
                return leases

    async def get_lease(self, source: str, partition: str) -> Lease | None:
        response = await self._call("get_item", TableName=self.table, Key=_key(source, partition), ConsistentRead=True)
        item = response.get("Item")
        return lease_from_item(item) if item else None

    async def take(self, source: str, partition: str, owner: str, expected_counter: int) -> Lease:
        """Become the owner of a lease whose counter is still `expected_counter` (a free one, an expired one, or
        one handed to us); any pending steal request is cleared."""
        lease = Lease(source, partition, None, expected_counter)
        return await self._conditional_update(
            lease,
            "SET #o = :new, #c = #c + :one, #h = :now REMOVE #p",
            {":new": {"S": owner}},
            bump=True,
            new_owner=owner,
            check_owner=False,
        )

    async def renew(self, lease: Lease) -> Lease:
        """Heartbeat a lease we hold: bump its counter. The answer carries any pending steal request."""
        return await self._conditional_update(lease, "SET #c = #c + :one, #h = :now", {}, bump=True)

    async def release(self, lease: Lease, to: str | None = None) -> None:
        """Give a lease up: free it, or hand it to `to` (the instance that asked for it)."""
        if to is None:
            await self._conditional_update(
                lease, "SET #c = #c + :one, #h = :now REMOVE #o, #p", {}, bump=True, new_owner=None
            )
        else:
            await self._conditional_update(
                lease,
                "SET #o = :new, #c = #c + :one, #h = :now REMOVE #p",
                {":new": {"S": to}},
                bump=True,
                new_owner=to,
            )

    async def steal(self, source: str, partition: str, owner: str, victim: str, expected_counter: int) -> Lease:
        """Ask `victim` for a lease it holds: record `owner` as the pending owner (the counter is untouched, so
        the victim keeps it until its next renew hands it over; a victim that stopped renewing lets it expire).
        The lease never changes hands under a live owner, so its writes stay fenced by its own deadline.
        Conditional on the owner, not on the counter: a busy victim's checkpoint writes move the counter many
        times a second, and a request conditional on a counter read a moment ago would nearly always fail."""
        lease = Lease(source, partition, victim, expected_counter)
        return await self._conditional_update(
            lease,
            "SET #p = :new",
            {":new": {"S": owner}},
            bump=False,
            extra_condition="attribute_not_exists(#p)",
            check_counter=False,
        )

    async def overwrite(
        self, source: str, partition: str, position: Position | None, expected_counter: int | None
    ) -> None:
        """An operator's change (`graph-replicator checkpoint`): write `position` (None: delete the item),
        conditional on the counter seen (`expected_counter`; None: the item must not exist yet). A write bumps
        the counter and frees the lease, so an owner that was only paused finds it moved (`LeaseLost`) instead
        of overwriting the new position. A failed condition raises `LeaseLost`."""
        write = _operator_write(self.table, source, partition, position, expected_counter)
        if write is None:
            return
        operation, kwargs = write
        try:
            await self._call({"Put": "put_item", "Delete": "delete_item", "Update": "update_item"}[operation], **kwargs)
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            await self._lost(source, partition, None, expected_counter)

    async def overwrite_branch(
        self,
        source: str,
        key: str,
        partition: str,
        position: Position | None,
        expected_counter: int | None,
        source_counter: int | None,
    ) -> None:
        """An operator's change of an event sink's row `key` (`SOURCE@SINK`) of `partition`, as `overwrite` does,
        in one transaction with the source's lease of that partition, which it bumps and frees at the counter
        seen (`source_counter`; None: the source has no item for it): a paused owner, whose branch writes are
        conditional on that lease, finds it moved and cannot overwrite the new position. `LeaseLost` when either
        item changed since it was read."""
        write = _operator_write(self.table, key, partition, position, expected_counter)
        if write is None:
            return
        operation, kwargs = write
        lease: dict[str, Any] = {"TableName": self.table, "Key": _key(source, partition)}
        if source_counter is None:
            lease.update(
                ConditionExpression="attribute_not_exists(#c)", ExpressionAttributeNames={"#c": "lease_counter"}
            )
            fence = {"ConditionCheck": lease}
        else:
            update = "SET #c = #c + :one REMOVE #o, #p"
            lease.update(
                UpdateExpression=update,
                ConditionExpression="#c = :seen",
                ExpressionAttributeNames=_names_in(update),
                ExpressionAttributeValues={":seen": {"N": str(source_counter)}, ":one": {"N": "1"}},
            )
            fence = {"Update": lease}
        try:
            await self._call("transact_write_items", TransactItems=[fence, {operation: kwargs}])
        except ClientError as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if error_code(exc) != "TransactionCanceledException" or "ConditionalCheckFailed" not in reasons:
                raise
            changed = (source, source_counter) if reasons[0] == "ConditionalCheckFailed" else (key, expected_counter)
            await self._lost(changed[0], partition, None, changed[1])

    # ------------------------------------------------------------------------------------------ plumbing

    def _held(self, source: str, partition: str, leases: Mapping[str, Lease]) -> Lease:
        lease = leases.get(partition)
        if lease is None or lease.owner is None:
            raise LeaseLost(source, partition, None, None)
        return lease

    async def _conditional_update(
        self,
        lease: Lease,
        update: str,
        values: dict[str, Any],
        *,
        bump: bool,
        new_owner: str | bool | None = False,
        check_owner: bool = True,
        extra_condition: str | None = None,
        check_counter: bool = True,
        branch: str | None = None,
    ) -> Lease:
        """One UpdateItem conditional on the lease's counter (and owner), returning the lease as written.
        `new_owner` False means "the owner stays". Writes of one lease are serialised in this process, so a
        renewal and a checkpoint in flight together never fail each other's counter condition."""
        async with self._locks.setdefault((lease.source, lease.partition), asyncio.Lock()):
            return await self._update_locked(
                lease,
                update,
                values,
                bump=bump,
                new_owner=new_owner,
                check_owner=check_owner,
                extra_condition=extra_condition,
                check_counter=check_counter,
                branch=branch,
            )

    async def _update_locked(
        self,
        lease: Lease,
        update: str,
        values: dict[str, Any],
        *,
        bump: bool,
        new_owner: str | bool | None,
        check_owner: bool,
        extra_condition: str | None,
        check_counter: bool = True,
        branch: str | None = None,
    ) -> Lease:
        conditions = ["#c = :c"] if check_counter else []
        values = {**values, ":c": {"N": str(lease.counter)}} if check_counter else dict(values)
        if check_owner:
            conditions.append("#o = :me")
            values[":me"] = {"S": lease.owner or ""}
        if extra_condition:
            conditions.append(extra_condition)
        if bump:
            values[":one"] = {"N": "1"}
        values.setdefault(":now", {"N": repr(time.time())})
        condition = " AND ".join(conditions)
        # DynamoDB refuses names and values the expressions do not use.
        tokens = set(re.findall(r":\w+", update + " " + condition))
        attempts = [0]
        try:
            response = await self._call(
                "update_item",
                attempts=attempts,
                TableName=self.table,
                Key=_key(lease.source, lease.partition),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={**_names_in(update, condition), **({"#b": branch} if branch else {})},
                ExpressionAttributeValues={name: value for name, value in values.items() if name in tokens},
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            actual = await self.get_lease(lease.source, lease.partition)
            owner_after = lease.owner if new_owner is False else new_owner
            if (
                attempts[0] > 1  # a retried write whose earlier attempt had landed
                and actual is not None
                and actual.owner == owner_after
                and actual.counter == lease.counter + (1 if bump else 0)
            ):
                return _absorb(lease, actual)
            raise LeaseLost(
                lease.source,
                lease.partition,
                lease.owner,
                actual.owner if actual else None,
                lease.counter,
                actual.counter if actual else None,
            ) from None
        return _absorb(lease, lease_from_item(response["Attributes"]))

    async def _lost(self, source: str, partition: str, owner: str | None, counter: int | None) -> None:
        actual = await self.get_lease(source, partition)
        raise LeaseLost(
            source, partition, owner, actual.owner if actual else None, counter, actual.counter if actual else None
        )

    async def _call(self, operation: str, *, attempts: list[int] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Call the table, retrying throttling, 5xx, timeouts and connection errors with full jitter, a bounded
        number of times. `attempts`, when given, receives how many calls were made (a write retried after a
        lost answer may have landed the first time)."""
        method = getattr(self.client, operation)
        attempt = 0
        while True:
            attempt += 1
            if attempts is not None:
                attempts[:] = [attempt]
            try:
                return await method(**kwargs)
            except Exception as exc:
                cls = classify_table_error(exc)
                if not cls.retryable or attempt >= self.retry_attempts:
                    raise
                self.retries[cls.reason] += 1
                self._m_retries.labels(reason=cls.reason).inc()
                await asyncio.sleep(full_jitter(attempt - 1, self.retry_initial_seconds, self.retry_max_seconds))


async def watch_owners(
    store: DynamoDBCheckpointStore,
    source: str,
    seconds: float,
    *,
    poll: float | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> tuple[list[Lease], dict[str, Lease]]:
    """Which owners of `source`'s leases are alive, judged as every instance judges expiry: a lease whose counter
    moves within `seconds` of watching (or that gains an owner) has a live owner. Returns those, as soon as one is
    seen (reading every `poll` seconds; once at the end when None), and the leases as last read, which a write
    conditional on their counters expects. Returns at once, with nobody alive, when no lease is owned."""
    first = {lease.partition: lease for lease in await store.list_leases(source)}
    latest = first
    waited = 0.0
    while waited < seconds and any(lease.owner for lease in first.values()):
        pause = seconds - waited if poll is None else min(poll, seconds - waited)
        await sleep(pause)
        waited += pause
        latest = {lease.partition: lease for lease in await store.list_leases(source)}
        alive = [
            lease
            for partition, lease in latest.items()
            if lease.owner and (partition not in first or first[partition].counter != lease.counter)
        ]
        if alive:
            return alive, latest
    return [], latest
