"""The Neptune bulk loader: start load jobs, follow them to a final state, and say clearly what happened.

Room in the design: bootstrap step 4 ("S3 -> bulk loader"). Jobs are started with `StartLoaderJob` through
aiobotocore's `neptunedata` client (`format=opencypher`, or `nquads` for RDF sources; `iamRoleArn`, `region`,
`failOnError`, `parallelism`, `queueRequest`, `userProvidedEdgeIds` with openCypher, `mode`) and polled with
`GetLoaderJobStatus` (`details`, `errors`) until their status is final. The node files and the relationship
files are two jobs, the second queued with `dependencies` on the first, so relationships load only after every
node is in (an RDF source's N-Quads files are one job).

Every final status maps to an outcome (`STATUSES`):

* `LOAD_COMPLETED` - done;
* `LOAD_DATA_DEADLOCK` - the loader rolled the load back after a deadlock: resumed (`mode=RESUME`) with the
  next lower `parallelism`; `LOAD_S3_READ_ERROR` (transient S3 trouble) and
  `LOAD_COMMITTED_W_WRITE_CONFLICTS` are resumed too; at most `retries` resumes in all;
* everything else is a failure whose message carries the loader's error lines (file, record, code, message)
  and the files that failed. A job that depended on a failed one ends `LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_
  SATISFIED` and is reported as such.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.bootstrap.records import BootstrapError
from daemon.bootstrap.retry import with_retries

log = structlog.get_logger("daemon.bootstrap.loader")

PARALLELISM = ("LOW", "MEDIUM", "HIGH", "OVERSUBSCRIBE")
IN_PROGRESS = frozenset({"LOAD_NOT_STARTED", "LOAD_IN_QUEUE", "LOAD_IN_PROGRESS"})
COMPLETED, RESUME, FAILED = "completed", "resume", "failed"

# final status -> (outcome, what it means for the operator)
STATUSES: dict[str, tuple[str, str]] = {
    "LOAD_COMPLETED": (COMPLETED, "every file was loaded"),
    "LOAD_DATA_DEADLOCK": (RESUME, "the loader rolled the load back after a deadlock"),
    "LOAD_S3_READ_ERROR": (RESUME, "the loader could not read a file from S3 (intermittent S3 trouble)"),
    "LOAD_COMMITTED_W_WRITE_CONFLICTS": (RESUME, "data was committed with unresolved write conflicts"),
    "LOAD_FAILED": (FAILED, "the loader refused data; the error lines below say where and why"),
    "LOAD_CANCELLED_BY_USER": (FAILED, "someone cancelled the load job"),
    "LOAD_CANCELLED_DUE_TO_ERRORS": (FAILED, "the loader cancelled the job because of errors"),
    "LOAD_UNEXPECTED_ERROR": (FAILED, "the loader failed with an unexpected error"),
    "LOAD_S3_ACCESS_DENIED_ERROR": (
        FAILED,
        "Neptune was denied access to the S3 files: check bootstrap.iam_role_arn (attached to the cluster, trusted "
        "by rds.amazonaws.com, allowed s3:GetObject and s3:ListBucket) and the cluster's VPC endpoint for S3",
    ),
    "LOAD_DATA_FAILED_DUE_TO_FEED_MODIFIED_OR_DELETED": (FAILED, "a file changed or disappeared during the load"),
    "LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED": (FAILED, "the job it depends on did not complete"),
    "LOAD_FAILED_INVALID_REQUEST": (FAILED, "the loader refused the request"),
}


@dataclass(slots=True)
class LoaderErrorLine:
    code: str
    message: str
    file: str
    record: int | None

    def __str__(self) -> str:
        where = self.file + (f" record {self.record}" if self.record is not None else "")
        return f"{where}: {self.code}: {self.message}"


@dataclass(slots=True)
class LoadResult:
    """One job's final state as the loader reported it."""

    name: str  # "nodes" / "relationships"
    load_id: str
    source: str
    status: str
    outcome: str
    meaning: str
    records: int = 0
    duplicates: int = 0
    parsing_errors: int = 0
    datatype_errors: int = 0
    insert_errors: int = 0
    failed_files: list[tuple[str, str]] = field(default_factory=list)  # (uri, status)
    errors: list[LoaderErrorLine] = field(default_factory=list)
    more_errors: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        lines = [f"loader job {self.load_id} ({self.name}, {self.source}) ended {self.status}: {self.meaning}"]
        counts = (self.parsing_errors, self.datatype_errors, self.insert_errors)
        if any(counts):
            lines.append(
                f"  records loaded {self.records}, parsing errors {counts[0]}, datatype mismatches {counts[1]}, "
                f"insert errors {counts[2]}"
            )
        lines += [f"  failed file {uri}: {status}" for uri, status in self.failed_files]
        lines += [f"  error: {line}" for line in self.errors]
        if self.more_errors:
            lines.append(
                f"  ... {self.more_errors} more error line(s): aws neptunedata get-loader-job-status "
                f"--load-id {self.load_id} --errors --page 2"
            )
        return "\n".join(lines)


