"""botocore's response parsers, with msgspec reading the body of the stream reads.

Room in the design: `daemon.aws.open_client` registers `ResponseParserFactory` as the `response_parser_factory`
component of every session it opens. The one change it makes is the JSON decoder of the successful responses
of the stream reads (`OUTPUT_SHAPES`: DynamoDB Streams GetRecords, Neptune's GetPropertygraphStream and
GetSparqlStream), the one response each source parses for every record it reads: botocore decodes a body with
the standard library's `json` (about twice msgspec's CPU on item images, with the daemon's model extras making
the records a JSON document that botocore then walks no further). Everything else is botocore's own parser,
unchanged: the shape walk of those same responses (so `NextShardIterator`, `lastEventId` and the response
metadata come out as botocore makes them), every error response (error codes, classification, retries), and
every other operation. Signing, retries and the HTTP session are not touched.

msgspec's untyped JSON decoder reads the same value as `json` from every document both accept, integers of any
size included (orjson, used here before, reads an integer beyond 64 bits as a float, so every body had to be
scanned for one first: a quarter of the decoding's instructions). Whatever msgspec refuses (NaN and the
infinities, a number beyond the float range, a lone surrogate escape, invalid UTF-8, a byte order mark, nesting
deeper than the recursion limit) is decoded by botocore, which accepts or refuses it as it always has; so the
result is always botocore's (`tests/test_aws_parsers.py` proves it on generated bodies).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiobotocore.parsers import AioJSONParser, AioResponseParserFactory, AioRestJSONParser

# Output shapes whose successful bodies msgspec decodes (names are per service model; a same-named shape of
# another service would get the same exact decoding).
OUTPUT_SHAPES = frozenset({"GetRecordsOutput", "GetPropertygraphStreamOutput", "GetSparqlStreamOutput"})

_DECODE = msgspec.json.Decoder().decode  # untyped: dicts, lists, str, int, float, bool, None, as `json` gives
_UNDECODED: Any = object()


def decode(body: Any) -> Any:
    """The JSON value of `body` as `json.loads` reads it, by msgspec; `_UNDECODED` when botocore must decode it."""
    if body.__class__ is not bytes and body.__class__ is not bytearray:
        return _UNDECODED
    try:
        return _DECODE(body)
    except (msgspec.MsgspecError, ValueError, RecursionError):  # botocore's decoder says what it makes of it
        return _UNDECODED


class _FastBody:
    """Mixin for botocore's JSON parsers: the body of a successful `OUTPUT_SHAPES` response decoded by msgspec.

    botocore creates a parser for every response (`Endpoint._do_get_response`); `parse` notes whether this one
    is a stream read, and `_parse_body_as_json` (botocore's decoding step, shared by its success and error
    paths) then decodes with msgspec, else with botocore's own code."""

    _fast = False

    async def parse(self, response: dict[str, Any], shape: Any) -> Any:
        self._fast = response["status_code"] < 300 and shape is not None and shape.name in OUTPUT_SHAPES
        try:
            return await super().parse(response, shape)  # type: ignore[misc]
        finally:
            self._fast = False

    def _parse_body_as_json(self, body_contents: bytes) -> Any:
        if self._fast and body_contents:
            parsed = decode(body_contents)
            if parsed is not _UNDECODED:
                return parsed
        return super()._parse_body_as_json(body_contents)  # type: ignore[misc]


class JSONParser(_FastBody, AioJSONParser):
    """The `json` protocol (DynamoDB Streams)."""


class RestJSONParser(_FastBody, AioRestJSONParser):
    """The `rest-json` protocol (neptunedata)."""


_PARSERS = {"json": JSONParser, "rest-json": RestJSONParser}


class ResponseParserFactory(AioResponseParserFactory):
    """aiobotocore's parser factory, with `JSONParser` / `RestJSONParser` for the two JSON protocols."""

    def create_parser(self, protocol_name: str) -> Any:
        parser = _PARSERS.get(protocol_name)
        if parser is None:
            return super().create_parser(protocol_name)
        return parser(**self._defaults)
