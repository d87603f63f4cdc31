"""The test stand's Neptune bulk loader: `POST /loader`, `GET /loader`, `GET` and `DELETE /loader/{loadId}`.

Wire shapes follow botocore's `neptunedata` model (`StartLoaderJob`, `ListLoaderJobs`, `GetLoaderJobStatus`,
`CancelLoaderJob`) and the Neptune loader documentation:

* `POST /loader` takes `source` (`s3://bucket/prefix`: every object under the prefix is a *feed*), `format`
  (`opencypher`, or `nquads`: RDF, loaded into the stand's pyoxigraph store `stand.rdf_store`), `iamRoleArn`
  (an IAM role ARN), `region`, `mode` (`NEW` | `RESUME` | `AUTO`), `failOnError`, `parallelism`,
  `queueRequest`, `dependencies`, `userProvidedEdgeIds` (openCypher); answers
  `{"status": "200 OK", "payload": {"loadId": ...}}`. A source with no objects, or a bucket that does not
  exist, is refused at once (400 `BadRequestException`, as Neptune does); a second job while one is queued or
  running needs `queueRequest`.
* Jobs run one at a time in submission order. A job waits for its `dependencies`; if one did not complete it
  ends `LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED`. Statuses: `LOAD_NOT_STARTED`, `LOAD_IN_QUEUE`,
  `LOAD_IN_PROGRESS`, then `LOAD_COMPLETED`, `LOAD_FAILED`, `LOAD_DATA_DEADLOCK`,
  `LOAD_CANCELLED_BY_USER`, `LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED`.
* Each feed is read from S3 (moto; `s3_endpoint`), gunzipped when it is gzip, parsed with the stand's own
  openCypher CSV reader (`tests.stand.opencypher_csv`) and loaded into the stand's FalkorDB with the stand's
  conventions (hidden vertex label, `~id`, encoded names): nodes are MERGEd by id (labels and properties added),
  relationships MERGEd by type and id between existing nodes. Bad records become error lines
  (`PARSING_ERROR`, `DATATYPE_MISMATCH`, `FROM_OR_TO_VERTEX_ARE_MISSING`); with `failOnError` the first
  failed feed stops the job (`LOAD_FAILED`); feeds loaded before it stay loaded, as with Neptune. An N-Quads
  feed is parsed by pyoxigraph and added to `stand.rdf_store` as it is (a line without a graph into the default
  graph, as the stand's `INSERT DATA` writes it); a syntax error is a `PARSING_ERROR` line.
* `mode=RESUME` (and `AUTO` after an earlier job of the same source) skips the feeds an earlier job of the
  same source loaded.
* `GET /loader/{id}?details=true&errors=true&page=1&errorsPerPage=10` answers the documented payload:
  `feedCount`, `overallStatus`, `failedFeeds`, `errors` (`startIndex`, `endIndex`, `loadId`, `errorLogs` of
  `errorCode`, `errorMessage`, `fileName`, `recordNum`).

Switches for tests: `fail_file(substring, status=..., code=..., message=..., times=...)` makes feeds whose key
contains `substring` fail (`LOAD_FAILED` with an error line, `LOAD_DATA_DEADLOCK` to roll the job back,
`LOAD_S3_READ_ERROR`, `LOAD_S3_ACCESS_DENIED_ERROR`); `times` limits how often.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions
import pyoxigraph
import redis.exceptions
from aiohttp import web

from daemon.names import encode_falkordb_name
from tests.stand.opencypher_csv import NODE_FILE, CsvFormatError, ParsedFile, parse_opencypher_csv

if TYPE_CHECKING:
    from tests.stand.neptune_endpoint import NeptuneStand

IN_PROGRESS = ("LOAD_NOT_STARTED", "LOAD_IN_QUEUE", "LOAD_IN_PROGRESS")
FAILED_FEED_STATUSES = ("LOAD_FAILED", "LOAD_DATA_DEADLOCK", "LOAD_S3_READ_ERROR", "LOAD_S3_ACCESS_DENIED_ERROR")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/\S+")
BATCH = 5000


def _error(status: int, code: str, message: str) -> Exception:
    from tests.stand.neptune_endpoint import StandError

    return StandError(status, code, message)


@dataclass
class FileFault:
    substring: str
    status: str
    code: str
    message: str
    times: int | None


@dataclass
class Feed:
    uri: str
    key: str
    status: str = "LOAD_NOT_STARTED"
    records: int = 0
    duplicates: int = 0
    parsing_errors: int = 0
    datatype_errors: int = 0
    insert_errors: int = 0
    seconds: float = 0.0

    def describe(self, start_time: int, run: int) -> dict[str, Any]:
        return {
            "fullUri": self.uri,
            "runNumber": run,
            "retryNumber": 0,
            "status": self.status,
            "totalTimeSpent": int(self.seconds),
            "startTime": start_time,
            "totalRecords": self.records,
            "totalDuplicates": self.duplicates,
            "parsingErrors": self.parsing_errors,
            "datatypeMismatchErrors": self.datatype_errors,
            "insertErrors": self.insert_errors,
        }


@dataclass
class Job:
    load_id: str
    source: str
    bucket: str
    prefix: str
    params: dict[str, Any]
    dependencies: list[str]
    fail_on_error: bool
    mode: str
    format: str  # opencypher | nquads
    run: int = 1
    status: str = "LOAD_NOT_STARTED"
    feeds: list[Feed] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    start_time: int = field(default_factory=lambda: int(time.time()))
    started: float = 0.0
    finished: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def overall(self) -> dict[str, Any]:
        spent = (self.finished or time.monotonic()) - self.started if self.started else 0.0
        return {
            "fullUri": self.source,
            "runNumber": self.run,
            "retryNumber": 0,
            "status": self.status,
            "totalTimeSpent": int(spent),
            "startTime": self.start_time,
            "totalRecords": sum(f.records for f in self.feeds),
            "totalDuplicates": sum(f.duplicates for f in self.feeds),
            "parsingErrors": sum(f.parsing_errors for f in self.feeds),
            "datatypeMismatchErrors": sum(f.datatype_errors for f in self.feeds),
            "insertErrors": sum(f.insert_errors for f in self.feeds),
        }


def _bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).upper() == "TRUE"


class BulkLoader:
    """One stand's loader; its handlers run on the stand's event loop."""

    def __init__(self, stand: NeptuneStand) -> None:
        self.stand = stand
        self.s3_endpoint: str | None = None
        self.jobs: dict[str, Job] = {}
        self._faults: list[FileFault] = []
        self._faults_lock = threading.Lock()
        self._loaded_feeds: dict[str, set[str]] = {}  # source -> feed URIs an earlier job loaded
        self._run_lock: asyncio.Lock | None = None
        self.requests: Counter[str] = Counter()
        self._s3: Any = None
        self._s3_for: str | None = None

    # ------------------------------------------------------------------------------------- switches

    def fail_file(
        self,
        substring: str,
        *,
        status: str = "LOAD_FAILED",
        code: str = "PARSING_ERROR",
        message: str = "Could not parse the record (injected by the test stand)",
        times: int | None = None,
    ) -> None:
        """Fail every feed whose S3 key contains `substring` (at most `times` times)."""
        if status not in FAILED_FEED_STATUSES:
            raise ValueError(f"status must be one of {FAILED_FEED_STATUSES}")
        with self._faults_lock:
            self._faults.append(FileFault(substring, status, code, message, times))

    def _fault_for(self, key: str) -> FileFault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.substring in key and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    async def clear(self) -> None:
        """Forget jobs, switches and loaded feeds (called by `NeptuneStand.reset`)."""
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
        self.jobs.clear()
        self._loaded_feeds.clear()
        self.requests.clear()
        with self._faults_lock:
            self._faults.clear()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/loader", self.handle_start)
        app.router.add_get("/loader", self.handle_list)
        app.router.add_get("/loader/{load_id}", self.handle_status)
        app.router.add_delete("/loader/{load_id}", self.handle_cancel)

    # ----------------------------------------------------------------------------------------- HTTP

    async def handle_start(self, request: web.Request) -> web.Response:
        self.requests["start"] += 1
        try:
            body = await request.json()
        except ValueError:
            raise _error(400, "BadRequestException", "request body is not JSON") from None
        if not isinstance(body, dict):
            raise _error(400, "BadRequestException", "request body is not a JSON object")
        source = body.get("source")
        file_format = body.get("format")
        if file_format not in ("opencypher", "nquads"):
            raise _error(
                400, "BadRequestException", f"the stand loads formats opencypher and nquads, not {file_format!r}"
            )
        if not isinstance(source, str) or not (match := re.fullmatch(r"s3://([^/]+)/?(.*)", source)):
            raise _error(400, "InvalidParameterException", f"source must be s3://bucket/prefix, not {source!r}")
        role = body.get("iamRoleArn")
        if not isinstance(role, str) or not _ROLE_ARN.fullmatch(role):
            raise _error(400, "InvalidParameterException", f"iamRoleArn {role!r} is not an IAM role ARN")
        if body.get("parallelism", "HIGH") not in ("LOW", "MEDIUM", "HIGH", "OVERSUBSCRIBE"):
            raise _error(400, "InvalidParameterException", f"unknown parallelism {body.get('parallelism')!r}")
        mode = str(body.get("mode", "AUTO")).upper()
        if mode not in ("NEW", "RESUME", "AUTO"):
            raise _error(400, "InvalidParameterException", f"unknown mode {mode!r}")
        if file_format == "opencypher" and not _bool(body.get("userProvidedEdgeIds"), True):
            raise _error(400, "BadRequestException", "the stand needs userProvidedEdgeIds (relationship :ID columns)")
        dependencies = list(body.get("dependencies") or [])
        for dep in dependencies:
            if dep not in self.jobs:
                raise _error(400, "BadRequestException", f"dependency {dep!r} is not a known load id")
        busy = any(job.status in IN_PROGRESS for job in self.jobs.values())
        if busy and not _bool(body.get("queueRequest"), False):
            raise _error(
                400,
                "BadRequestException",
                f'Failed to start new load for the source "{source}". Max concurrent load limit breached. Limit is 1',
            )
        bucket, prefix = match[1], match[2]
        keys = await asyncio.to_thread(self._list, bucket, prefix)
        if not keys:
            raise _error(
                400,
                "BadRequestException",
                f"Failed to start new load from the source {source}. Couldn't find the s3 file/folder or the user "
                "does not have permission",
            )
        load_id = str(uuid.uuid4())
        job = Job(
            load_id,
            source,
            bucket,
            prefix,
            body,
            dependencies,
            _bool(body.get("failOnError"), True),
            mode,
            file_format,
            feeds=[Feed(f"s3://{bucket}/{key}", key) for key in keys],
        )
        if busy:
            job.status = "LOAD_IN_QUEUE"
        self.jobs[load_id] = job
        if self._run_lock is None:
            self._run_lock = asyncio.Lock()
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        return web.json_response({"status": "200 OK", "payload": {"loadId": load_id}})

    async def handle_list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "50"))
        queued = request.query.get("includeQueuedLoads", "true").lower() == "true"
        ids = [i for i, job in reversed(self.jobs.items()) if queued or job.status != "LOAD_IN_QUEUE"][:limit]
        return web.json_response({"status": "200 OK", "payload": {"loadIds": ids}})

    async def handle_status(self, request: web.Request) -> web.Response:
        self.requests["status"] += 1
        job = self.jobs.get(request.match_info["load_id"])
        if job is None:
            raise _error(404, "BulkLoadIdNotFoundException", f"load id {request.match_info['load_id']} not found")
        query = request.query
        payload: dict[str, Any] = {"overallStatus": job.overall()}
        if query.get("details", "false").lower() == "true":
            counts = Counter(feed.status for feed in job.feeds)
            payload["feedCount"] = [{status: n} for status, n in counts.items()]
            payload["failedFeeds"] = [
                feed.describe(job.start_time, job.run) for feed in job.feeds if feed.status in FAILED_FEED_STATUSES
            ]
        if query.get("errors", "false").lower() == "true":
            page = max(1, int(query.get("page", "1")))
            per_page = max(1, min(int(query.get("errorsPerPage", "10")), 100))
            start = (page - 1) * per_page
            logs = job.errors[start : start + per_page]
            payload["errors"] = {
                "startIndex": start + 1 if logs else 0,
                "endIndex": start + len(logs),
                "loadId": job.load_id,
                "errorLogs": logs,
            }
        return web.json_response({"status": "200 OK", "payload": payload})

    async def handle_cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["load_id"])
        if job is None:
            raise _error(404, "BulkLoadIdNotFoundException", f"load id {request.match_info['load_id']} not found")
        if job.status in IN_PROGRESS:
            if job.task is not None:
                job.task.cancel()
            self._finish(job, "LOAD_CANCELLED_BY_USER")
        return web.json_response({"status": "200 OK"})

    # ----------------------------------------------------------------------------------------- jobs

    def _finish(self, job: Job, status: str) -> None:
        if job.done.is_set():
            return
        job.status = status
        job.finished = time.monotonic()
        job.done.set()

    async def _run(self, job: Job) -> None:
        try:
            for dep in job.dependencies:
                await self.jobs[dep].done.wait()
            if any(self.jobs[dep].status != "LOAD_COMPLETED" for dep in job.dependencies):
                self._finish(job, "LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED")
                return
            assert self._run_lock is not None
            async with self._run_lock:
                if job.done.is_set():
                    return
                job.status = "LOAD_IN_PROGRESS"
                job.started = time.monotonic()
                skip = self._loaded_feeds.get(job.source, set()) if job.mode in ("RESUME", "AUTO") else set()
                if job.mode == "RESUME" and job.source in self._loaded_feeds:
                    job.run = 2
                final = "LOAD_COMPLETED"
                for feed in job.feeds:
                    if feed.uri in skip:
                        feed.status = "LOAD_COMPLETED"
                        continue
                    await self._load_feed(job, feed)
                    if feed.status == "LOAD_COMPLETED":
                        self._loaded_feeds.setdefault(job.source, set()).add(feed.uri)
                        continue
                    final = "LOAD_DATA_DEADLOCK" if feed.status == "LOAD_DATA_DEADLOCK" else "LOAD_FAILED"
                    if job.fail_on_error or final == "LOAD_DATA_DEADLOCK":
                        break
                self._finish(job, final)
        except asyncio.CancelledError:
            self._finish(job, "LOAD_CANCELLED_BY_USER")
        except Exception as exc:  # a stand bug: say so in the job rather than hang the client
            job.errors.append(
                {"errorCode": "UNKNOWN_ERROR", "errorMessage": repr(exc), "fileName": job.source, "recordNum": 0}
            )
            self._finish(job, "LOAD_UNEXPECTED_ERROR")

    def _error_line(self, job: Job, feed: Feed, code: str, message: str, record: int) -> None:
        job.errors.append({"errorCode": code, "errorMessage": message, "fileName": feed.uri, "recordNum": record})

    async def _load_feed(self, job: Job, feed: Feed) -> None:
        started = time.monotonic()
        feed.status = "LOAD_IN_PROGRESS"
        try:
            fault = self._fault_for(feed.key)
            if fault is not None:
                feed.parsing_errors += fault.status == "LOAD_FAILED"
                self._error_line(job, feed, fault.code, fault.message, 1 if fault.status == "LOAD_FAILED" else 0)
                feed.status = fault.status
                return
            try:
                data = await asyncio.to_thread(self._get, job.bucket, feed.key)
            except botocore.exceptions.ClientError as exc:
                self._error_line(job, feed, "S3_ACCESS_DENIED", str(exc), 0)
                feed.status = "LOAD_S3_ACCESS_DENIED_ERROR"
                return
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            if job.format == "nquads":
                await self._load_nquads(job, feed, data)
                return
            try:
                parsed = await asyncio.to_thread(parse_opencypher_csv, data)
            except CsvFormatError as exc:
                feed.parsing_errors += 1
                self._error_line(job, feed, "PARSING_ERROR", str(exc), 0)
                feed.status = "LOAD_FAILED"
                return
            for error in parsed.errors:
                if error.code == "DATATYPE_MISMATCH":
                    feed.datatype_errors += 1
                else:
                    feed.parsing_errors += 1
                self._error_line(job, feed, error.code, error.message, error.record)
            if parsed.errors and job.fail_on_error:
                feed.status = "LOAD_FAILED"
                return
            if parsed.kind == NODE_FILE:
                await self._load_nodes(job, feed, parsed)
            else:
                await self._load_relationships(job, feed, parsed)
            feed.status = "LOAD_FAILED" if parsed.errors or feed.insert_errors else "LOAD_COMPLETED"
        finally:
            feed.seconds = time.monotonic() - started

    async def _load_nquads(self, job: Job, feed: Feed, data: bytes) -> None:
        """A feed of N-Quads into the stand's RDF store (`stand.rdf_store`, what its /sparql endpoint serves):
        parsed whole by pyoxigraph, then added in one call; a syntax error fails the feed with its line."""

        def parse() -> list[pyoxigraph.Quad]:
            return list(pyoxigraph.parse(data, format=pyoxigraph.RdfFormat.N_QUADS))

        try:
            quads = await asyncio.to_thread(parse)
        except SyntaxError as exc:
            feed.parsing_errors += 1
            line = re.search(r"line (\d+)", str(exc))
            self._error_line(job, feed, "PARSING_ERROR", str(exc), int(line[1]) if line else 0)
            feed.status = "LOAD_FAILED"
            return
        await asyncio.to_thread(self.stand.rdf_store.extend, quads)
        feed.records = len(quads)
        feed.status = "LOAD_COMPLETED"

    # ------------------------------------------------------------------------------------------- S3

    def _client(self) -> Any:
        if self._s3 is None or self._s3_for != self.s3_endpoint:
            self._s3, self._s3_for = self._new_client(), self.s3_endpoint
        return self._s3

    def _new_client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 2}),
        )

    def _list(self, bucket: str, prefix: str) -> list[str]:
        client = self._client()
        keys: list[str] = []
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys += [obj["Key"] for obj in page.get("Contents", [])]
        except botocore.exceptions.ClientError:
            return []
        return sorted(keys)

    def _get(self, bucket: str, key: str) -> bytes:
        return bytes(self._client().get_object(Bucket=bucket, Key=key)["Body"].read())

    # ------------------------------------------------------------------------------------- FalkorDB

    async def _query(self, statement: str, params: dict[str, Any]) -> list[list[Any]]:
        return list((await self.stand._graph.query(statement, params)).result_set)

    async def _load_nodes(self, job: Job, feed: Feed, parsed: ParsedFile) -> None:
        """New ids are CREATEd with their labels inline, one statement per label set (`SET n:L` on an existing
        node costs about 1 ms a node in FalkorDB); ids that exist already get MERGE and `SET n:L`."""
        from tests.stand.neptune_endpoint import HIDDEN_LABEL

        node = f"(n:{HIDDEN_LABEL} {{`~id`: r.id}})"
        seen: set[str] = set()
        for start in range(0, len(parsed.rows), BATCH):
            rows = []
            for row in parsed.rows[start : start + BATCH]:
                props, problem = _props(row.props)
                if problem:
                    feed.insert_errors += 1
                    self._error_line(job, feed, "INSERT_ERROR", problem, row.record)
                else:
                    rows.append((row, {"id": row.id, "props": props}))
            found = await self._query(
                f"UNWIND $rows AS r MATCH {node} RETURN r.id", {"rows": [{"id": p["id"]} for _, p in rows]}
            )
            existing = {r[0] for r in found}
            fresh: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            again: list[tuple[Any, dict[str, Any]]] = []
            for row, params in rows:
                if row.id in existing or row.id in seen:
                    feed.duplicates += 1
                    again.append((row, params))
                else:
                    seen.add(row.id)
                    fresh.setdefault(tuple(sorted(set(row.labels))), []).append(params)
            for labels, params in fresh.items():
                names = "".join(":`" + encode_falkordb_name(label) + "`" for label in labels)
                created = f"(n:{HIDDEN_LABEL}{names} {{`~id`: r.id}})"
                await self._query(f"UNWIND $rows AS r CREATE {created} SET n += r.props", {"rows": params})
            if again:
                await self._query(f"UNWIND $rows AS r MERGE {node} SET n += r.props", {"rows": [p for _, p in again]})
                for row, _ in again:
                    for label in row.labels:
                        quoted = "`" + encode_falkordb_name(label) + "`"
                        await self._query(f"UNWIND $rows AS r MATCH {node} SET n:{quoted}", {"rows": [{"id": row.id}]})
            feed.records += len(rows)

    async def _load_relationships(self, job: Job, feed: Feed, parsed: ParsedFile) -> None:
        from tests.stand.neptune_endpoint import HIDDEN_LABEL

        rows = parsed.rows
        endpoints = sorted({row.start for row in rows} | {row.end for row in rows})
        known: set[str] = set()
        for start in range(0, len(endpoints), BATCH):
            chunk = [{"id": i} for i in endpoints[start : start + BATCH]]
            found = await self._query(
                f"UNWIND $rows AS r MATCH (n:{HIDDEN_LABEL} {{`~id`: r.id}}) RETURN r.id", {"rows": chunk}
            )
            known.update(row[0] for row in found)
        by_type: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if row.start not in known or row.end not in known:
                feed.insert_errors += 1
                missing = [i for i in (row.start, row.end) if i not in known]
                self._error_line(
                    job, feed, "FROM_OR_TO_VERTEX_ARE_MISSING", f"relationship {row.id}: no node {missing}", row.record
                )
                continue
            props, problem = _props(row.props)
            if problem:
                feed.insert_errors += 1
                self._error_line(job, feed, "INSERT_ERROR", problem, row.record)
                continue
            assert row.type is not None
            by_type.setdefault(row.type, []).append({"id": row.id, "from": row.start, "to": row.end, "props": props})
        for edge_type, typed in by_type.items():
            stored = encode_falkordb_name(edge_type)
            await self.stand._index_relationship_type(stored)
            statement = (
                f"UNWIND $rows AS r MATCH (a:{HIDDEN_LABEL} {{`~id`: r.from}}), (b:{HIDDEN_LABEL} {{`~id`: r.to}}) "
                f"MERGE (a)-[e:`{stored}` {{`~id`: r.id}}]->(b) SET e += r.props"
            )
            for start in range(0, len(typed), BATCH):
                try:
                    await self._query(statement, {"rows": typed[start : start + BATCH]})
                except redis.exceptions.ResponseError as exc:
                    feed.insert_errors += 1
                    self._error_line(job, feed, "INSERT_ERROR", str(exc), 0)
                    return
            feed.records += len(typed)


def _props(props: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Properties with names encoded for FalkorDB; a reason when the stand cannot store a value."""
    out = {}
    for key, value in props.items():
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            return {}, f"property {key}: the stand's FalkorDB cannot store {value!r}"
        out[encode_falkordb_name(key)] = value
    return out, None
