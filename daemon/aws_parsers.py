"""botocore's response parsers, with orjson reading the body of the stream reads.

Room in the design: `daemon.aws.open_client` registers `ResponseParserFactory` as the `response_parser_factory`
component of every session it opens. The one change it makes is the JSON decoder of the successful responses
of the stream reads (`OUTPUT_SHAPES`: DynamoDB Streams GetRecords, Neptune's GetPropertygraphStream and
GetSparqlStream), the one response each source parses for every record it reads: botocore decodes a body with
the standard library's `json` (about twice orjson's CPU on item images, with the daemon's model extras making
the records a JSON document that botocore then walks no further). Everything else is botocore's own parser,
unchanged: the shape walk of those same responses (so `NextShardIterator`, `lastEventId` and the response
metadata come out as botocore makes them), every error response (error codes, classification, retries), and
every other operation. Signing, retries and the HTTP session are not touched.

orjson and `json` read the same value from every document both accept, with one exception handled here: orjson
reads an integer literal outside [-2**63, 2**64) as a float, `json` as an int. The body is checked for a number
token that long (`_maybe_wide_integer`, a byte translation and a few substring searches: about 1 µs a
DynamoDB record) and then decoded by botocore. Whatever orjson refuses (NaN, a lone surrogate escape, invalid UTF-8,
nesting deeper than 1,024) is decoded by botocore too, which accepts or refuses it as it always has; so the
result is always botocore's (`tests/test_aws_parsers.py` proves it on generated bodies).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiobotocore.parsers import AioJSONParser, AioResponseParserFactory, AioRestJSONParser

# Output shapes whose successful bodies orjson decodes (names are per service model; a same-named shape of
# another service would get the same exact decoding).
OUTPUT_SHAPES = frozenset({"GetRecordsOutput", "GetPropertygraphStreamOutput", "GetSparqlStreamOutput"})

_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_JSON_SPACE = b" \t\r\n"
# A number token of 20 digits or more (at least 10**19, possibly 2**64 or more), or a negative one of 19 or more
# (possibly below -2**63), after the digits became "0" and JSON's whitespace was dropped. A match inside a string
# only sends the body to botocore's decoder (the sequence numbers are strings: a quote precedes them).
_WIDE_TOKENS = (b":" + b"0" * 20, b"," + b"0" * 20, b"[" + b"0" * 20)
_WIDE_START = b"0" * 20
_NEGATIVE_19 = b"-" + b"0" * 19
_NEGATIVE = re.compile(rb"-([0-9]{19,})")  # JSON puts no space between the sign and the digits
_INT64_MIN_MAGNITUDE = 2**63


def _maybe_wide_integer(body: bytes | bytearray) -> bool:
    """The body may hold an integer literal orjson would read as a float (see the module docstring)."""
    digits = body.translate(_DIGITS_TO_ZERO, _JSON_SPACE)
    if digits.startswith(_WIDE_START) or any(token in digits for token in _WIDE_TOKENS):
        return True
    if _NEGATIVE_19 in digits:  # 19 digits after a minus sign: below -2**63 only past -9223372036854775808
        return any(len(m[1]) > 19 or int(m[1]) > _INT64_MIN_MAGNITUDE for m in _NEGATIVE.finditer(body))
    return False


_UNDECODED: Any = object()


def decode(body: Any) -> Any:
    """The JSON value of `body` as `json.loads` reads it, by orjson; `_UNDECODED` when botocore must decode it."""
    if body.__class__ is not bytes and body.__class__ is not bytearray:
        return _UNDECODED
    if _maybe_wide_integer(body):
        return _UNDECODED
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _UNDECODED


class _OrjsonBody:
    """Mixin for botocore's JSON parsers: the body of a successful `OUTPUT_SHAPES` response decoded by orjson.

    botocore creates a parser for every response (`Endpoint._do_get_response`); `parse` notes whether this one
    is a stream read, and `_parse_body_as_json` (botocore's decoding step, shared by its success and error
    paths) then decodes with orjson, else with botocore's own code."""

    _orjson = False

    async def parse(self, response: dict[str, Any], shape: Any) -> Any:
        self._orjson = response["status_code"] < 300 and shape is not None and shape.name in OUTPUT_SHAPES
        try:
            return await super().parse(response, shape)  # type: ignore[misc]
        finally:
            self._orjson = False

    def _parse_body_as_json(self, body_contents: bytes) -> Any:
        if self._orjson and body_contents:
            parsed = decode(body_contents)
            if parsed is not _UNDECODED:
                return parsed
        return super()._parse_body_as_json(body_contents)  # type: ignore[misc]


class JSONParser(_OrjsonBody, AioJSONParser):
    """The `json` protocol (DynamoDB Streams)."""


class RestJSONParser(_OrjsonBody, AioRestJSONParser):
    """The `rest-json` protocol (neptunedata)."""


_PARSERS = {"json": JSONParser, "rest-json": RestJSONParser}


class ResponseParserFactory(AioResponseParserFactory):
    """aiobotocore's parser factory, with `JSONParser` / `RestJSONParser` for the two JSON protocols."""

    def create_parser(self, protocol_name: str) -> Any:
        parser = _PARSERS.get(protocol_name)
        if parser is None:
            return super().create_parser(protocol_name)
        return parser(**self._defaults)
