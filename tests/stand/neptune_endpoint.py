"""A Neptune-compatible HTTP endpoint for tests, backed by an embedded FalkorDB engine.

It speaks the wire format of botocore's `neptunedata` (rest-json) and `neptune-graph` models closely enough
for real aiobotocore clients (and for the daemon run as a subprocess, pointed at `stand.url`):

* **stream source** - `GET /propertygraph/stream` (`GetPropertygraphStream`, alias `/pg/stream`) serves the
  change log in `stand.stream`, which tests append to while the daemon reads; `GET /sparql/stream`
  (`GetSparqlStream`) serves the RDF change log in `stand.sparql_stream` (format NQUADS, records
  `{"data": {"stmt": "<s> <p> <o> <g> .\n"}, "op": ...}`);
* **SPARQL target** - `POST /sparql` (SPARQL 1.1 protocol, form-encoded `update=` or `query=`) runs updates and
  queries on a real in-memory pyoxigraph store, `stand.rdf_store` (JSON results, Neptune-shaped JSON errors);
* **openCypher target** - `POST /opencypher` (`ExecuteOpenCypherQuery`; JSON or form-encoded, alias
  `/openCypher`) and `POST /queries` (neptune-graph `ExecuteQuery`) run Neptune openCypher on FalkorDB after
  `translate_query` (see there for the rules); queries reach the engine through `tests.stand.engine_wire`
  (a lean RESP2 path that hands back what redis-py would), translations are cached per query text;
* **bulk loader** - `POST /loader`, `GET /loader`, `GET /loader/{loadId}`, `DELETE /loader/{loadId}`
  (`StartLoaderJob` and friends) read openCypher CSV from S3 (moto, `stand.loader.s3_endpoint`) into the same
  engine, with the loader's statuses and error lines and a switch to fail a file (`tests.stand.loader`);
* **auth check** - every request must carry a SigV4 `Authorization` header (the signature is not verified);
* **faults on demand** - `stand.faults` injects seeded, deterministic errors, drops and delays, and poisons
  requests whose parameters contain a given substring.

`NeptuneStand` runs the aiohttp server and the engine on an event loop in a background thread, so sync tests,
async tests and daemon subprocesses can all use one stand.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import functools
import gzip
import json
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import falkordb
import orjson
import pyoxigraph
import redis.exceptions
from aiohttp import web
from falkordb.asyncio import FalkorDB as AsyncFalkorDB
from falkordb.asyncio.query_result import QueryResult as AsyncQueryResult
from falkordb.edge import Edge
from falkordb.node import Node
from falkordb.path import Path as GraphPath

from daemon.config import NEPTUNE_REQUEST_MAX_BYTES
from daemon.engine import EmbeddedFalkorDB
from daemon.names import InvalidName, decode_falkordb_name, encode_falkordb_name
from tests.stand.engine_wire import EngineWire, cypher_params_header
from tests.stand.loader import BulkLoader

__all__ = [
    "FAULT_KINDS",
    "HIDDEN_LABEL",
    "STREAM_FAULT_KINDS",
    "Fault",
    "Faults",
    "NeptuneStand",
    "StandError",
    "StreamLog",
    "Translation",
    "encode_parameter_keys",
    "translate_query",
]

HIDDEN_LABEL = "__Vertex"
"""Label the stand adds to every node pattern keyed by `~id`, so FalkorDB finds vertices through an index."""

FAULT_KINDS = frozenset(
    {
        "concurrent_modification",
        "throttling",
        "server_error",
        "slow",
        "drop_connection",
        "drop_after_commit",
        "read_only",
        "conflict",
    }
)
STREAM_FAULT_KINDS = frozenset({"throttling", "server_error", "slow", "drop_connection"})
QUERY_PATHS = ("opencypher", "queries", "sparql")
STREAM_PATH = "stream"
SPARQL_STREAM_PATH = "sparql_stream"
STREAM_PATHS = (STREAM_PATH, SPARQL_STREAM_PATH)
MAX_STREAM_LIMIT = 100_000

_T = TypeVar("_T")


class StandError(Exception):
    """An error answered the way Neptune answers it: HTTP status plus a JSON body with `code`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class _DropConnection(Exception):
    """Close the client's connection without sending a response."""


# ----------------------------------------------------------------------------------------------------
# Stream source
# ----------------------------------------------------------------------------------------------------