class LoaderFailed(BootstrapError):
    def __init__(self, result: LoadResult) -> None:
        super().__init__(result.describe())
        self.result = result


@dataclass(slots=True)
class LoaderSettings:
    iam_role_arn: str
    region: str
    parallelism: str = "HIGH"
    fail_on_error: bool = True
    poll_seconds: float = 5.0
    retries: int = 3
    errors_per_page: int = 10
    format: str = "opencypher"  # or "nquads" (RDF sources)


ProgressHook = Callable[[str, int], None]  # (job name, records loaded so far)


class LoaderClient:
    def __init__(self, client: Any, settings: LoaderSettings, *, on_progress: ProgressHook | None = None) -> None:
        self.client = client
        self.settings = settings
        self._on_progress = on_progress
        self.parallelism = settings.parallelism
        self.resumes = 0

    async def start(self, source: str, *, mode: str = "AUTO", dependencies: list[str] | None = None) -> str:
        s = self.settings
        params: dict[str, Any] = {
            "source": source,
            "format": s.format,
            "iamRoleArn": s.iam_role_arn,
            "s3BucketRegion": s.region,
            "mode": mode,
            "failOnError": s.fail_on_error,
            "parallelism": self.parallelism,
            "queueRequest": True,
        }
        if s.format == "opencypher":
            params["userProvidedEdgeIds"] = True
        if dependencies:
            params["dependencies"] = dependencies
        # Not idempotent: a request that may have reached the loader (timeout, dropped connection) is not sent
        # again, or the files could be loaded twice; only refusals (throttling) are retried.
        response = await with_retries(
            lambda: self.client.start_loader_job(**params), what="StartLoaderJob", only=frozenset({"throttling"})
        )
        load_id = str(response["payload"]["loadId"])
        log.info("loader job started", load_id=load_id, source=source, mode=mode, parallelism=self.parallelism)
        return load_id

    async def status(self, load_id: str) -> dict[str, Any]:
        response = await with_retries(
            lambda: self.client.get_loader_job_status(
                loadId=load_id, details=True, errors=True, page=1, errorsPerPage=self.settings.errors_per_page
            ),
            what="GetLoaderJobStatus",
        )
        return dict(response.get("payload") or {})

    async def wait(self, name: str, load_id: str, source: str) -> LoadResult:
        """Poll until the job's status is final."""
        started = time.monotonic()
        last_status = ""
        while True:
            payload = await self.status(load_id)
            overall = payload.get("overallStatus") or {}
            status = str(overall.get("status", ""))
            if self._on_progress is not None:
                self._on_progress(name, int(overall.get("totalRecords") or 0))
            if status != last_status:
                log.info("loader job status", job=name, load_id=load_id, status=status)
                last_status = status
            if status and status not in IN_PROGRESS:
                return _result(name, load_id, source, status, payload, time.monotonic() - started)
            await asyncio.sleep(self.settings.poll_seconds)

    async def cancel(self, load_id: str) -> None:
        try:
            await self.client.cancel_loader_job(loadId=load_id)
        except Exception as exc:
            log.warning("could not cancel loader job", load_id=load_id, error=str(exc)[:300])

    async def load_all(self, jobs: list[tuple[str, str]]) -> list[LoadResult]:
        """Load `jobs` ((name, s3 prefix) in order), each queued after the one before; resume what can be
        resumed, raise `LoaderFailed` for the first job that fails for good."""
        results: list[LoadResult] = []
        pending = list(jobs)
        mode = "AUTO"
        while pending:
            ids: list[str] = []
            for _, source in pending:
                ids.append(await self.start(source, mode=mode, dependencies=ids[-1:] or None))
                mode = "AUTO"
            for index, ((name, source), load_id) in enumerate(zip(pending, ids, strict=True)):
                result = await self.wait(name, load_id, source)
                if result.outcome == COMPLETED:
                    results.append(result)
                    continue
                if result.outcome == RESUME and self.resumes < self.settings.retries:
                    self.resumes += 1
                    later = ids[index + 1 :]
                    for queued in later:
                        await self.cancel(queued)
                    for queued, (queued_name, queued_source) in zip(later, pending[index + 1 :], strict=True):
                        await self.wait(queued_name, queued, queued_source)  # let it reach its final state
                    if "LOAD_DATA_DEADLOCK" in (result.status, *(status for _, status in result.failed_files)):
                        self.parallelism = PARALLELISM[max(0, PARALLELISM.index(self.parallelism) - 1)]
                    log.warning(
                        "loader job will be resumed",
                        job=name,
                        status=result.status,
                        meaning=result.meaning,
                        parallelism=self.parallelism,
                        resume=self.resumes,
                    )
                    pending = pending[index:]
                    mode = "RESUME"
                    break
                for queued in ids[index + 1 :]:
                    await self.cancel(queued)  # it would only wait for a dependency that never completes
                raise LoaderFailed(result)
            else:
                pending = []
        return results


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _outcome(status: str, feed_statuses: set[str]) -> tuple[str, str]:
    """What a final status means. `LOAD_FAILED` is read through the failed feeds' statuses: a feed's S3 read
    error, deadlock or write conflict makes the whole load LOAD_FAILED, yet resuming is the documented answer."""
    outcome, meaning = STATUSES.get(status, (FAILED, f"unknown loader status {status!r}"))
    feeds = feed_statuses - {"LOAD_FAILED"}
    if status == "LOAD_FAILED" and feeds:
        kinds = [STATUSES.get(f, (FAILED, f"feed status {f}")) for f in sorted(feeds)]
        meaning = "; ".join(m for _, m in kinds)
        if feeds == feed_statuses and all(kind == RESUME for kind, _ in kinds):
            outcome = RESUME
    return outcome, meaning


