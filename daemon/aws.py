"""aiobotocore clients as the daemon uses them, and the classification of their errors.

botocore signs requests (SigV4 from the normal credential chain) and speaks the wire format; the daemon turns
botocore's own retries OFF (`total_max_attempts = 1`) because botocore would silently re-send any HTTP 500,
which Neptune uses for ConcurrentModificationException: the daemon's classified retry, metrics and bisection
must see every failure.

aiobotocore, botocore and aiohttp are imported when a client is first opened (or an error first classified),
not with this module: a daemon whose sources and sinks need no AWS client (the quick start: a capture file into
the embedded engine) starts without them, about a quarter of its imports.

`SignedCall` is the sinks' hot call on a leaner path than the client's: the request botocore builds for the
operation is captured once, and each call sends a copy with a new body, signed by botocore's own SigV4 signer
with the client's credentials, on the client's own pooled aiohttp session; an error answer is parsed by
botocore's parser and raised as the client's own exception class, so errors classify exactly as before.
"""

from __future__ import annotations

import asyncio
import functools
import platform
import weakref
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


# One session per event loop and profile: its clients share the loaded service models, endpoint rules and the
# resolved credentials (a source and its sink on one service load the model once: about 0.1 s of CPU at start).
_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, Any]] = weakref.WeakKeyDictionary()


def aws_session(profile: str | None = None) -> Any:
    """An `AioSession` (the normal credential chain, or `profile`) that knows the daemon's model extras; inside an
    event loop, the one its other clients of `profile` use."""
    try:
        sessions = _SESSIONS.setdefault(asyncio.get_running_loop(), {})
    except RuntimeError:  # no loop: a session of its own
        sessions = {}
    session = sessions.get(profile)
    if session is None:
        session = sessions[profile] = _new_session(profile)
    return session


def _new_session(profile: str | None) -> Any:
    from aiobotocore.session import AioSession

    from daemon.aws_parsers import ResponseParserFactory

    session = AioSession(profile=profile)
    session.get_component("data_loader").search_paths.insert(0, str(MODEL_EXTRAS))
    # botocore's parsers, with msgspec decoding the stream reads' bodies (`daemon.aws_parsers`)
    session.register_component("response_parser_factory", ResponseParserFactory())
    return session


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
    session: Any = None,
) -> Any:
    """An aiobotocore client whose lifetime is bound to `stack`, with botocore retries off; `session` is an
    `aws_session()` to make it with (a new one by default)."""
    from aiobotocore.config import AioConfig

    session = session if session is not None else aws_session(profile)
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


class _Captured(Exception):
    """Carries the request botocore was about to send out of its pipeline (`SignedCall.capture`)."""


# Headers of the captured request that belong to one request only: the signer (date, signature, session token),
# the body (its length) and botocore's per-request telemetry are made anew for every call.
_PER_REQUEST_HEADERS = frozenset(
    {"authorization", "x-amz-date", "x-amz-security-token", "content-length", "amz-sdk-invocation-id"}
)


