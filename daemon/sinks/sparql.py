"""SPARQL 1.1 endpoint sink (`kind = "sparql"`): Neptune RDF, Apache Jena Fuseki, GraphDB, Oxigraph server.

Batches of `daemon.rdf.RdfPlanner` go out as one SPARQL 1.1 Update request each (`update=INSERT DATA { ... }` or
`DELETE DATA { ... }`, form-encoded, which every one of those servers takes) over aiohttp; `PlanApplier` retries,
bisects and dead-letters them. With `auth = "sigv4"` every request is signed by botocore's `SigV4Auth` (service
`neptune-db`) with credentials from the default chain (or `profile`), fetched fresh for each request so rotated
credentials are picked up; nothing here computes a signature itself.

Failures are turned into botocore `ClientError`s (Neptune answers errors as JSON `{"code", "detailedMessage"}`;
other servers as text, whose HTTP status then decides) so `daemon.aws.classify_aws_error` classifies them like the
openCypher sinks' errors: ConcurrentModificationException and throttling and 5xx are retried, a 400
(MalformedQueryException and friends) rejects the data (bisection to the quad, dead letter), 401/403 are raised.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import aiohttp
import orjson
from aiobotocore.session import AioSession
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError

from daemon.aws import classify_aws_error, user_agent
from daemon.config import DEFAULT_MAX_REQUEST_BYTES
from daemon.rdf import sparql_data_block
from daemon.sinks.base import ErrorClass, check_request_size
from daemon.sinks.oxigraph import RdfSink

__all__ = ["SparqlClient", "SparqlSink", "binding_term", "sparql_error"]

FORM = "application/x-www-form-urlencoded"
SPARQL_RESULTS = "application/sparql-results+json"


class SparqlClient:
    """SPARQL 1.1 protocol over aiohttp: form-encoded POSTs, SigV4-signed when `sigv4_region` is set. The sink
    writes through it; `graph-replicator bootstrap` reads a `neptune-sparql` source's data through it."""

    def __init__(
        self,
        name: str,
        *,
        sigv4_region: str | None = None,
        profile: str | None = None,
        timeout_seconds: float = 60.0,
        max_connections: int = 8,
    ) -> None:
        self.name = name
        self._region, self._profile = sigv4_region, profile
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._credentials: Any = None  # botocore (refreshable) credentials, with sigv4

    async def start(self) -> None:
        if self._session is not None:
            return
        if self._region is not None:
            self._credentials = await AioSession(profile=self._profile).get_credentials()
            if self._credentials is None:
                raise ConnectionError(f"{self.name!r}: no AWS credentials found for SigV4 signing")
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=self._limit),
            headers={"User-Agent": user_agent()},
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def select(self, url: str, statement: str) -> dict[str, Any]:
        """A query's SPARQL 1.1 JSON results document."""
        result: dict[str, Any] = orjson.loads(await self.post(url, {"query": statement}, SPARQL_RESULTS))
        return result

    async def post(self, url: str, form: dict[str, str], accept: str) -> bytes:
        return await self.post_body(url, urllib.parse.urlencode(form).encode(), accept)

    async def post_body(self, url: str, body: bytes, accept: str) -> bytes:
        """POST an urlencoded form body as it is (the bytes sent are the bytes signed)."""
        if self._session is None:
            raise ConnectionError(f"{self.name!r} is not started")
        headers = {"Content-Type": FORM, "Accept": accept}
        if self._credentials is not None:
            headers = await self._signed(url, body, headers)
        async with self._session.post(url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status >= 300:
                raise sparql_error(response.status, payload, response.headers.get("Content-Type", ""))
            return payload

    async def _signed(self, url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        credentials = await self._credentials.get_frozen_credentials()
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(credentials, "neptune-db", self._region).add_auth(request)
        return dict(request.headers.items())


class SparqlSink(RdfSink):
    kind = "sparql"

    def __init__(
        self,
        name: str,
        *,
        update_url: str,
        query_url: str | None = None,
        sigv4_region: str | None = None,
        profile: str | None = None,
        timeout_seconds: float = 60.0,
        concurrency: int = 4,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.name = name
        self.max_request_bytes = max_request_bytes
        self.update_url, self.query_url = update_url, query_url or update_url
        self.client = SparqlClient(
            f"sink {name}",
            sigv4_region=sigv4_region,
            profile=profile,
            timeout_seconds=timeout_seconds,
            max_connections=concurrency * 2,
        )

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        update = f"{statement} {sparql_data_block(row['quad'] for row in rows)}"
        body = urllib.parse.urlencode({"update": update}).encode()
        check_request_size(len(body), self.max_request_bytes, rows)
        await self.client.post_body(self.update_url, body, "*/*")
        return []

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return results_rows(await self.client.select(self.query_url, statement))

    def classify(self, exc: BaseException) -> ErrorClass:
        return classify_aws_error(exc)


def sparql_error(status: int, payload: bytes, content_type: str) -> ClientError:
    """An error answer as a botocore `ClientError` (code from Neptune's JSON, else from the HTTP status)."""
    code, message = "", payload[:500].decode("utf-8", "replace")
    if "json" in content_type:
        try:
            body = orjson.loads(payload)
            code = str(body.get("code", ""))
            message = str(body.get("detailedMessage") or body.get("message") or message)
        except (orjson.JSONDecodeError, AttributeError):
            pass
    if not code:
        code = {400: "MalformedQueryException", 429: "ThrottlingException"}.get(status, f"HTTP{status}")
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "SparqlUpdate"
    )


def results_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """SPARQL 1.1 JSON results as rows of terms in N-Triples form (as `daemon.sinks.oxigraph.solution_rows`)."""
    if "boolean" in document:
        return [{"ask": bool(document["boolean"])}]
    names = document.get("head", {}).get("vars", [])
    bindings = document.get("results", {}).get("bindings", [])
    return [{n: _term(b[n]) if n in b else None for n in names} for b in bindings]


def _term(binding: dict[str, Any]) -> str:
    return str(binding_term(binding))


def binding_term(binding: dict[str, Any]) -> Any:
    """One term of SPARQL 1.1 JSON results as a pyoxigraph term (`typed-literal`, the SPARQL XML-era spelling
    some servers still send, included)."""
    from pyoxigraph import BlankNode, Literal, NamedNode

    kind, value = binding.get("type"), binding.get("value", "")
    if kind == "uri":
        return NamedNode(value)
    if kind == "bnode":
        return BlankNode(value)
    if kind not in ("literal", "typed-literal"):
        raise ValueError(f"not an RDF term of SPARQL JSON results: {binding!r}")
    if "xml:lang" in binding:
        return Literal(value, language=binding["xml:lang"])
    if "datatype" in binding:
        return Literal(value, datatype=NamedNode(binding["datatype"]))
    return Literal(value)
