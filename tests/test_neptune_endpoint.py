"""The Neptune stand as real aiobotocore clients see it: stream paging, openCypher, neptune-graph, faults."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, ConnectionClosedError

from tests.stand.neptune_endpoint import HIDDEN_LABEL, NeptuneStand, translate_query

NO_RETRIES = {"total_max_attempts": 1}
FAKE_SIGV4 = "AWS4-HMAC-SHA256 Credential=x/20240101/us-east-1/neptune-db/aws4_request, Signature=0"


@pytest.fixture(scope="module")
def module_stand() -> Iterator[NeptuneStand]:
    with NeptuneStand() as stand:
        yield stand


@pytest.fixture
def stand(module_stand: NeptuneStand) -> NeptuneStand:
    module_stand.reset()
    return module_stand


def _client(stand: NeptuneStand, service: str, **config: Any):
    return get_session().create_client(
        service,
        endpoint_url=stand.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=AioConfig(retries=NO_RETRIES, **config),
    )


@pytest.fixture
async def neptunedata(stand: NeptuneStand) -> AsyncIterator[Any]:
    async with _client(stand, "neptunedata") as client:
        yield client


@pytest.fixture
async def neptune_graph(stand: NeptuneStand) -> AsyncIterator[Any]:
    async with _client(stand, "neptune-graph", inject_host_prefix=False) as client:
        yield client


def _vertex_property(vertex_id: str, key: str, value: Any, data_type: str = "String") -> dict[str, Any]:
    data = {"id": vertex_id, "type": "vp", "key": key, "value": {"value": value, "dataType": data_type}}
    return {"op": "ADD", "data": data}


def _fill_stream(stand: NeptuneStand) -> None:
    """Three commits of 2, 1 and 3 operations."""
    stand.stream.append_commit([_vertex_property("a", "k", 1, "Int"), _vertex_property("a", "j", "x")], 1000)
    stand.stream.append_commit([_vertex_property("b", "k", 2, "Int")], 2000)
    stand.stream.append_commit([_vertex_property("c", f"k{i}", i, "Int") for i in range(3)], 3000)


def _event_ids(page: dict[str, Any]) -> list[tuple[int, int]]:
    return [(r["eventId"]["commitNum"], r["eventId"]["opNum"]) for r in page["records"]]


async def _cypher(client: Any, query: str, **parameters: Any) -> list[dict[str, Any]]:
    answer = await client.execute_open_cypher_query(openCypherQuery=query, parameters=json.dumps(parameters))
    return answer["results"]


# ----------------------------------------------------------------------------------------------------
# Stream source
# ----------------------------------------------------------------------------------------------------


async def test_stream_pages_after_sequence_number(stand: NeptuneStand, neptunedata: Any) -> None:
    _fill_stream(stand)
    assert stand.stream.last_event_id() == (3, 3)
    first = await neptunedata.get_propertygraph_stream(limit=2, iteratorType="TRIM_HORIZON")
    assert _event_ids(first) == [(1, 1), (1, 2)]
    assert first["lastEventId"] == {"commitNum": 1, "opNum": 2}
    assert first["lastTrxTimestampInMillis"] == 1000 and first["totalRecords"] == 2
    assert first["format"] == "PG_JSON"
    record = first["records"][0]
    assert record["commitTimestampInMillis"] == 1000 and record["op"] == "ADD"
    assert record["data"] == {"id": "a", "type": "vp", "key": "k", "value": {"value": 1, "dataType": "Int"}}
    assert "isLastOp" not in record and first["records"][1]["isLastOp"] is True

    pages = []
    position = first["lastEventId"]
    for _ in range(2):
        page = await neptunedata.get_propertygraph_stream(
            limit=2, iteratorType="AFTER_SEQUENCE_NUMBER", commitNum=position["commitNum"],
            opNum=position["opNum"],
        )  # fmt: skip
        pages.append(_event_ids(page))
        position = page["lastEventId"]
    assert pages == [[(2, 1), (3, 1)], [(3, 2), (3, 3)]]

    at = await neptunedata.get_propertygraph_stream(iteratorType="AT_SEQUENCE_NUMBER", commitNum=3, opNum=2)
    assert _event_ids(at) == [(3, 2), (3, 3)]

    with pytest.raises(ClientError) as caught:
        await neptunedata.get_propertygraph_stream(iteratorType="AFTER_SEQUENCE_NUMBER", commitNum=3, opNum=3)
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error["Error"]["Code"] == "StreamRecordsNotFoundException"
    assert error["Error"]["Message"] == (
        "Requested startEventId is from the future. Last valid eventId is [commitNum = 3, opNum = 3]"
    )


async def test_empty_stream_and_latest(stand: NeptuneStand, neptunedata: Any) -> None:
    with pytest.raises(neptunedata.exceptions.StreamRecordsNotFoundException):
        await neptunedata.get_propertygraph_stream(iteratorType="TRIM_HORIZON")
    with pytest.raises(neptunedata.exceptions.StreamRecordsNotFoundException):
        await neptunedata.get_propertygraph_stream(iteratorType="LATEST")
    _fill_stream(stand)
    latest = await neptunedata.get_propertygraph_stream(iteratorType="LATEST", limit=50)
    assert _event_ids(latest) == [(3, 3)] and latest["records"][0]["isLastOp"] is True


async def test_trimmed_position_is_expired(stand: NeptuneStand, neptunedata: Any) -> None:
    _fill_stream(stand)
    stand.stream.trim_before(3)
    for commit_num, op_num in ((1, 2), (2, 0)):
        with pytest.raises(neptunedata.exceptions.ExpiredStreamException) as caught:
            await neptunedata.get_propertygraph_stream(
                iteratorType="AFTER_SEQUENCE_NUMBER", commitNum=commit_num, opNum=op_num
            )
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # Everything after (2, 1) is still there: not expired.
    page = await neptunedata.get_propertygraph_stream(iteratorType="AFTER_SEQUENCE_NUMBER", commitNum=2, opNum=1)
    assert _event_ids(page) == [(3, 1), (3, 2), (3, 3)]
    horizon = await neptunedata.get_propertygraph_stream(iteratorType="TRIM_HORIZON", limit=1)
    assert _event_ids(horizon) == [(3, 1)]
    assert stand.stream.last_event_id() == (3, 3)


async def test_stream_gzip_on_request(stand: NeptuneStand) -> None:
    # aiobotocore always sends `Accept-Encoding: identity`, so this path is only reachable without botocore.
    _fill_stream(stand)
    headers = {"Authorization": FAKE_SIGV4, "Accept-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"{stand.url}/propertygraph/stream", params={"limit": "100"}, headers=headers) as answer,
    ):
        assert answer.status == 200 and answer.headers["Content-Encoding"] == "gzip"
        page = json.loads(gzip.decompress(await answer.read()))
    assert page["totalRecords"] == 6 and page["lastTrxTimestamp"] == 3000


async def test_missing_authorization_is_denied(stand: NeptuneStand) -> None:
    async with aiohttp.ClientSession() as session:
        for method, path in (("GET", "/propertygraph/stream"), ("POST", "/opencypher"), ("POST", "/queries")):
            async with session.request(method, stand.url + path, json={}) as answer:
                assert answer.status == 403
                assert (await answer.json())["code"] == "AccessDeniedException"
    assert stand.requests == {"stream": 1, "opencypher": 1, "queries": 1}


# ----------------------------------------------------------------------------------------------------
# openCypher target
# ----------------------------------------------------------------------------------------------------

ODD_LABEL = "Odd `label` ünï 100%"


async def test_opencypher_merge_with_odd_names(stand: NeptuneStand, neptunedata: Any) -> None:
    label = "`" + ODD_LABEL.replace("`", "``") + "`"
    props = {"plain": 1, "with space": "v", "tick`key": [1, 2], "ü%": True}
    await _cypher(neptunedata, f"MERGE (v {{`~id`: $id}}) SET v:{label} SET v += $props", id="v1", props=props)
    rows = await _cypher(
        neptunedata,
        "MATCH (v {`~id`: $id}) RETURN id(v), labels(v), keys(v) AS keys, v.`tick``key` AS tick, v",
        id="v1",
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["id(v)"] == "v1" and row["labels(v)"] == [ODD_LABEL] and row["tick"] == [1, 2]
    assert sorted(row["keys"]) == sorted(props)
    assert row["v"] == {"~id": "v1", "~entityType": "node", "~labels": [ODD_LABEL], "~properties": props}

    stored = stand.falkordb_graph().query("MATCH (n) RETURN labels(n), properties(n)").result_set
    assert stored == [
        [
            [HIDDEN_LABEL, "Odd %60label%60 ünï 100%25"],
            {"~id": "v1", "plain": 1, "with space": "v", "tick%60key": [1, 2], "ü%25": True},
        ]
    ]


async def test_opencypher_relationship_by_id(stand: NeptuneStand, neptunedata: Any) -> None:
    await _cypher(
        neptunedata,
        "MERGE (a {`~id`: $a}) MERGE (b {`~id`: $b}) "
        "MERGE (a)-[e:`knows well` {`~id`: $e}]->(b) SET e.since = $since",
        a="a", b="b", e="e1", since=2020,
    )  # fmt: skip
    rows = await _cypher(neptunedata, "MATCH ()-[e:`knows well` {`~id`: 'e1'}]->() RETURN e, type(e) AS t")
    assert rows == [
        {
            "e": {
                "~id": "e1",
                "~entityType": "relationship",
                "~start": "a",
                "~end": "b",
                "~type": "knows well",
                "~properties": {"since": 2020},
            },
            "t": "knows well",
        }
    ]
    indexes = stand.falkordb_graph().query("CALL db.indexes() YIELD label, entitytype").result_set
    assert sorted(indexes) == [[HIDDEN_LABEL, "NODE"], ["knows well", "RELATIONSHIP"]]


async def test_opencypher_form_encoded_and_errors(stand: NeptuneStand, neptunedata: Any) -> None:
    form = {"query": "RETURN $x AS x", "parameters": json.dumps({"x": "form"})}
    async with (
        aiohttp.ClientSession(headers={"Authorization": FAKE_SIGV4}) as session,
        session.post(f"{stand.url}/openCypher", data=form) as answer,
    ):
        assert await answer.json() == {"results": [{"x": "form"}]}
    with pytest.raises(neptunedata.exceptions.MalformedQueryException):
        await _cypher(neptunedata, "MATCH (n RETURN n")
    with pytest.raises(neptunedata.exceptions.BadRequestException) as caught:
        await _cypher(neptunedata, "RETURN 1 / 0")
    assert caught.value.response["Error"]["Message"] == "Division by zero"


def test_translation_leaves_strings_and_comments_alone() -> None:
    query = "MATCH (n:`a``b` {`~id`: '(m {`~id`: 1})'}) // labels(n)\nRETURN labels(n) AS l, 'id(n)'"
    translated = translate_query(query).query
    expected_head = f"MATCH (n:`a%60b`:{HIDDEN_LABEL} {{`~id`: '(m {{`~id`: 1}})'}}) // labels(n)\n"
    assert translated.startswith(expected_head)
    assert translated.endswith(" AS l, 'id(n)'") and "__l <> '__Vertex'" in translated


async def test_neptune_graph_execute_query(stand: NeptuneStand, neptune_graph: Any) -> None:
    answer = await neptune_graph.execute_query(
        graphIdentifier="g-stand",
        queryString="MERGE (v {`~id`: $id}) SET v.`na``me` = $name RETURN v.`na``me` AS name",
        language="OPEN_CYPHER",
        parameters={"id": "q1", "name": "Zoë"},
    )
    async with answer["payload"] as payload:
        assert json.loads(await payload.read()) == {"results": [{"name": "Zoë"}]}
    with pytest.raises(neptune_graph.exceptions.ValidationException):
        await neptune_graph.execute_query(graphIdentifier="g", queryString="RETURN 1", language="GREMLIN")


# ----------------------------------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------------------------------

FAULT_ANSWERS = {
    # kind: (opencypher status, code), (queries status, code)
    "concurrent_modification": ((500, "ConcurrentModificationException"),) * 2,
    "throttling": ((500, "ThrottlingException"), (429, "ThrottlingException")),
    "server_error": ((None, "InternalFailureException"), (None, "InternalServerException")),
    "read_only": ((400, "ReadOnlyViolationException"),) * 2,
    "conflict": ((409, "ConflictException"),) * 2,
}


async def _create_vertex(client: Any, service: str, vertex_id: str) -> Any:
    query = "MERGE (v {`~id`: $id}) RETURN id(v) AS id"
    if service == "neptunedata":
        return await _cypher(client, query, id=vertex_id)
    answer = await client.execute_query(
        graphIdentifier="g", queryString=query, language="OPEN_CYPHER", parameters={"id": vertex_id}
    )
    async with answer["payload"] as payload:
        return json.loads(await payload.read())["results"]


def _vertex_count(stand: NeptuneStand) -> int:
    return stand.falkordb_graph().query("MATCH (v) RETURN count(v)").result_set[0][0]


@pytest.mark.parametrize("service", ["neptunedata", "neptune-graph"])
@pytest.mark.parametrize("kind", sorted(FAULT_ANSWERS))
async def test_error_faults(stand: NeptuneStand, service: str, kind: str) -> None:
    expected_status, expected_code = FAULT_ANSWERS[kind][service == "neptune-graph"]
    stand.faults.configure(rate=1.0, kinds=[kind], seed=7)
    async with _client(stand, service, inject_host_prefix=False) as client:
        with pytest.raises(ClientError) as caught:
            await _create_vertex(client, service, "v")
    error = caught.value.response
    assert error["Error"]["Code"] == expected_code
    allowed_statuses = (500, 503) if expected_status is None else (expected_status,)
    assert error["ResponseMetadata"]["HTTPStatusCode"] in allowed_statuses
    assert stand.faults.injected == {kind: 1}
    assert _vertex_count(stand) == 0  # the query was not executed


@pytest.mark.parametrize("service", ["neptunedata", "neptune-graph"])
async def test_dropped_connections(stand: NeptuneStand, service: str) -> None:
    async with _client(stand, service, inject_host_prefix=False) as client:
        stand.faults.configure(rate=1.0, kinds=["drop_connection"], seed=1)
        with pytest.raises(ConnectionClosedError):
            await _create_vertex(client, service, "v1")
        assert _vertex_count(stand) == 0
        stand.faults.configure(rate=1.0, kinds=["drop_after_commit"], seed=1)
        with pytest.raises(ConnectionClosedError):
            await _create_vertex(client, service, "v1")
        assert _vertex_count(stand) == 1  # applied, but the client never heard: a replay must be idempotent
        stand.faults.configure(rate=0.0, kinds=[])
        assert await _create_vertex(client, service, "v1") == [{"id": "v1"}]
    assert _vertex_count(stand) == 1
    path = "opencypher" if service == "neptunedata" else "queries"
    assert stand.requests == {path: 3}
    assert stand.faults.injected == {"drop_connection": 1, "drop_after_commit": 1}


async def test_slow_and_seeded_rate(stand: NeptuneStand, neptunedata: Any) -> None:
    stand.faults.configure(rate=1.0, kinds=["slow"], seed=3)
    started = time.monotonic()
    assert await _cypher(neptunedata, "RETURN 1 AS one") == [{"one": 1}]
    assert 0.3 <= time.monotonic() - started < 2

    async def outcomes(seed: int) -> list[str]:
        stand.faults.configure(rate=0.5, kinds=["throttling", "read_only"], seed=seed)
        seen = []
        for _ in range(12):
            try:
                await _cypher(neptunedata, "RETURN 1")
                seen.append("ok")
            except ClientError as error:
                seen.append(error.response["Error"]["Code"])
        return seen

    first = await outcomes(11)
    assert first == await outcomes(11)
    assert {"ok", "ThrottlingException", "ReadOnlyViolationException"} <= set(first)


async def test_poisoned_parameters(stand: NeptuneStand, neptunedata: Any) -> None:
    stand.faults.poison("poison-pill")
    await _cypher(neptunedata, "MERGE (v {`~id`: $id})", id="fine")
    with pytest.raises(neptunedata.exceptions.BadRequestException):
        await _cypher(neptunedata, "UNWIND $ids AS id MERGE (v {`~id`: id})", ids=["a", "poison-pill-7"])
    assert _vertex_count(stand) == 1 and stand.faults.injected == {"poison": 1}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("throttling", "ThrottlingException"),
        ("server_error", "InternalFailureException"),
        ("drop_connection", None),
    ],
)
async def test_stream_faults(stand: NeptuneStand, neptunedata: Any, kind: str, expected: str | None) -> None:
    _fill_stream(stand)
    stand.faults.configure(rate=1.0, kinds=[kind], seed=5, paths=("stream",))
    if expected is None:
        with pytest.raises(ConnectionClosedError):
            await neptunedata.get_propertygraph_stream(iteratorType="TRIM_HORIZON")
    else:
        with pytest.raises(ClientError) as caught:
            await neptunedata.get_propertygraph_stream(iteratorType="TRIM_HORIZON")
        assert caught.value.response["Error"]["Code"] == expected
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500
    assert await _cypher(neptunedata, "RETURN 1 AS one") == [{"one": 1}]  # other paths unaffected
    with pytest.raises(ValueError, match="do not apply"):
        stand.faults.configure(rate=1.0, kinds=["conflict"], paths=("stream",))
