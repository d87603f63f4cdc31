"""What the Neptune Database and Neptune Analytics sinks share: one aiobotocore client per sink, opened on
start and closed on close, the batch call on the lean path (`daemon.aws.SignedCall`: botocore's request,
signer and error parser without the rest of the client pipeline), and the AWS error classification."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import structlog

from daemon.aws import SignedCall, aws_session, classify_aws_error, open_client
from daemon.config import DEFAULT_MAX_REQUEST_BYTES
from daemon.cypher import neptune_dialect
from daemon.sinks.base import ErrorClass, GraphSink

log = structlog.get_logger("daemon.sink.aws")


class AwsClientSink(GraphSink):
    service: str  # the botocore service name

    def __init__(
        self,
        name: str,
        *,
        endpoint: str | None,
        region: str,
        profile: str | None = None,
        timeout_seconds: float = 60.0,
        concurrency: int = 4,
        inject_host_prefix: bool = True,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.name = name
        self.max_request_bytes = max_request_bytes
        self.dialect = neptune_dialect()
        self._client_options = {
            "endpoint": endpoint,
            "region": region,
            "profile": profile,
            "timeout_seconds": timeout_seconds,
            "max_connections": concurrency * 2,
            "inject_host_prefix": inject_host_prefix,
        }
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._call: SignedCall | None = None  # the batch call's lean path; None: through the client

    async def start(self) -> None:
        if self._client is None:
            self._stack = AsyncExitStack()
            session = aws_session(self._client_options["profile"])
            self._client = await open_client(self._stack, self.service, session=session, **self._client_options)
            try:
                self._call = await self._capture(session)
            except Exception as exc:  # no credentials yet, say: the client's own calls then fail as they always did
                log.info("batch calls go through the full client", sink=self.name, reason=str(exc)[:300])
                self._call = None

    async def _capture(self, session: Any) -> SignedCall:
        """The batch operation's template (`SignedCall.capture` with sample parameters)."""
        raise NotImplementedError

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = self._call = None

    async def read(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        # openCypher on Neptune has no read-only switch: the graph view's statements are fixed MATCH ... RETURN.
        if self._client is None:
            raise ConnectionError(f"sink {self.name!r} is not connected yet")
        return await self.query(statement, params)

    def classify(self, exc: BaseException) -> ErrorClass:
        return classify_aws_error(exc)
