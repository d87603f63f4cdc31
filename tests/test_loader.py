"""The bulk loader client against the stand's loader (files in moto's S3), and the mapping of every status."""

from __future__ import annotations

import gzip
from contextlib import AsyncExitStack
from typing import Any

import boto3
import botocore.config
import pytest

from daemon.aws import open_client
from daemon.bootstrap.loader import (
    COMPLETED,
    FAILED,
    RESUME,
    STATUSES,
    LoaderClient,
    LoaderFailed,
    LoaderSettings,
    _result,
)
from daemon.bootstrap.s3 import S3Writer, open_s3_client
from tests.stand.comparator import read_falkordb_graph
from tests.stand.neptune_endpoint import HIDDEN_LABEL, NeptuneStand

ROLE = "arn:aws:iam::123456789012:role/NeptuneLoadFromS3"
BUCKET = "loader-tests"

NODES = (
    ':ID,:LABEL,name:String,age:Long\r\nv1,Person,"Ann, A.",30\r\nv2,Person;Admin,"Bob ""B""",41\r\nv3,City,Oslo,\r\n'
)
RELATIONSHIPS = ":ID,:START_ID,:END_ID,:TYPE,since:Long\r\ne1,v1,v2,KNOWS,2001\r\ne2,v2,v3,LIVES_IN,\r\n"


def _s3(moto_server: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def bucket(moto_server: str, stand: NeptuneStand) -> str:
    s3 = _s3(moto_server)
    existing = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    if BUCKET not in existing:
        s3.create_bucket(Bucket=BUCKET)
    for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    stand.loader.s3_endpoint = moto_server
    return BUCKET


def _put(moto_server: str, key: str, text: str) -> None:
    _s3(moto_server).put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(text.encode()))


async def _loader(stack: AsyncExitStack, stand: NeptuneStand, **settings: Any) -> LoaderClient:
    client = await open_client(stack, "neptunedata", endpoint=stand.url, region="us-east-1")
    options: dict[str, Any] = {"iam_role_arn": ROLE, "region": "us-east-1", "poll_seconds": 0.02, **settings}
    return LoaderClient(client, LoaderSettings(**options))


async def test_nodes_then_relationships_load_into_the_stand(stand: NeptuneStand, bucket: str, moto_server: str) -> None:
    _put(moto_server, "run/nodes/nodes-00001.csv.gz", NODES)
    _put(moto_server, "run/relationships/relationships-00001.csv.gz", RELATIONSHIPS)
    seen: list[tuple[str, int]] = []
    async with AsyncExitStack() as stack:
        loader = await _loader(stack, stand)
        loader._on_progress = lambda job, n: seen.append((job, n))
        results = await loader.load_all(
            [("nodes", f"s3://{bucket}/run/nodes/"), ("relationships", f"s3://{bucket}/run/relationships/")]
        )
    assert [(r.name, r.status, r.records) for r in results] == [
        ("nodes", "LOAD_COMPLETED", 3),
        ("relationships", "LOAD_COMPLETED", 2),
    ]
    graph = read_falkordb_graph(
        stand.falkordb_graph(), hidden_labels=frozenset({HIDDEN_LABEL}), base_label=HIDDEN_LABEL
    )
    assert graph.vertices["v1"].props == {"name": "Ann, A.", "age": 30}
    assert graph.vertices["v2"].labels == {"Person", "Admin"} and graph.vertices["v2"].props["name"] == 'Bob "B"'
    assert graph.vertices["v3"].props == {"name": "Oslo"}
    assert (graph.edges["e1"].type, graph.edges["e1"].props) == ("KNOWS", {"since": 2001})
    assert (graph.edges["e2"].from_id, graph.edges["e2"].to_id, graph.edges["e2"].props) == ("v2", "v3", {})
    assert ("relationships", 2) in seen


async def test_a_failed_file_is_reported_with_the_loader_error_lines(
    stand: NeptuneStand, bucket: str, moto_server: str
) -> None:
    _put(moto_server, "run/nodes/nodes-00001.csv.gz", NODES)
    _put(moto_server, "run/nodes/nodes-00002.csv.gz", ":ID,:LABEL,age:Long\r\nv9,L,old\r\nv10,L,1\r\n")
    _put(moto_server, "run/relationships/relationships-00001.csv.gz", RELATIONSHIPS)
    async with AsyncExitStack() as stack:
        loader = await _loader(stack, stand)
        with pytest.raises(LoaderFailed) as failed:
            await loader.load_all(
                [("nodes", f"s3://{bucket}/run/nodes/"), ("relationships", f"s3://{bucket}/run/relationships/")]
            )
    result = failed.value.result
    text = str(failed.value)
    assert result.status == "LOAD_FAILED" and result.name == "nodes"
    assert f"failed file s3://{bucket}/run/nodes/nodes-00002.csv.gz: LOAD_FAILED" in text
    assert f"s3://{bucket}/run/nodes/nodes-00002.csv.gz record 1: DATATYPE_MISMATCH: column age: 'old'" in text
    # the relationship job queued behind it never ran
    statuses = {job.source: job.status for job in stand.loader.jobs.values()}
    assert statuses[f"s3://{bucket}/run/relationships/"] in (
        "LOAD_CANCELLED_BY_USER",
        "LOAD_FAILED_BECAUSE_DEPENDENCY_NOT_SATISFIED",
    )