class SignedCall:
    """One operation of an aiobotocore client on a lean path, for the sinks' batch calls: the full client
    pipeline (parameter validation, serialisation, endpoint rules, event hooks, signing, parsing) costs about
    1 ms of CPU a call (docs/performance.md), more than the rest of a batch's client work.

    `capture` runs the operation once through the client with sample parameters and stops it just before the
    send (a `before-send` hook): what botocore built there (URL with any host prefix, headers, the signature's
    scope) is the template. `send` posts a new JSON body on that template: a fresh `AWSRequest` signed by
    `botocore.auth.SigV4Auth` with the credentials the client uses (refreshed as botocore refreshes them), sent
    by the client's own pooled aiohttp session (the same connection pool, proxies, TLS settings, timeouts and
    connection-error exceptions as the client's calls). A 2xx answer's body is returned as bytes; any other
    answer is parsed by botocore's parser for the protocol, with the modeled fields of the error's shape, and
    raised as `client.exceptions.from_code(code)`, exactly as the client raises it."""

    def __init__(self, client: Any, credentials: Any, operation: str, template: Any) -> None:
        from botocore.parsers import create_parser

        self._client, self._credentials, self._operation = client, credentials, operation
        self._model = client.meta.service_model.operation_model(operation)
        self._parser = create_parser(client.meta.service_model.protocol)
        self._http = client._endpoint.http_session  # the client's pooled aiohttp session (see the class doc)
        self._retry_event = f"needs-retry.{client.meta.service_model.service_id.hyphenize()}.{operation}"
        self.method, self.url = template.method, template.url
        self.headers = {k: _text(v) for k, v in template.headers.items() if k.lower() not in _PER_REQUEST_HEADERS}
        # The signature's scope as botocore chose it for this endpoint: .../<date>/<region>/<service>/aws4_request
        scope = _text(template.headers["Authorization"]).split("Credential=", 1)[1].split(",", 1)[0].split("/")
        self.region, self.signing_name = scope[2], scope[3]

    @classmethod
    async def capture(cls, client: Any, session: Any, operation: str, **sample: Any) -> SignedCall:
        """Build the template by running `operation` with `sample` parameters up to its send."""
        from botocore import xform_name

        event = f"before-send.{client.meta.service_model.service_id.hyphenize()}.{operation}"

        def stop(request: Any, **_: Any) -> None:
            raise _Captured(request)

        client.meta.events.register_first(event, stop)
        try:
            await getattr(client, xform_name(operation))(**sample)
        except _Captured as captured:
            template = captured.args[0]
        else:  # pragma: no cover - the hook always stops the call
            raise RuntimeError(f"{operation}: botocore sent the sample request")
        finally:
            client.meta.events.unregister(event, stop)
        credentials = await session.get_credentials()
        if credentials is None:  # the client could not have signed either
            raise RuntimeError("no AWS credentials")
        return cls(client, credentials, operation, template)

    async def send(self, body: bytes) -> bytes:
        """Post `body`; the answer's body, or the client's exception for an error answer."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSPreparedRequest, AWSRequest

        request = AWSRequest(method=self.method, url=self.url, data=body, headers=dict(self.headers))
        SigV4Auth(await self._credentials.get_frozen_credentials(), self.signing_name, self.region).add_auth(request)
        # `AWSRequest.prepare` would only re-encode the URL and count the body (aiohttp sets Content-Length).
        prepared = AWSPreparedRequest(self.method, self.url, request.headers, body, stream_output=False)
        response = await self._http.send(prepared)
        content = await response.content
        if response.status_code < 300:
            return content
        raise await self._error(response, content)

    async def _error(self, response: Any, body: bytes) -> Exception:
        """What the client raises for this answer, built as its endpoint and `_make_api_call` build it: botocore's
        parser with the error shape's modeled fields, the retry handler's metadata (a single attempt: the
        client's retries are off) and the exception class the client has for the code."""
        answer = {"status_code": response.status_code, "headers": response.headers, "body": body,
                  "context": {"operation_name": self._operation}}  # fmt: skip
        parsed = self._parser.parse(answer, self._model.output_shape)
        code = parsed.get("Error", {}).get("Code")
        shape = self._client.meta.service_model.shape_for_error_code(code) if code else None
        if shape is not None:
            parsed.update(self._parser.parse(answer, shape))
        await self._client.meta.events.emit(
            self._retry_event, response=(response, parsed), endpoint=self._client._endpoint, operation=self._model,
            attempts=1, caught_exception=None, request_dict={"context": {}},
        )  # fmt: skip
        if "ResponseMetadata" in parsed:
            parsed["ResponseMetadata"]["RetryAttempts"] = 0
        return self._client.exceptions.from_code(code)(parsed, self._operation)  # type: ignore[no-any-return]


def _text(value: str | bytes) -> str:
    """A header value as text (botocore keeps some as bytes once a request is prepared)."""
    return value.decode() if isinstance(value, bytes) else value


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