def _event_id_text(event_id: tuple[int, int] | None) -> str:
    commit_num, op_num = event_id or (0, 0)
    return f"[commitNum = {commit_num}, opNum = {op_num}]"


class StreamLog:
    """A Neptune property-graph change log: commits of ordered operations, trimmable at the old end.

    Thread-safe: tests append and trim from any thread while the server thread reads.
    """

    def __init__(self, format: str = "PG_JSON") -> None:
        self._lock = threading.Lock()
        self.format = format  # PG_JSON (records' data: id, type, ...) or NQUADS (data: stmt)
        self.clear()

    def clear(self) -> None:
        """Forget every record; the next commit is number 1 again."""
        with self._lock:
            self._keys: list[tuple[int, int]] = []
            self._records: list[bytes] = []  # serialised records, in the order of self._keys
            self._commit_ms: list[int] = []
            self._next_commit = 1
            self._trimmed_through: tuple[int, int] | None = None

    def append_commit(self, ops: Iterable[dict[str, Any]], commit_ms: int | None = None) -> int:
        """Append one commit of `{"op": "ADD"|"REMOVE", "data": {...}}` operations; return its commitNum."""
        ops = list(ops)
        if not ops:
            raise ValueError("a commit needs at least one operation")
        for op in ops:
            if op.get("op") not in ("ADD", "REMOVE") or not isinstance(op.get("data"), dict):
                raise ValueError(f"not a stream operation: {op!r}")
        with self._lock:
            commit_num = self._next_commit
            self._next_commit += 1
            timestamp = int(time.time() * 1000) if commit_ms is None else commit_ms
            for op_num, op in enumerate(ops, start=1):
                record: dict[str, Any] = {
                    "commitTimestamp": timestamp,
                    "eventId": {"commitNum": commit_num, "opNum": op_num},
                    "data": copy.deepcopy(op["data"]),
                    "op": op["op"],
                }
                if op_num == len(ops):
                    record["isLastOp"] = True
                self._keys.append((commit_num, op_num))
                self._records.append(orjson.dumps(record))
                self._commit_ms.append(timestamp)
            return commit_num

    def trim_before(self, commit_num: int) -> None:
        """Drop every commit older than `commit_num`, as the retention window does."""
        with self._lock:
            cut = bisect_left(self._keys, (commit_num, 0))
            if cut:
                self._trimmed_through = self._keys[cut - 1]
                del self._keys[:cut], self._records[:cut], self._commit_ms[:cut]

    def last_event_id(self) -> tuple[int, int] | None:
        """(commitNum, opNum) of the newest operation ever appended (trimmed or not); None if none was."""
        with self._lock:
            return self._keys[-1] if self._keys else self._trimmed_through

    def read(self, iterator_type: str, commit_num: int | None, op_num: int, limit: int) -> bytes:
        """The JSON body of a GetPropertygraphStream answer; `StandError` as Neptune would answer."""
        with self._lock:
            if iterator_type == "LATEST":
                start = len(self._keys) - 1
            elif iterator_type == "TRIM_HORIZON":
                start = 0
            else:
                if commit_num is None:
                    raise StandError(400, "InvalidParameterException", f"commitNum is required for {iterator_type}")
                position = (commit_num, op_num)
                at = iterator_type == "AT_SEQUENCE_NUMBER"
                start = (bisect_left if at else bisect_right)(self._keys, position)
                trimmed = self._trimmed_through
                if trimmed is not None and (trimmed >= position if at else trimmed > position):
                    oldest = self._keys[0] if self._keys else None
                    raise StandError(
                        400,
                        "ExpiredStreamException",
                        f"Requested startEventId {_event_id_text(position)} is expired and no longer "
                        f"available. Oldest valid eventId is {_event_id_text(oldest)}",
                    )
            if not 0 <= start < len(self._keys):
                last = self._keys[-1] if self._keys else self._trimmed_through
                raise StandError(
                    404,
                    "StreamRecordsNotFoundException",
                    "Requested startEventId is from the future. Last valid eventId is " + _event_id_text(last),
                )
            end = min(start + limit, len(self._keys))
            last_commit, last_op = self._keys[end - 1]
            header = orjson.dumps(
                {
                    "lastEventId": {"commitNum": last_commit, "opNum": last_op},
                    "lastTrxTimestamp": self._commit_ms[end - 1],
                    "format": self.format,
                    "totalRecords": end - start,
                }
            )
            return header[:-1] + b',"records":[' + b",".join(self._records[start:end]) + b"]}"


