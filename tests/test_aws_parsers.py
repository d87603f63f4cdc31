"""`daemon.aws_parsers`: the stream reads' bodies decoded by msgspec give exactly what botocore's own parser gives.

Generated DynamoDB Streams GetRecords bodies (every attribute type, nested lists and maps, sets, binary, unicode,
empty values, written by three encoders) and bodies holding arbitrary JSON values (integers beyond 64 bits,
floats, NaN, lone surrogates) are parsed by the daemon's parser and by aiobotocore's, on the daemon's service
models (model extras included); the results must be equal, with equal types. Errors and other operations are
botocore's own parser.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import botocore.session
import orjson
import pytest
from aiobotocore.parsers import AioResponseParserFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import aws_parsers
from daemon.aws import MODEL_EXTRAS


def _model(service: str) -> Any:
    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.insert(0, str(MODEL_EXTRAS))
    return session.get_service_model(service)


STREAMS = _model("dynamodbstreams")
NEPTUNE = _model("neptunedata")
GET_RECORDS = STREAMS.operation_model("GetRecords").output_shape
GET_PG_STREAM = NEPTUNE.operation_model("GetPropertygraphStream").output_shape
DAEMON = aws_parsers.ResponseParserFactory()
BOTOCORE = AioResponseParserFactory()
HEADERS = {"x-amzn-requestid": "req-1", "content-type": "application/x-amz-json-1.0"}


async def _both(protocol: str, body: bytes, shape: Any, status: int = 200) -> tuple[Any, Any]:
    def response() -> dict[str, Any]:
        return {"body": body, "headers": dict(HEADERS), "status_code": status, "context": {}}

    ours = await DAEMON.create_parser(protocol).parse(response(), shape)
    theirs = await BOTOCORE.create_parser(protocol).parse(response(), shape)
    return ours, theirs


def _typed(value: Any) -> Any:
    """`value` with every leaf tagged by its type, so that 1 == 1.0 == True do not pass for equal."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, float) and value != value:
        return ("nan",)
    return (type(value).__name__, value)


# ------------------------------------------------------------------------------------------------ strategies

texts = st.text(max_size=12)  # unicode, empty, and (from st.text) surrogates are excluded: those come below
numbers = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=5).map(str),
    st.sampled_from(["0", "-0", "1E+2", "1.5e-130", "9.9999999999999999999999999999999999999E+125"]),
)
binary = st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode())
scalars = st.one_of(
    st.builds(lambda s: {"S": s}, texts),
    st.builds(lambda n: {"N": n}, numbers),
    st.builds(lambda b: {"B": b}, binary),
    st.builds(lambda b: {"BOOL": b}, st.booleans()),
    st.just({"NULL": True}),
    st.builds(lambda m: {"SS": m}, st.lists(texts, max_size=4, unique=True)),
    st.builds(lambda m: {"NS": m}, st.lists(numbers, max_size=4, unique=True)),
    st.builds(lambda m: {"BS": m}, st.lists(binary, max_size=4, unique=True)),
)
attribute_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.builds(lambda v: {"L": v}, st.lists(inner, max_size=4)),
        st.builds(lambda v: {"M": v}, st.dictionaries(texts, inner, max_size=4)),
    ),
    max_leaves=12,
)
items = st.dictionaries(texts, attribute_values, max_size=6)
keys = st.fixed_dictionaries({"PK": st.builds(lambda s: {"S": s}, texts), "SK": st.builds(lambda s: {"S": s}, texts)})


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(st.sampled_from(["INSERT", "MODIFY", "REMOVE"]))
    body: dict[str, Any] = {
        "ApproximateCreationDateTime": draw(
            st.one_of(st.floats(0, 4e9, allow_nan=False), st.integers(0, 4_000_000_000))
        ),
        "Keys": draw(keys),
        "SequenceNumber": str(draw(st.integers(10**20, 10**40))),
        "SizeBytes": draw(st.integers(1, 2**63 - 1)),
        "StreamViewType": draw(st.sampled_from(["NEW_AND_OLD_IMAGES", "NEW_IMAGE", "KEYS_ONLY", "OLD_IMAGE"])),
    }
    if event != "REMOVE":
        body["NewImage"] = draw(items)
    if event != "INSERT":
        body["OldImage"] = draw(items)
    record: dict[str, Any] = {
        "eventID": draw(st.text("0123456789abcdef", min_size=1, max_size=32)),
        "eventName": event,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": body,
    }
    if draw(st.booleans()):
        record["userIdentity"] = {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}
    return record


def _encode(page: dict[str, Any], how: str) -> bytes:
    if how == "orjson":
        return orjson.dumps(page)
    return json.dumps(page, ensure_ascii=how == "ascii", indent=1 if how == "ascii" else None).encode()


ENCODERS = st.sampled_from(["orjson", "ascii", "unicode"])


# ------------------------------------------------------------------------------------------------ properties


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(records(), max_size=6),
    st.one_of(st.none(), st.text("ABCDEFabcdef0123456789", max_size=40)),
    ENCODERS,
)
async def test_get_records_bodies_parse_as_botocore_parses_them(
    page_records: list[dict[str, Any]], iterator: str | None, how: str
) -> None:
    page: dict[str, Any] = {"Records": page_records}
    if iterator is not None:
        page["NextShardIterator"] = iterator
    body = _encode(page, how)
    ours, theirs = await _both("json", body, GET_RECORDS)
    assert _typed(ours) == _typed(theirs)
    assert ours["Records"] == page_records


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([2**64, 2**64 - 1, -(2**63), -(2**63) - 1, 10**19, -(10**19), 10**30]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=16,
)


