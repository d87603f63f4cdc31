"""A seeded single-table social workload on a real DynamoDB API (moto in server mode), and the graph the table's
final contents should replicate to under `config/dynamodb-social.toml`.

Items (key PK, SK): `USER#u / PROFILE` (vertex User), `POST#p / POST` (vertex Post), `USER#a / FOLLOWS#b`
(edge FOLLOWS), `USER#a / LIKES#p` (edge LIKES), and `CONFIG#...` items that no rule maps. The operations mix
PutItem (new items and overwrites that drop attributes), UpdateItem (SET / REMOVE / ADD to a set), DeleteItem,
and BatchWriteItem; users are deleted while edges still point at them, and edges are written before their
endpoint items exist. Attribute values cover every DynamoDB type.

`expected_graph` builds the reference from a Scan of the table, with its own reading of the value rule
(docs/data-model.md), independent of `daemon.values`: vertices from vertex items, edges from edge items, and a
bare vertex (no label, no property) for each edge endpoint that has no item of its own.
"""

from __future__ import annotations

import base64
import json
import random
from decimal import Decimal
from typing import Any

from tests.stand.workload import ReferenceGraph

TABLE = "social"
RENAME = {"name": "displayName"}  # the user rule's rename in config/dynamodb-social.toml


def create_table(
    client: Any, table: str = TABLE, view_type: str = "NEW_AND_OLD_IMAGES", *, stream: bool = True
) -> str | None:
    """Create the table, with a stream unless `stream` is false; returns the stream ARN."""
    params: dict[str, Any] = {}
    if stream:
        params["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view_type}
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
        **params,
    )
    return client.describe_table(TableName=table)["Table"].get("LatestStreamArn")


def enable_stream(client: Any, table: str = TABLE, view_type: str = "NEW_AND_OLD_IMAGES") -> str:
    """Turn the table's stream on (it records only what is written from now on); returns its ARN."""
    client.update_table(TableName=table, StreamSpecification={"StreamEnabled": True, "StreamViewType": view_type})
    return client.describe_table(TableName=table)["Table"]["LatestStreamArn"]


