"""moto's server (`python -m moto.server`) with DynamoDB's writes made atomic, as the real service makes them.

moto serves each request on its own thread and its DynamoDB backend checks a `ConditionExpression` and then
applies the update with no lock between the two, so two concurrent conditional writes expecting the same lease
counter can both succeed (4 trials in 200 with four concurrent writers, seen here): a lease taken twice, which
DynamoDB itself never allows. The lease tests found it as two instances holding one writable lease. Here every
DynamoDB (not DynamoDB Streams, S3, SQS: an SQS long poll must not hold the others up) request runs under one
lock; the rest is moto's own `main`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import moto.server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

_DYNAMODB_TARGET = "DynamoDB_20120810."
_dynamodb = threading.Lock()
_dispatch = DomainDispatcherApplication.__call__


def _serialised(
    self: DomainDispatcherApplication, environ: dict[str, Any], start: Callable[..., Any]
) -> Iterable[bytes]:
    if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(_DYNAMODB_TARGET):
        return _dispatch(self, environ, start)
    with _dynamodb:
        return list(_dispatch(self, environ, start))  # the body built under the lock, as moto builds it


if __name__ == "__main__":
    DomainDispatcherApplication.__call__ = _serialised  # type: ignore[method-assign]
    moto.server.main()
