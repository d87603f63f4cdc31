"""The Neptune sinks' lean batch call (`daemon.aws.SignedCall`) against the full aiobotocore client, side by side
on the Neptune-compatible stand: the same results, the same exception (class, code, status, modeled fields) for
every injected fault and a refused statement, hence the same classification; and a real SigV4 signature."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from daemon.aws import classify_aws_error
from daemon.sinks.analytics import NeptuneAnalyticsSink
from daemon.sinks.aws_base import AwsClientSink
from daemon.sinks.neptune import NeptuneSink
from tests.stand.moto_process import aws_test_environment
from tests.stand.neptune_endpoint import NeptuneStand

STATEMENT = "UNWIND $rows AS row MERGE (n {`~id`: row.id}) SET n.name = row.name RETURN count(n) AS n"
ROWS = [{"id": f"v{i}", "name": f"name {i}"} for i in range(5)]
FAULTS = ("concurrent_modification", "throttling", "server_error", "read_only", "conflict")


@pytest.fixture(autouse=True)
def credentials() -> Iterator[None]:
    with aws_test_environment():
        yield


def _sink(kind: str, stand: NeptuneStand) -> AwsClientSink:
    if kind == "neptune":
        return NeptuneSink("target", endpoint=stand.url, region="us-east-1")
    return NeptuneAnalyticsSink("target", graph_id="g-test", endpoint=stand.url, region="us-east-1")


async def _both(
    sink: AwsClientSink, statement: str, rows: list[dict[str, Any]], before: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """What `execute` returns or raises on the lean path and through the client (`before` runs before each: a
    fault configured there makes both calls draw the same fault)."""
    lean, outcomes = sink._call, {}
    assert lean is not None, "the sink did not set up its lean batch call"
    for path in ("lean", "client"):
        before()
        sink._call = lean if path == "lean" else None
        try:
            outcomes[path] = await sink.execute(statement, rows)
        except Exception as exc:
            outcomes[path] = exc
    sink._call = lean
    return outcomes


def _same_error(lean: Any, client: Any) -> None:
    assert isinstance(lean, Exception) and isinstance(client, Exception), (lean, client)
    assert type(lean) is type(client)
    assert str(lean) == str(client)
    ours, theirs = dict(lean.response), dict(client.response)  # type: ignore[attr-defined]
    meta, their_meta = ours.pop("ResponseMetadata"), theirs.pop("ResponseMetadata")
    assert ours.pop("requestId", None) != theirs.pop("requestId", 0)  # each answer has its own
    assert ours == theirs  # Error, and the error shape's other modeled fields
    assert meta.keys() == their_meta.keys()
    for key in meta.keys() - {"HTTPHeaders", "RequestId"}:  # headers carry the answer's date
        assert meta[key] == their_meta[key], key
    assert classify_aws_error(lean) == classify_aws_error(client)


@pytest.mark.parametrize("kind", ["neptune", "neptune-analytics"])
async def test_lean_call_answers_and_fails_as_the_client_does(kind: str, stand: NeptuneStand) -> None:
    sink = _sink(kind, stand)
    await sink.start()
    try:
        ok = await _both(sink, STATEMENT, ROWS)
        assert ok["lean"] == ok["client"] == [{"n": 5}]
        for fault in FAULTS:
            failed = await _both(sink, STATEMENT, ROWS, lambda fault=fault: stand.faults.configure(1.0, [fault]))
            _same_error(failed["lean"], failed["client"])
        stand.faults.clear()
        stand.faults.poison("poisoned value")
        refused = await _both(sink, STATEMENT, [{"id": "p", "name": "poisoned value"}])
        _same_error(refused["lean"], refused["client"])
        assert classify_aws_error(refused["lean"]).data_rejected
    finally:
        await sink.close()


async def test_lean_call_is_signed_by_botocore_with_the_client_credentials(stand: NeptuneStand) -> None:
    sink = NeptuneSink("target", endpoint=stand.url, region="us-east-1")
    await sink.start()
    try:
        call = sink._call
        assert call is not None
        assert (call.signing_name, call.region) == ("neptune-db", "us-east-1")
        seen: list[Any] = []
        send = call._http.send

        async def record(prepared: Any) -> Any:
            seen.append(prepared)
            return await send(prepared)

        call._http.send = record  # type: ignore[method-assign]
        await sink.execute(STATEMENT, ROWS)
        (prepared,) = seen
        # botocore's signer over the same request, at the same time stamp, makes the signature that was sent.
        headers = {k: v for k, v in prepared.headers.items() if k.lower() != "authorization"}
        again = AWSRequest(method="POST", url=prepared.url, data=prepared.body, headers=headers)
        again.context["timestamp"] = prepared.headers["X-Amz-Date"]
        signer = SigV4Auth(Credentials("testing", "testing"), "neptune-db", "us-east-1")
        signature = signer.signature(signer.string_to_sign(again, signer.canonical_request(again)), again)
        assert prepared.headers["Authorization"].endswith(f"Signature={signature}")
        assert "Credential=testing/" in prepared.headers["Authorization"]
    finally:
        await sink.close()