class SocialWorkload:
    """Seeded operations against one table through a boto3 `dynamodb` client."""

    def __init__(
        self, client: Any, seed: int, *, table: str = TABLE, users: int = 60, posts: int = 40, plain: bool = False
    ) -> None:
        self.client = client
        self.plain = plain  # attributes of the common types only (S, N, BOOL), as most application items
        self.table = table
        self.rng = random.Random(seed)
        self.users = [f"u{i}" for i in range(users)]
        self.posts = [f"p{i}" for i in range(posts)]
        self.operations = 0

    def run(self, n_operations: int) -> None:
        rng = self.rng
        while self.operations < n_operations:
            roll = rng.random()
            if roll < 0.15:
                self._batch(min(25, n_operations - self.operations))
            elif roll < 0.35:
                self._put(self._random_item())
            elif roll < 0.65:
                self._update()
            elif roll < 0.8:
                self._delete(self._random_key())
            elif roll < 0.9:
                self._put(self._user_item(rng.choice(self.users)))
            else:
                self._put(self._edge_item())

    def seed(self, n_items: int) -> None:
        """Write `n_items` distinct items in batches: about 14 % users (a tenth of the users get none, so edges
        point at bare vertices), 8 % posts, 2 % unmapped config items, the rest FOLLOWS and LIKES edges.
        Needs `users` x `posts` large enough for that many distinct keys."""
        rng = self.rng
        keys: set[tuple[str, str]] = set()
        with_profile = [u for u in self.users if rng.random() < 0.9]
        items: list[dict[str, Any]] = []
        for user in with_profile[: int(n_items * 0.14)]:
            items.append(self._user_item(user))
        for post in self.posts[: int(n_items * 0.08)]:
            items.append({"PK": {"S": f"POST#{post}"}, "SK": {"S": "POST"}, **self._attributes()})
        for i in range(int(n_items * 0.02)):
            items.append({"PK": {"S": f"CONFIG#{i}"}, "SK": {"S": "SETTINGS"}, **self._attributes()})
        keys.update((item["PK"]["S"], item["SK"]["S"]) for item in items)
        while len(items) < n_items:
            item = self._edge_item()
            key = (item["PK"]["S"], item["SK"]["S"])
            if key not in keys:
                keys.add(key)
                items.append(item)
        rng.shuffle(items)
        for i in range(0, len(items), 25):
            request = [{"PutRequest": {"Item": item}} for item in items[i : i + 25]]
            response = self.client.batch_write_item(RequestItems={self.table: request})
            assert not response.get("UnprocessedItems"), response["UnprocessedItems"]

    # -- items -------------------------------------------------------------------------------------

    def _random_key(self) -> dict[str, Any]:
        rng = self.rng
        kind = rng.random()
        if kind < 0.35:
            return {"PK": {"S": f"USER#{rng.choice(self.users)}"}, "SK": {"S": "PROFILE"}}
        if kind < 0.5:
            return {"PK": {"S": f"POST#{rng.choice(self.posts)}"}, "SK": {"S": "POST"}}
        if kind < 0.75:
            return {"PK": {"S": f"USER#{rng.choice(self.users)}"}, "SK": {"S": f"FOLLOWS#{rng.choice(self.users)}"}}
        if kind < 0.95:
            return {"PK": {"S": f"USER#{rng.choice(self.users)}"}, "SK": {"S": f"LIKES#{rng.choice(self.posts)}"}}
        return {"PK": {"S": f"CONFIG#{rng.randrange(5)}"}, "SK": {"S": "SETTINGS"}}

    def _random_item(self) -> dict[str, Any]:
        key = self._random_key()
        return {**key, **self._attributes()}

    def _user_item(self, user: str) -> dict[str, Any]:
        return {"PK": {"S": f"USER#{user}"}, "SK": {"S": "PROFILE"}, **self._attributes()}

    def _edge_item(self) -> dict[str, Any]:
        rng = self.rng
        a = rng.choice(self.users)
        if rng.random() < 0.5:
            sk = f"FOLLOWS#{rng.choice(self.users)}"
        else:
            sk = f"LIKES#{rng.choice(self.posts)}"
        return {"PK": {"S": f"USER#{a}"}, "SK": {"S": sk}, **self._attributes()}

    def _attributes(self) -> dict[str, Any]:
        rng = self.rng
        makers = {
            "name": lambda: {"S": rng.choice(["Ada", "Grace", "Zoë", 'Quote "q"', "a,b\nc", "`tick`"])},
            "age": lambda: {"N": str(rng.randint(-5, 120))},
            "score": lambda: {"N": str(Decimal(rng.randint(-(10**6), 10**6)) / 1000)},
            "big": lambda: {"N": rng.choice(["12345678901234567890123", "9223372036854775807", "1E+3", "-0.5"])},
            "active": lambda: {"BOOL": rng.random() < 0.5},
            "tags": lambda: {"SS": sorted({rng.choice("abcdef") for _ in range(rng.randint(1, 4))})},
            "lucky": lambda: {"NS": sorted({str(rng.randint(0, 50)) for _ in range(rng.randint(1, 3))})},
            "prefs": lambda: {"M": {"theme": {"S": rng.choice(["dark", "light"])}, "n": {"N": "1.5"}}},
            "history": lambda: {"L": [{"S": "x"}, {"N": "2"}, {"NULL": True}, {"BOOL": False}]},
            "avatar": lambda: {"B": bytes(rng.randrange(256) for _ in range(rng.randint(0, 6)))},
            "keys": lambda: {"BS": [bytes([i]) for i in sorted({rng.randrange(256) for _ in range(2)})]},
            "nickname": lambda: {"NULL": True},
            "odd key": lambda: {"S": "spaces in the name"},
            "since": lambda: {"N": str(rng.randint(2000, 2030))},
        }
        if self.plain:
            makers = {k: makers[k] for k in ("name", "age", "score", "active", "since", "odd key")}
        chosen = rng.sample(sorted(makers), rng.randint(1, 6))
        return {name: makers[name]() for name in chosen}

    # -- calls -------------------------------------------------------------------------------------

    def _put(self, item: dict[str, Any]) -> None:
        self.client.put_item(TableName=self.table, Item=item)
        self.operations += 1

    def _delete(self, key: dict[str, Any]) -> None:
        self.client.delete_item(TableName=self.table, Key=key)
        self.operations += 1

    def _update(self) -> None:
        rng = self.rng
        key = self._random_key()
        values = self._attributes()
        names = {f"#a{i}": name for i, name in enumerate(values)}
        sets = [f"#a{i} = :v{i}" for i in range(len(values))]
        params: dict[str, Any] = {
            "TableName": self.table,
            "Key": key,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {f":v{i}": v for i, v in enumerate(values.values())},
        }
        expression = "SET " + ", ".join(sets)
        if rng.random() < 0.4:
            gone = rng.choice(["age", "tags", "name", "score", "avatar"])
            if gone not in values:
                names["#gone"] = gone
                expression += " REMOVE #gone"
        params["UpdateExpression"] = expression
        self.client.update_item(**params)
        self.operations += 1

    def _batch(self, size: int) -> None:
        requests: dict[tuple[str, str], dict[str, Any]] = {}  # one request per key in a batch
        for _ in range(size):
            if self.rng.random() < 0.7:
                item = self._random_item()
                requests[(item["PK"]["S"], item["SK"]["S"])] = {"PutRequest": {"Item": item}}
            else:
                key = self._random_key()
                requests[(key["PK"]["S"], key["SK"]["S"])] = {"DeleteRequest": {"Key": key}}
        self.client.batch_write_item(RequestItems={self.table: list(requests.values())})
        self.operations += len(requests)