async def test_deadlock_is_resumed_with_lower_parallelism(stand: NeptuneStand, bucket: str, moto_server: str) -> None:
    _put(moto_server, "run/nodes/nodes-00001.csv.gz", NODES)
    _put(moto_server, "run/relationships/relationships-00001.csv.gz", RELATIONSHIPS)
    stand.loader.fail_file("relationships-00001", status="LOAD_DATA_DEADLOCK", code="DEADLOCK", times=1)
    async with AsyncExitStack() as stack:
        loader = await _loader(stack, stand, parallelism="OVERSUBSCRIBE")
        results = await loader.load_all(
            [("nodes", f"s3://{bucket}/run/nodes/"), ("relationships", f"s3://{bucket}/run/relationships/")]
        )
    assert [r.status for r in results] == ["LOAD_COMPLETED", "LOAD_COMPLETED"]
    assert loader.parallelism == "HIGH" and loader.resumes == 1
    jobs = list(stand.loader.jobs.values())
    assert [j.params["parallelism"] for j in jobs] == ["OVERSUBSCRIBE", "OVERSUBSCRIBE", "HIGH"]
    assert jobs[-1].params["mode"] == "RESUME" and "dependencies" not in jobs[-1].params
    assert jobs[1].params["dependencies"] == [jobs[0].load_id]
    assert (
        len(
            read_falkordb_graph(
                stand.falkordb_graph(), hidden_labels=frozenset({HIDDEN_LABEL}), base_label=HIDDEN_LABEL
            ).edges
        )
        == 2
    )


async def test_a_deadlock_that_persists_fails_after_the_retries(
    stand: NeptuneStand, bucket: str, moto_server: str
) -> None:
    _put(moto_server, "run/nodes/nodes-00001.csv.gz", NODES)
    stand.loader.fail_file("nodes-00001", status="LOAD_DATA_DEADLOCK", code="DEADLOCK")
    async with AsyncExitStack() as stack:
        loader = await _loader(stack, stand, parallelism="MEDIUM", retries=2)
        with pytest.raises(LoaderFailed) as failed:
            await loader.load_all([("nodes", f"s3://{bucket}/run/nodes/")])
    assert failed.value.result.status == "LOAD_DATA_DEADLOCK" and loader.parallelism == "LOW"
    assert "rolled the load back after a deadlock" in str(failed.value)


async def test_an_s3_read_error_is_resumed(stand: NeptuneStand, bucket: str, moto_server: str) -> None:
    _put(moto_server, "run/nodes/nodes-00001.csv.gz", NODES)
    _put(moto_server, "run/nodes/nodes-00002.csv.gz", ":ID,:LABEL\r\nv4,L\r\n")
    stand.loader.fail_file("nodes-00002", status="LOAD_S3_READ_ERROR", code="S3_READ_ERROR", times=1)
    async with AsyncExitStack() as stack:
        loader = await _loader(stack, stand)
        results = await loader.load_all([("nodes", f"s3://{bucket}/run/nodes/")])
    assert results[0].status == "LOAD_COMPLETED" and loader.resumes == 1 and loader.parallelism == "HIGH"


async def test_access_denied_explains_the_role(stand: NeptuneStand, bucket: str, moto_server: str) -> None:
    _put(moto_server, "run/nodes/nodes-00001.csv.gz", NODES)
    stand.loader.fail_file("nodes", status="LOAD_S3_ACCESS_DENIED_ERROR", code="ACCESS_DENIED", message="no access")
    async with AsyncExitStack() as stack:
        loader = await _loader(stack, stand)
        with pytest.raises(LoaderFailed) as failed:
            await loader.load_all([("nodes", f"s3://{bucket}/run/nodes/")])
    assert "bootstrap.iam_role_arn" in str(failed.value) and "ACCESS_DENIED: no access" in str(failed.value)


