"""Sink error classification: retry, reject the rows (bisect + dead-letter), or raise (restart the pipeline)."""

from __future__ import annotations

import pytest
import redis.exceptions
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from daemon.aws import classify_aws_error
from daemon.sinks.falkordb import FalkorDBSink


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("exc", "retryable", "rejected", "reason"),
    [
        (client_error("ConcurrentModificationException", 500), True, False, "conflict"),
        (client_error("ConflictException", 409), True, False, "conflict"),
        (client_error("ThrottlingException", 429), True, False, "throttling"),
        (client_error("ReadOnlyViolationException", 400), True, False, "read_only"),
        (client_error("SomethingNew", 503), True, False, "server_error"),
        (client_error("BadRequestException", 400), False, True, "rejected"),
        (client_error("MalformedQueryException", 400), False, True, "rejected"),
        (client_error("AccessDeniedException", 403), False, False, "access_denied"),
        (EndpointConnectionError(endpoint_url="http://x"), True, False, "connection"),
        (ReadTimeoutError(endpoint_url="http://x"), True, False, "timeout"),
        (RuntimeError("bug"), False, False, "internal"),
    ],
)
def test_aws_errors(exc: BaseException, retryable: bool, rejected: bool, reason: str) -> None:
    cls = classify_aws_error(exc)
    assert (cls.retryable, cls.data_rejected, cls.reason) == (retryable, rejected, reason)


@pytest.mark.parametrize(
    ("exc", "retryable", "rejected"),
    [
        (redis.exceptions.ConnectionError("refused"), True, False),
        (redis.exceptions.TimeoutError("slow"), True, False),
        (redis.exceptions.ResponseError("BUSY running a script"), True, False),
        (redis.exceptions.ResponseError("errMsg: Invalid input"), False, True),
        (redis.exceptions.ResponseError("Property values can only be of primitive types"), False, True),
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True, False),
        (redis.exceptions.ResponseError("MISCONF Errors writing to the AOF file: No space left"), True, False),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), True, False),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), True, False),
        (redis.exceptions.ResponseError("Query's mem consumption exceeded capacity"), True, False),
        (redis.exceptions.ResponseError("something this daemon has never seen"), True, False),
        (redis.exceptions.AuthenticationError("invalid password"), False, False),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False, True),
        (redis.exceptions.ResponseError("WRONGPASS invalid username-password pair"), False, False),
        (ValueError("Cypher map key cannot contain a backtick"), False, True),
        (TypeError("a bug"), False, False),
    ],
)
def test_falkordb_errors(exc: BaseException, retryable: bool, rejected: bool) -> None:
    cls = FalkorDBSink("s", url="redis://127.0.0.1:1").classify(exc)
    assert (cls.retryable, cls.data_rejected) == (retryable, rejected)