@settings(max_examples=80, deadline=None)
@given(json_values, ENCODERS)
async def test_any_json_in_the_records_parses_as_botocore_parses_it(value: Any, how: str) -> None:
    """Integers beyond 64 bits (orjson would read a float), NaN and infinities (msgspec refuses them) and lone
    surrogates: whatever the records hold, the result is botocore's."""
    body = json.dumps({"Records": value, "NextShardIterator": "x"}, ensure_ascii=how == "ascii").encode()
    ours, theirs = await _both("json", body, GET_RECORDS)
    assert _typed(ours) == _typed(theirs)


@pytest.mark.parametrize(
    "body",
    [
        b'{"Records": [{"SizeBytes": 18446744073709551616}]}',
        b'{"Records": [ -9223372036854775809 ]}',
        b'{"Records":[1,\n  123456789012345678901234567890]}',
        b"18446744073709551616",
        b'{"Records": [NaN, Infinity]}',
        b'{"Records": ["\\ud800"]}',
        b'{"Records": [1,]}',
        b'{"Records": "\xff"}',
        b"\xef\xbb\xbf{}",
        b"",
        b"null",
        b'{"Records": null, "NextShardIterator": null}',
        b'{"Records": [], "NextShardIterator": "x", "Unknown": 1}',
    ],
)
async def test_bodies_orjson_would_read_otherwise_are_botocores(body: bytes) -> None:
    try:
        ours, theirs = await _both("json", body, GET_RECORDS)
    except Exception as exc:  # botocore refuses it: so must the daemon's parser, the same way
        with pytest.raises(type(exc)):
            await DAEMON.create_parser("json").parse(
                {"body": body, "headers": dict(HEADERS), "status_code": 200, "context": {}}, GET_RECORDS
            )
        return
    assert _typed(ours) == _typed(theirs)


def test_stream_pages_are_decoded_by_msgspec() -> None:
    """The fast path is taken for real pages: the benchmark's social workload (every attribute type)."""
    from tests.bench.pipeline_cost import dynamodb_pages, neptune_pages

    for body in dynamodb_pages(300, plain=False)[:1] + neptune_pages(300)[:1]:
        assert aws_parsers.decode(body) == json.loads(body)


def test_wide_integers_are_read_exactly() -> None:
    """Integers beyond 64 bits are read as `json` reads them (ints, not floats), on the fast path."""
    wide = (b"18446744073709551616", b"10000000000000000000", b"-9223372036854775809", b"-9999999999999999999")
    for token in (*wide, b"-" + b"7" * 4000):
        for body in (b'{"a":' + token + b"}", b'{"a": [1, \n\t' + token + b"]}", token):
            decoded = aws_parsers.decode(body)
            assert decoded is not aws_parsers._UNDECODED, body
            assert _typed(decoded) == _typed(json.loads(body)), body
    body = b'{"s": "1234567890123456789012345", "n": [9223372036854775807, -9223372036854775808]}'
    assert aws_parsers.decode(body) == {"s": "1234567890123456789012345", "n": [2**63 - 1, -(2**63)]}


async def test_error_responses_are_botocores() -> None:
    body = b'{"__type": "com.amazonaws.dynamodb.v20120810#ExpiredIteratorException", "message": "expired"}'
    ours, theirs = await _both("json", body, GET_RECORDS, status=400)
    assert ours == theirs
    assert ours["Error"] == {"Code": "ExpiredIteratorException", "Message": "expired"}


@settings(max_examples=30, deadline=None)
@given(json_values)
async def test_property_graph_stream_bodies_parse_as_botocore_parses_them(value: Any) -> None:
    page = {"lastEventId": {"commitNum": 1, "opNum": 2}, "lastTrxTimestamp": 5, "format": "PG_JSON"}
    page["records"] = [{"commitTimestamp": 1, "eventId": {"commitNum": 1, "opNum": 2}, "data": value, "op": "ADD"}]
    page["totalRecords"] = 1
    body = json.dumps(page).encode()
    ours, theirs = await _both("rest-json", body, GET_PG_STREAM)
    assert _typed(ours) == _typed(theirs)


def test_other_protocols_are_aiobotocores() -> None:
    assert type(DAEMON.create_parser("query")) is type(BOTOCORE.create_parser("query"))
    assert isinstance(DAEMON.create_parser("json"), aws_parsers.JSONParser)


async def test_the_daemons_clients_use_these_parsers() -> None:
    from contextlib import AsyncExitStack

    from daemon.aws import open_client

    async with AsyncExitStack() as stack:
        client = await open_client(stack, "dynamodbstreams", endpoint="http://127.0.0.1:9", region="us-east-1")
        factory = client._endpoint._response_parser_factory
        assert isinstance(factory, aws_parsers.ResponseParserFactory)
        assert isinstance(factory.create_parser(client.meta.service_model.resolved_protocol), aws_parsers.JSONParser)