async def test_start_is_refused_for_an_empty_prefix(stand: NeptuneStand, bucket: str) -> None:
    async with AsyncExitStack() as stack:
        loader = await _loader(stack, stand)
        with pytest.raises(Exception, match="Couldn't find the s3 file/folder"):
            await loader.start(f"s3://{bucket}/nothing-here/")


async def test_multipart_upload_and_single_put(moto_server: str, bucket: str) -> None:
    async with AsyncExitStack() as stack:
        s3 = S3Writer(await open_s3_client(stack, endpoint=moto_server, region="us-east-1"), bucket, part_bytes=1)
        assert s3.part_bytes == 5 * 1024 * 1024
        big = bytes(range(256)) * (45 * 1024)  # 11.25 MiB: three parts
        await s3.put("big.bin", big)
        await s3.put("small.bin", b"x")
        await s3.check_bucket()
        assert s3.multipart_uploads == 1
        assert await s3.delete_prefix("") == 2
    s3_sync = _s3(moto_server)
    assert s3_sync.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


async def test_a_missing_bucket_is_a_config_error(moto_server: str) -> None:
    from daemon.bootstrap.records import BootstrapConfigError

    async with AsyncExitStack() as stack:
        s3 = S3Writer(await open_s3_client(stack, endpoint=moto_server, region="us-east-1"), "no-such-bucket-here")
        with pytest.raises(
            BootstrapConfigError, match=r"bootstrap\.s3_bucket: bucket 'no-such-bucket-here' does not exist"
        ):
            await s3.check_bucket()


def _payload(status: str, feeds: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "overallStatus": {"status": status, "totalRecords": 5, "parsingErrors": 2},
        "failedFeeds": [{"fullUri": f"s3://b/f{i}", "status": s} for i, s in enumerate(feeds)],
        "errors": {
            "errorLogs": [
                {"errorCode": "PARSING_ERROR", "errorMessage": "bad", "fileName": "s3://b/f0", "recordNum": 3}
            ]
        },
    }


@pytest.mark.parametrize("status", sorted(STATUSES))
def test_every_final_status_has_a_clear_outcome(status: str) -> None:
    result = _result("nodes", "id-1", "s3://b/", status, _payload(status), 1.0)
    assert result.outcome in (COMPLETED, RESUME, FAILED)
    assert result.outcome == COMPLETED if status == "LOAD_COMPLETED" else result.outcome != COMPLETED
    text = result.describe()
    assert status in text and result.meaning in text
    if status != "LOAD_COMPLETED":
        assert "s3://b/f0 record 3: PARSING_ERROR: bad" in text and "1 more error line" in text


def test_feed_statuses_inside_load_failed() -> None:
    assert _result("n", "i", "s", "LOAD_FAILED", _payload("LOAD_FAILED", ["LOAD_S3_READ_ERROR"]), 0).outcome == RESUME
    mixed = _result("n", "i", "s", "LOAD_FAILED", _payload("LOAD_FAILED", ["LOAD_S3_READ_ERROR", "LOAD_FAILED"]), 0)
    assert mixed.outcome == FAILED
    denied = _result("n", "i", "s", "LOAD_FAILED", _payload("LOAD_FAILED", ["LOAD_S3_ACCESS_DENIED_ERROR"]), 0)
    assert denied.outcome == FAILED and "iam_role_arn" in denied.meaning
    unknown = _result("n", "i", "s", "LOAD_SOMETHING_NEW", _payload("LOAD_SOMETHING_NEW"), 0)
    assert unknown.outcome == FAILED and "unknown loader status" in unknown.meaning


async def test_start_is_not_sent_twice_after_a_timeout_but_retried_when_throttled() -> None:
    from botocore.exceptions import ClientError, ReadTimeoutError

    class Client:
        def __init__(self, error: Exception) -> None:
            self.error: Exception | None = error
            self.calls = 0

        async def start_loader_job(self, **params: Any) -> dict[str, Any]:
            self.calls += 1
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            return {"status": "200 OK", "payload": {"loadId": "L1"}}

    settings = LoaderSettings(iam_role_arn=ROLE, region="us-east-1")
    timeout = Client(ReadTimeoutError(endpoint_url="http://x"))
    with pytest.raises(ReadTimeoutError):
        await LoaderClient(timeout, settings).start("s3://b/p/")
    assert timeout.calls == 1
    throttled = Client(
        ClientError({"Error": {"Code": "TooManyRequestsException"}, "ResponseMetadata": {"HTTPStatusCode": 429}}, "x")
    )
    assert await LoaderClient(throttled, settings).start("s3://b/p/") == "L1"
    assert throttled.calls == 2