# ----------------------------------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: its kind, the delay for `slow`, the HTTP status for `server_error`."""

    kind: str
    delay_s: float
    server_status: int


class Faults:
    """Seeded fault injection; every method is thread-safe.

    `configure` sets, per path (`opencypher`, `queries`, `stream`), the probability that a request fails and
    the kinds to draw from; each path draws from its own seeded generator, so a path's sequence of faults does not
    depend on how many requests other paths received in between. `poison` makes every query request whose
    parameters (as JSON) contain a substring fail with BadRequestException. `injected` counts faults by kind
    (`poison` included).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """No faults, no poison, counters at zero."""
        with self._lock:
            self._rules: dict[str, tuple[float, tuple[str, ...]]] = {}
            self._poison: list[str] = []
            self._randoms: dict[str, random.Random] = {}  # per path: its draws do not depend on other traffic
            self.injected: Counter[str] = Counter()

    def configure(self, rate: float, kinds: Sequence[str], seed: int = 0, paths: Sequence[str] = QUERY_PATHS) -> None:
        """Fail each request on `paths` with probability `rate`, with a kind drawn from `kinds`."""
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be within [0, 1], not {rate}")
        if not kinds and rate:
            raise ValueError("no fault kinds given")
        for path in paths:
            allowed = STREAM_FAULT_KINDS if path in STREAM_PATHS else FAULT_KINDS
            if path not in (*QUERY_PATHS, *STREAM_PATHS):
                raise ValueError(f"unknown path {path!r}")
            if unknown := set(kinds) - allowed:
                raise ValueError(f"fault kinds {sorted(unknown)} do not apply to {path!r}")
        with self._lock:
            for path in paths:
                self._rules[path] = (rate, tuple(kinds))
                self._randoms[path] = random.Random(f"{seed}/{path}")

    def poison(self, substring: str) -> None:
        """Fail every query request whose parameters JSON contains `substring` (400 BadRequestException)."""
        with self._lock:
            self._poison.append(substring)

    @property
    def poisoning(self) -> bool:
        """Whether any poison is set (lets callers skip building the parameters JSON when none is)."""
        return bool(self._poison)

    def is_poisoned(self, parameters_json: str) -> bool:
        with self._lock:
            poisoned = any(substring in parameters_json for substring in self._poison)
            if poisoned:
                self.injected["poison"] += 1
            return poisoned

    def draw(self, path: str) -> Fault | None:
        """The fault for the next request on `path`, or None for a normal answer."""
        with self._lock:
            rate, kinds = self._rules.get(path, (0.0, ()))
            draw = self._randoms.get(path)
            if not rate or draw is None or draw.random() >= rate:
                return None
            fault = Fault(
                kind=draw.choice(kinds),
                delay_s=draw.uniform(0.3, 1.0),
                server_status=draw.choice((500, 503)),
            )
            self.injected[fault.kind] += 1
            return fault


def _fault_error(fault: Fault, path: str) -> StandError:
    """The error a fault answers with, shaped after what the service behind `path` sends."""
    graph = path == "queries"
    if fault.kind == "concurrent_modification":
        return StandError(
            500,
            "ConcurrentModificationException",
            "Operation failed due to conflicting concurrent operations (please retry)",
        )
    if fault.kind == "throttling":
        return StandError(429 if graph else 500, "ThrottlingException", "Rate exceeded (injected)")
    if fault.kind == "server_error":
        code = "InternalServerException" if graph else "InternalFailureException"
        return StandError(fault.server_status, code, "Internal failure (injected)")
    if fault.kind == "read_only":
        return StandError(
            400, "ReadOnlyViolationException", "The request is rejected: the instance is read-only (injected)"
        )
    if fault.kind == "conflict":
        return StandError(409, "ConflictException", "Conflicting concurrent operation (injected)")
    raise AssertionError(f"fault {fault.kind} has no error answer")


# ----------------------------------------------------------------------------------------------------
# Neptune openCypher -> FalkorDB
# ----------------------------------------------------------------------------------------------------

_IDENT = r"(?:[A-Za-z_][A-Za-z0-9_]*|`[^`]*`)"
_ID_MAP_AHEAD = r"(?=\{[^{}]*`~id`\s*:)"
_NODE_BY_ID = re.compile(rf"(?<![\w`])\(\s*(?:{_IDENT})?(?:\s*:\s*{_IDENT})*\s*{_ID_MAP_AHEAD}")
_SET_ALL = re.compile(rf"\bSET\s+(?P<var>{_IDENT})\s*=\s*(?P<value>[\w.$]+)")
_RELATIONSHIP_BY_ID = re.compile(rf"\[\s*(?:{_IDENT})?\s*:\s*(?P<type>{_IDENT})\s*{_ID_MAP_AHEAD}")
_DECODE_EXPR = "replace(replace({0}, '%60', '`'), '%25', '%')"
_FUNCTION_REWRITES = {
    "labels": f"[__l IN labels({{0}}) WHERE __l <> '{HIDDEN_LABEL}' | {_DECODE_EXPR.format('__l')}]",
    "keys": f"[__k IN keys({{0}}) WHERE __k <> '~id' | {_DECODE_EXPR.format('__k')}]",
    "type": _DECODE_EXPR.format("type({0})"),
    "id": "{0}.`~id`",
}
_FUNCTION_CALL = re.compile(
    rf"(?<![\w`.$])(?P<name>{'|'.join(_FUNCTION_REWRITES)})\s*\(\s*(?P<arg>{_IDENT})\s*\)", re.IGNORECASE
)
_MASK = re.compile(r"\x00(\d+)\x00")


@dataclass(frozen=True, slots=True)
class Translation:
    """A query as FalkorDB runs it.

    `relationship_types`: the types (stored names) it looks relationships up by `~id` with;
    `rewrites`: rewritten expression -> original expression, to give result columns their Neptune names.
    """

    query: str
    relationship_types: frozenset[str]
    rewrites: dict[str, str]

    def column_name(self, falkordb_column: str) -> str:
        """The name Neptune gives the result column FalkorDB calls `falkordb_column`."""
        for rewritten, original in self.rewrites.items():
            falkordb_column = falkordb_column.replace(rewritten, original)
        return decode_falkordb_name(falkordb_column)


def _unquote(identifier: str) -> str:
    return identifier[1:-1] if identifier.startswith("`") else identifier


def _mask_literals(query: str) -> tuple[str, list[str]]:
    """Replace string literals and comments by placeholders; re-quote backticked names for FalkorDB."""
    out: list[str] = []
    masked: list[str] = []
    i, n = 0, len(query)
    while i < n:
        char = query[i]
        if char in "'\"":
            j = i + 1
            while j < n and query[j] != char:
                j += 2 if query[j] == "\\" else 1
            if j >= n:
                raise StandError(400, "MalformedQueryException", "unterminated string literal")
            end = j + 1
        elif query.startswith("//", i):
            end = query.find("\n", i)
            end = n if end < 0 else end
        elif query.startswith("/*", i):
            end = query.find("*/", i + 2)
            if end < 0:
                raise StandError(400, "MalformedQueryException", "unterminated comment")
            end += 2
        elif char == "`":
            name, j = [], i + 1
            while True:
                if j >= n:
                    raise StandError(400, "MalformedQueryException", "unterminated quoted name")
                if query[j] == "`":
                    if query.startswith("``", j):
                        name.append("`")
                        j += 2
                        continue
                    break
                name.append(query[j])
                j += 1
            try:
                out.append("`" + encode_falkordb_name("".join(name)) + "`")
            except InvalidName as exc:
                raise StandError(400, "MalformedQueryException", str(exc)) from exc
            i = j + 1
            continue
        else:
            out.append(char)
            i += 1
            continue
        out.append(f"\x00{len(masked)}\x00")
        masked.append(query[i:end])
        i = end
    return "".join(out), masked


def translate_query(query: str) -> Translation:
    """Rewrite Neptune openCypher into what FalkorDB runs.

    * Backtick-quoted names: openCypher's doubled backticks are undone and the name re-quoted in FalkorDB's
      encoding (`daemon.names.encode_falkordb_name`).
    * A node pattern keyed by `~id` gains the hidden label `HIDDEN_LABEL` (indexed on `~id`).
    * `labels(v)` hides that label, `keys(v)` hides `~id`, and `labels`, `keys` and `type` decode stored
      names; `id(v)` reads the `~id` property, which is what Neptune's `id()` returns. (`properties(v)` still
      shows `~id`.)
    * A relationship pattern with one type keyed by `~id` reports its type, so the stand can index it.
    * `SET x = map` replaces the properties but keeps `~id`, which on Neptune is the element's id, not a
      property (the stand keeps it as a property).
    Text inside string literals and comments is never touched.
    """
    text, masked = _mask_literals(query)
    relationship_types = frozenset(_unquote(match["type"]) for match in _RELATIONSHIP_BY_ID.finditer(text))
    text = _NODE_BY_ID.sub(lambda m: m[0].rstrip() + f":{HIDDEN_LABEL} ", text)
    rewrites: dict[str, str] = {}

    def rewrite_call(match: re.Match[str]) -> str:
        rewritten = _FUNCTION_REWRITES[match["name"].lower()].format(match["arg"])
        rewrites[rewritten] = match[0]
        return rewritten

    text = _FUNCTION_CALL.sub(rewrite_call, text)
    text = _SET_ALL.sub(r"WITH *, \g<var>.`~id` AS __id SET \g<var> = \g<value> SET \g<var>.`~id` = __id", text)
    text = _MASK.sub(lambda m: masked[int(m[1])], text)
    return Translation(text, relationship_types, rewrites)


@functools.lru_cache(maxsize=1024)
def _cached_translation(query: str) -> Translation:
    """`translate_query`, once per distinct query text (a `Translation` is never changed once made)."""
    return translate_query(query)


def encode_parameter_keys(value: Any) -> Any:
    """`value` with every map key, at any depth, in FalkorDB's name encoding."""
    if isinstance(value, dict):
        return {encode_falkordb_name(key): encode_parameter_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [encode_parameter_keys(item) for item in value]
    return value


_COMPILE_ERROR_MARKERS = ("errCtx", "Invalid input", "not defined", "Unknown function", "yntax")


def _query_error(exc: Exception) -> StandError:
    message = str(exc)
    if isinstance(exc, redis.exceptions.ConnectionError):
        return StandError(500, "InternalFailureException", f"graph engine unavailable: {message}")
    if any(marker in message for marker in _COMPILE_ERROR_MARKERS):
        return StandError(400, "MalformedQueryException", message)
    return StandError(400, "BadRequestException", message)


# ----------------------------------------------------------------------------------------------------
# Results, rendered as Neptune renders them
# ----------------------------------------------------------------------------------------------------


def _edge_endpoints(value: Any) -> Iterable[int]:
    if isinstance(value, Edge):
        yield value.src_node
        yield value.dest_node
    elif isinstance(value, GraphPath):
        for edge in value.edges():
            yield from _edge_endpoints(edge)
    elif isinstance(value, list):
        for item in value:
            yield from _edge_endpoints(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _edge_endpoints(item)


def _render_properties(properties: dict[str, Any], vertex_ids: dict[int, Any]) -> dict[str, Any]:
    return {decode_falkordb_name(key): _render(item, vertex_ids) for key, item in properties.items() if key != "~id"}


def _render(value: Any, vertex_ids: dict[int, Any]) -> Any:
    """A FalkorDB result value as Neptune's JSON shows it; `vertex_ids` maps internal ids to `~id`."""
    if isinstance(value, Node):
        return {
            "~id": value.properties.get("~id"),
            "~entityType": "node",
            "~labels": [decode_falkordb_name(label) for label in value.labels or () if label != HIDDEN_LABEL],
            "~properties": _render_properties(value.properties, vertex_ids),
        }
    if isinstance(value, Edge):
        return {
            "~id": value.properties.get("~id"),
            "~entityType": "relationship",
            "~start": vertex_ids.get(value.src_node),
            "~end": vertex_ids.get(value.dest_node),
            "~type": decode_falkordb_name(value.relation),
            "~properties": _render_properties(value.properties, vertex_ids),
        }
    if isinstance(value, GraphPath):
        nodes, edges = value.nodes(), value.edges()
        steps = [node for pair in zip(nodes, edges, strict=False) for node in pair] + nodes[len(edges) :]
        return [_render(step, vertex_ids) for step in steps]
    if isinstance(value, dict):
        return {decode_falkordb_name(key): _render(item, vertex_ids) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, vertex_ids) for item in value]
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value


# ----------------------------------------------------------------------------------------------------
# The stand
# ----------------------------------------------------------------------------------------------------

_SIGV4_PREFIX = "AWS4-HMAC-SHA256 Credential="
# URL path -> the name `stand.requests` and `stand.faults` use for it
_PATH_KEYS = {
    "/propertygraph/stream": STREAM_PATH,
    "/pg/stream": STREAM_PATH,
    "/opencypher": "opencypher",
    "/openCypher": "opencypher",
    "/queries": "queries",
    "/sparql/stream": SPARQL_STREAM_PATH,
    "/sparql": "sparql",
}


def _error_response(error: StandError) -> web.Response:
    request_id = str(uuid.uuid4())
    body = {
        "requestId": request_id,
        "code": error.code,
        "detailedMessage": error.message,
        "message": error.message,
    }
    return web.json_response(body, status=error.status, headers={"x-amzn-RequestId": request_id})


def _int_param(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        message = f"{name} must be an integer, not {raw!r}"
        raise StandError(400, "InvalidParameterException", message) from None


class NeptuneStand:
    """A Neptune DB / Neptune Analytics stand-in on 127.0.0.1, backed by one embedded FalkorDB engine.

    Usage: `with NeptuneStand() as stand: ...` or `stand.start()` / `stand.stop()`. Point botocore clients at
    `stand.url` (any credentials; region e.g. us-east-1).
    """

    def __init__(self, data_dir: Path | None = None, *, graph_name: str = "neptune", port: int | None = None) -> None:
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="neptune-stand-"))
        self.graph_name = graph_name
        self.engine = EmbeddedFalkorDB(self.data_dir / "engine")
        self.stream = StreamLog()
        self.sparql_stream = StreamLog("NQUADS")
        self.rdf_store = pyoxigraph.Store()  # the SPARQL target (in memory)
        self.faults = Faults()
        self.requests: Counter[str] = Counter()
        # Added to every request before it is handled (0: none): a stand-in for the network round trip and a
        # real cluster's per-request work, for benchmarks that compare request patterns (tests/bench/end_to_end).
        self.request_latency_seconds = 0.0
        # Neptune refuses a request body over 150 MB with 400 BadRequestException; tests lower the limit.
        self.max_request_bytes = NEPTUNE_REQUEST_MAX_BYTES
        self.largest_request_bytes: Counter[str] = Counter()  # by path, the largest body received
        self.loader = BulkLoader(self)
        self._requested_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._db: AsyncFalkorDB | None = None
        self._graph: Any = None  # falkordb.asyncio AsyncGraph, set by start()
        self._wire: EngineWire | None = None  # the queries' own path to the engine, set by start()
        self._indexed_types: set[str] = set()
        self._index_lock: asyncio.Lock | None = None

    # ----------------------------------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("stand not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NeptuneStand:
        """Start the engine and the HTTP server (blocks until both answer); returns the stand."""
        if self._thread is not None:
            raise RuntimeError("stand already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="neptune-stand", daemon=True)
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and the engine; remove the data dir if the stand created it. Idempotent."""
        if self._loop is not None and self._thread is not None:
            try:
                self._call(self._stop())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
                self._loop.close()
        self._loop = self._thread = None
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> NeptuneStand:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Delete the target graph and the stream; clear faults, poison and request counters."""
        self._call(self._reset())
        self.stream.clear()
        self.sparql_stream.clear()
        self.rdf_store.clear()
        self.faults.clear()
        self.requests.clear()
        self.largest_request_bytes.clear()
        self.max_request_bytes = NEPTUNE_REQUEST_MAX_BYTES

    def falkordb_graph(self) -> falkordb.Graph:
        """A sync handle on the target graph as FalkorDB stores it (encoded names, hidden label)."""
        return falkordb.FalkorDB(
            host=self.engine.host, port=self.engine.port, password=self.engine.password
        ).select_graph(self.graph_name)

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            raise RuntimeError("stand not started")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _start(self) -> None:
        self._index_lock = asyncio.Lock()
        await self.engine.start()
        self._db = AsyncFalkorDB(host=self.engine.host, port=self.engine.port, password=self.engine.password)
        self._graph = self._db.select_graph(self.graph_name)
        self._wire = EngineWire(self.engine.host, self.engine.port, self.engine.password)
        await self._ensure_vertex_index()
        app = web.Application(middlewares=[self._middleware], client_max_size=NEPTUNE_REQUEST_MAX_BYTES + 1024 * 1024)
        for route, path in _PATH_KEYS.items():
            if path in STREAM_PATHS:
                app.router.add_get(route, self._handle_stream)
            elif path == "sparql":
                app.router.add_post(route, self._handle_sparql)
            elif path == "queries":
                app.router.add_post(route, self._handle_queries)
            else:
                app.router.add_post(route, self._handle_opencypher)
        self.loader.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._requested_port or 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._wire is not None:
            self._wire.close()
            self._wire = None
        if self._db is not None:
            await self._db.aclose()
            self._db = None
        await self.engine.stop()

    async def _reset(self) -> None:
        assert self._db is not None
        with contextlib.suppress(redis.exceptions.ResponseError):  # no graph yet
            await self._graph.delete()
        self._indexed_types.clear()
        await self.loader.clear()
        self._graph = self._db.select_graph(self.graph_name)  # a fresh schema cache: label ids restart
        await self._ensure_vertex_index()

    async def _ensure_vertex_index(self) -> None:
        await self._create_index(f"CREATE INDEX FOR (n:{HIDDEN_LABEL}) ON (n.`~id`)")

    async def _create_index(self, statement: str) -> None:
        try:
            await self._graph.query(statement)
        except redis.exceptions.ResponseError as exc:
            if "already indexed" not in str(exc):
                raise

    # ----------------------------------------------------------------------------------------- HTTP

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = _PATH_KEYS.get(request.path, request.path)
        self.requests[path] += 1
        size = request.content_length or 0
        self.largest_request_bytes[path] = max(self.largest_request_bytes[path], size)
        try:
            if size > self.max_request_bytes:
                raise StandError(
                    400, "BadRequestException", f"HTTP request payload of {size} bytes exceeds {self.max_request_bytes}"
                )
            if not request.headers.get("Authorization", "").startswith(_SIGV4_PREFIX):
                raise StandError(403, "AccessDeniedException", "Missing Authentication Token")
            if self.request_latency_seconds > 0:
                await asyncio.sleep(self.request_latency_seconds)
            return await handler(request)
        except StandError as error:
            return _error_response(error)
        except _DropConnection:
            if request.transport is not None:
                request.transport.abort()
            return web.Response()

    async def _apply_fault(self, path: str) -> Fault | None:
        """Draw a fault for `path`; sleep or raise for it. Returns a `drop_after_commit` for the caller."""
        fault = self.faults.draw(path)
        if fault is None:
            return None
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
            return None
        if fault.kind == "drop_connection":
            raise _DropConnection
        if fault.kind == "drop_after_commit":
            return fault
        raise _fault_error(fault, path)

    async def _handle_stream(self, request: web.Request) -> web.Response:
        query = request.query
        limit = _int_param(query, "limit")
        limit = 10 if limit is None else limit
        if not 1 <= limit <= MAX_STREAM_LIMIT:
            raise StandError(400, "InvalidParameterException", f"limit must be 1..{MAX_STREAM_LIMIT}")
        commit_num = _int_param(query, "commitNum")
        op_num = _int_param(query, "opNum")
        iterator_type = query.get("iteratorType", "AT_SEQUENCE_NUMBER" if commit_num is not None else "TRIM_HORIZON")
        if iterator_type not in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER", "TRIM_HORIZON", "LATEST"):
            raise StandError(400, "InvalidParameterException", f"unknown iteratorType {iterator_type!r}")
        path = _PATH_KEYS[request.path]
        await self._apply_fault(path)
        log = self.sparql_stream if path == SPARQL_STREAM_PATH else self.stream
        body = log.read(iterator_type, commit_num, 1 if op_num is None else op_num, limit)
        headers = {}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def _handle_sparql(self, request: web.Request) -> web.Response:
        """SPARQL 1.1 protocol on `rdf_store`: `update=` runs an update, `query=` answers JSON results."""
        form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
        update, query = form.get("update"), form.get("query")
        if not isinstance(update, str) and not isinstance(query, str):
            raise StandError(400, "MissingParameterException", "a form field update= or query= is required")
        fault = await self._apply_fault("sparql")
        if isinstance(update, str):
            if self.faults.poisoning and self.faults.is_poisoned(update):
                raise StandError(400, "MalformedQueryException", "poisoned update (injected)")
            try:
                await asyncio.to_thread(self.rdf_store.update, update)
            except SyntaxError as exc:
                raise StandError(400, "MalformedQueryException", str(exc)) from None
            if fault is not None:  # drop_after_commit: the update is applied, the answer lost
                raise _DropConnection
            return web.json_response({})
        try:
            # pyoxigraph results are bound to the thread that made them: query and serialise in one thread
            body = await asyncio.to_thread(
                lambda: self.rdf_store.query(query).serialize(format=pyoxigraph.QueryResultsFormat.JSON)
            )
        except SyntaxError as exc:
            raise StandError(400, "MalformedQueryException", str(exc)) from None
        return web.Response(body=body, content_type="application/sparql-results+json")

    async def _handle_opencypher(self, request: web.Request) -> web.Response:
        if request.content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            query, parameters_text = form.get("query"), form.get("parameters")
        else:
            body = await self._json_body(request)
            query, parameters_text = body.get("query"), body.get("parameters")
        if parameters_text is None:
            parameters = {}
        else:
            try:
                parameters = json.loads(str(parameters_text))
            except json.JSONDecodeError as exc:
                raise StandError(400, "InvalidParameterException", f"parameters: {exc}") from None
        return _results_response(await self._run_query("opencypher", query, parameters))

    async def _handle_queries(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if body.get("language") != "OPEN_CYPHER":
            raise StandError(400, "ValidationException", f"unsupported language {body.get('language')!r}")
        return _results_response(await self._run_query("queries", body.get("query"), body.get("parameters") or {}))

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise StandError(400, "BadRequestException", f"request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise StandError(400, "BadRequestException", "request body is not a JSON object")
        return body

    async def _run_query(self, path: str, query: Any, parameters: Any) -> list[dict[str, Any]]:
        if not isinstance(query, str) or not query.strip():
            raise StandError(400, "MissingParameterException", "query is required")
        if not isinstance(parameters, dict):
            raise StandError(400, "InvalidParameterException", "parameters must be a JSON object")
        if self.faults.poisoning and self.faults.is_poisoned(json.dumps(parameters, ensure_ascii=False)):
            raise StandError(400, "BadRequestException", "poisoned parameters (injected)")
        drop_after = await self._apply_fault(path)
        results = await self._execute(query, parameters)
        if drop_after is not None:
            raise _DropConnection
        return results

    async def _execute(self, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        translation = _cached_translation(query)
        try:
            for relationship_type in translation.relationship_types - self._indexed_types:
                await self._index_relationship_type(relationship_type)
            header = cypher_params_header(parameters)
            if header is None:  # names to encode, escapes, ...: falkordb's own way, value by value
                header = self._graph._build_params_header(encode_parameter_keys(parameters))
            assert self._wire is not None
            reply = await self._wire.graph_query(self.graph_name, header + translation.query)
            if len(reply) == 1 and not isinstance(reply[0], redis.exceptions.ResponseError):
                return []  # statistics only: a statement that returns nothing
            result = AsyncQueryResult(self._graph)
            await result.parse(reply)
            columns = [translation.column_name(column[1]) for column in result.header]
            vertex_ids = await self._vertex_ids(set(_edge_endpoints(result.result_set)))
        except (redis.exceptions.RedisError, InvalidName) as exc:
            raise _query_error(exc) from None
        return [
            {column: _render(value, vertex_ids) for column, value in zip(columns, row, strict=True)}
            for row in result.result_set
        ]

    async def _index_relationship_type(self, relationship_type: str) -> None:
        assert self._index_lock is not None
        async with self._index_lock:
            if relationship_type not in self._indexed_types:
                await self._create_index(f"CREATE INDEX FOR ()-[e:`{relationship_type}`]-() ON (e.`~id`)")
                self._indexed_types.add(relationship_type)

    async def _vertex_ids(self, internal_ids: set[int]) -> dict[int, Any]:
        if not internal_ids:
            return {}
        result = await self._graph.query(
            # one NodeByIdSeek per id (`id(n) IN $ids` scans every node: 0.4 s for 3,600 ids among 20,000 nodes)
            "UNWIND $ids AS i MATCH (n) WHERE id(n) = i RETURN id(n), n.`~id`",
            {"ids": sorted(internal_ids)},
        )
        return {internal: vertex_id for internal, vertex_id in result.result_set}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


_NO_RESULTS_TEXT = _dumps({"results": []})


def _results_response(results: list[dict[str, Any]]) -> web.Response:
    if not results:
        return web.json_response(text=_NO_RESULTS_TEXT)
    return web.json_response({"results": results}, dumps=_dumps)