# -- the reference ------------------------------------------------------------------------------------


def scan(client: Any, table: str = TABLE) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**params)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def expected_value(value: dict[str, Any]) -> Any:
    """The documented rule, read independently of `daemon.values` (None = no property)."""
    ((tag, raw),) = value.items()
    if tag in ("S", "BOOL"):
        return raw
    if tag == "N":
        return _number(raw)
    if tag == "B":
        return base64.b64encode(raw).decode()
    if tag == "NULL":
        return None
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _number(text: str) -> Any:
    d = Decimal(text)
    if d == d.to_integral_value() and -(2**63) <= d < 2**63:
        return int(d)
    if Decimal(repr(float(d))) == d:
        return float(d)
    return text


def _plain(value: dict[str, Any]) -> Any:
    ((tag, raw),) = value.items()
    if tag == "SS":
        return sorted(raw)
    if tag == "NS":
        return [_number(n) for n in sorted(raw, key=Decimal)]
    if tag == "BS":
        return sorted(base64.b64encode(b).decode() for b in raw)
    if tag == "L":
        return [_plain(v) for v in raw]
    if tag == "M":
        return {k: _plain(v) for k, v in raw.items()}
    return expected_value(value)


def _props(item: dict[str, Any], rename: dict[str, str] | None = None) -> dict[str, Any]:
    out = {}
    for name, value in item.items():
        if name in ("PK", "SK"):
            continue
        converted = expected_value(value)
        if converted is not None:
            out[(rename or {}).get(name, name)] = converted
    return out


def expected_graph(items: list[dict[str, Any]]) -> ReferenceGraph:
    graph = ReferenceGraph(strict=False)
    edges: list[tuple[str, str, str, str, dict[str, Any]]] = []
    for item in items:
        pk, sk = item["PK"]["S"], item["SK"]["S"]
        if pk.startswith("USER#") and sk == "PROFILE":
            graph.add_vertex(f"user:{pk[5:]}", frozenset({"User"}), _props(item, RENAME))
        elif pk.startswith("POST#") and sk == "POST":
            graph.add_vertex(f"post:{pk[5:]}", frozenset({"Post"}), _props(item))
        elif pk.startswith("USER#") and sk.startswith("FOLLOWS#"):
            a, b = pk[5:], sk[8:]
            edges.append((f"follows:{a}:{b}", "FOLLOWS", f"user:{a}", f"user:{b}", _props(item)))
        elif pk.startswith("USER#") and sk.startswith("LIKES#"):
            a, p = pk[5:], sk[6:]
            edges.append((f"likes:{a}:{p}", "LIKES", f"user:{a}", f"post:{p}", _props(item)))
    for edge_id, edge_type, from_id, to_id, props in edges:
        for end in (from_id, to_id):
            if end not in graph.vertices:
                graph.add_vertex(end, frozenset(), {})
        graph.add_edge(edge_id, edge_type, from_id, to_id, props)
    return graph