def _result(name: str, load_id: str, source: str, status: str, payload: dict[str, Any], seconds: float) -> LoadResult:
    failed_feeds = [feed for feed in payload.get("failedFeeds") or [] if isinstance(feed, dict)]
    outcome, meaning = _outcome(status, {str(feed.get("status", "")) for feed in failed_feeds})
    overall = payload.get("overallStatus") or {}
    errors_block = payload.get("errors") or {}
    logs = errors_block.get("errorLogs") or []
    errors = [
        LoaderErrorLine(
            str(entry.get("errorCode", "")),
            str(entry.get("errorMessage", "")),
            str(entry.get("fileName", "")),
            entry.get("recordNum") if isinstance(entry.get("recordNum"), int) else None,
        )
        for entry in logs
        if isinstance(entry, dict)
    ]
    total_errors = _int(overall.get("parsingErrors")) + _int(overall.get("datatypeMismatchErrors"))
    total_errors += _int(overall.get("insertErrors"))
    return LoadResult(
        name=name,
        load_id=load_id,
        source=source,
        status=status,
        outcome=outcome,
        meaning=meaning,
        records=_int(overall.get("totalRecords")),
        duplicates=_int(overall.get("totalDuplicates")),
        parsing_errors=_int(overall.get("parsingErrors")),
        datatype_errors=_int(overall.get("datatypeMismatchErrors")),
        insert_errors=_int(overall.get("insertErrors")),
        failed_files=[(str(feed.get("fullUri", "")), str(feed.get("status", ""))) for feed in failed_feeds],
        errors=errors,
        more_errors=max(0, total_errors - len(errors)),
        seconds=seconds,
    )
