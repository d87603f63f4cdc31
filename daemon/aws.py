"""aiobotocore clients as the daemon uses them, and the classification of their errors.

botocore signs requests (SigV4 from the normal credential chain) and speaks the wire format; the daemon turns
botocore's own retries OFF (`total_max_attempts = 1`) because botocore would silently re-send any HTTP 500,
which Neptune uses for ConcurrentModificationException: the daemon's classified retry, metrics and bisection
must see every failure.

aiobotocore, botocore and aiohttp are imported when a client is first opened (or an error first classified),
not with this module: a daemon whose sources and sinks need no AWS client (the quick start: a capture file into
the embedded engine) starts without them, about a quarter of its imports.
"""

from __future__ import annotations

import asyncio
import functools
import platform
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.sinks.base import REJECTED, RETRY, ErrorClass

# Error codes worth retrying, by the bounded reason label they are counted under.
_RETRYABLE_CODES = {
    "ConcurrentModificationException": "conflict",
    "ConflictException": "conflict",
    "ThrottlingException": "throttling",
    "TooManyRequestsException": "throttling",
    "ReadOnlyViolationException": "read_only",
    "InternalFailureException": "server_error",
    "InternalServerException": "server_error",
    "ServiceUnavailableException": "server_error",
    "MemoryLimitExceededException": "server_error",
    "TimeLimitExceededException": "timeout",
    "ClientTimeoutException": "timeout",
    "QueryLimitExceededException": "throttling",
    "ExpiredTokenException": "access_expired",  # credentials rotate; the chain refreshes them
    "LimitExceededException": "throttling",  # DynamoDB Streams: too many GetRecords / readers on a shard
    "ProvisionedThroughputExceededException": "throttling",
    "RequestLimitExceeded": "throttling",
}
# Error codes that mean "these rows are refused": bisect to the poison change and dead-letter it.
_DATA_REJECTED_CODES = frozenset(
    {
        "BadRequestException",
        "MalformedQueryException",
        "ParsingException",
        "InvalidParameterException",
        "InvalidArgumentException",
        "IllegalArgumentException",
        "InvalidNumericDataException",
        "ConstraintViolationException",
        "QueryTooLargeException",
        "ValidationException",
        "UnprocessableException",
        "MissingParameterException",
    }
)


# botocore model extras shipped with the daemon (botocore's own `sdk-extras` merge mechanism). The one for
# neptunedata declares the `records` of GetPropertygraphStream and GetSparqlStream JSON documents, so botocore
# hands the records over as parsed JSON instead of walking the model for every field of every record (about 80 us
# a record, most of a catch-up's CPU); records keep their wire names (`commitTimestamp`). The one for
# dynamodbstreams does the same for GetRecords' `Records` (about 100 us a record): binary values stay base64 text,
# and `ApproximateCreationDateTime` stays epoch seconds.
MODEL_EXTRAS = Path(__file__).with_name("aws_models")


# A fixed User-Agent: botocore otherwise rebuilds its structured one (about 20 sanitised components) for every
# request and again before sending it, about a quarter of a small request's client CPU. This one names the
# daemon, so CloudTrail and the service logs show which tool made a call.
@functools.cache
def user_agent() -> str:
    import aiobotocore
    import botocore

    return (
        f"graph-replicator/{__version__} aiobotocore/{aiobotocore.__version__} botocore/{botocore.__version__} "
        f"Python/{platform.python_version()}"
    )


async def open_client(
    stack: AsyncExitStack,
    service: str,
    *,
    endpoint: str | None,
    region: str,
    profile: str | None = None,
    timeout_seconds: float = 60.0,
    max_connections: int = 10,
    inject_host_prefix: bool = True,
) -> Any:
    """An aiobotocore client whose lifetime is bound to `stack`, with botocore retries off."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession

    from daemon.aws_parsers import ResponseParserFactory

    session = AioSession(profile=profile)
    session.get_component("data_loader").search_paths.insert(0, str(MODEL_EXTRAS))
    # botocore's parsers, with orjson decoding the stream reads' bodies (`daemon.aws_parsers`)
    session.register_component("response_parser_factory", ResponseParserFactory())
    config = AioConfig(
        retries={"total_max_attempts": 1},
        connect_timeout=min(timeout_seconds, 10.0),
        read_timeout=timeout_seconds,
        max_pool_connections=max_connections,
        inject_host_prefix=inject_host_prefix,
        user_agent=user_agent(),
    )
    return await stack.enter_async_context(
        session.create_client(service, endpoint_url=endpoint, region_name=region, config=config)
    )


def error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def classify_aws_error(exc: BaseException) -> ErrorClass:
    """Retryable or not, with a bounded reason label."""
    import aiohttp
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        HTTPClientError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _RETRYABLE_CODES:
            return RETRY[_RETRYABLE_CODES[code]]
        if code in _DATA_REJECTED_CODES:
            return REJECTED
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status == 429:
            return RETRY["throttling"]
        if status >= 500:
            return RETRY["server_error"]
        return ErrorClass(False, "access_denied" if status in (401, 403) else "client_error")
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError | asyncio.TimeoutError | TimeoutError):
        return RETRY["timeout"]
    if isinstance(
        exc,
        EndpointConnectionError | ConnectionClosedError | HTTPClientError | aiohttp.ClientError | ConnectionError,
    ):
        return RETRY["connection"]
    return ErrorClass(False, "internal")
