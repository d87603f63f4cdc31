"""Configuration: one typed declaration that validates, documents and prints the daemon's TOML config.

The pydantic models below are the only place a key is declared: its type, default, bounds and description.
`load_config` reads TOML, applies `GRAPH_REPLICATOR__SECTION__KEY` environment overrides, validates and
cross-checks, and fails with a `ConfigError` listing every problem as (dotted key, reason).
`format_resolved` prints the resolved config as TOML with secrets masked; `reference_markdown` renders the
key reference kept in docs/configuration.md (`python -m daemon.config docs/configuration.md` rewrites it).

Relative paths (`data_dir`, checkpoint `path`, `dead_letter_path`, a file source's `path`) are relative to the
current directory.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin
from urllib.parse import urlsplit

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

ENV_PREFIX = "GRAPH_REPLICATOR__"
# A Neptune stream source's largest page by default (`limit_max`): about the size of a window
# (`window_max_changes`), a few MB of PG_JSON, so that a page still fits the API's 10 MB answers and the
# records held between source and apply loop stay near what fixed pages of `limit` held.
DEFAULT_STREAM_LIMIT_MAX = 20_000
MASK = "***"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists (dotted key, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"config error: {key}: {reason}" for key, reason in self.problems)


# ---------------------------------------------------------------------------------------------- checks


def _check_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError('should be non-empty and use only letters, digits, "_", "." and "-"')
    return value


def _check_region(value: str) -> str:
    if not re.fullmatch(r"[a-z]{2,}(-[a-z0-9]+)+", value):
        raise ValueError('should be an AWS region name such as "us-east-1"')
    return value


def _check_graph_id(value: str) -> str:
    if not re.fullmatch(r"g-[a-z0-9]+", value):
        raise ValueError('should be a Neptune Analytics graph identifier such as "g-abc123"')
    return value


def _check_url(value: str, schemes: tuple[str, ...], example: str) -> str:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f'has an invalid port; expected a URL such as "{example}"') from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f'should be a {" or ".join(schemes)} URL such as "{example}"')
    return value


def _check_path(value: str) -> str:
    if "\x00" in value:  # the file system calls refuse it (ValueError) when the daemon starts
        raise ValueError("should be a file system path; it contains a NUL character")
    return value


def _check_http_url(value: str) -> str:
    return _check_url(value, ("http", "https"), "https://my-cluster.cluster-abc.us-east-1.neptune.amazonaws.com:8182")


def _check_redis_url(value: str) -> str:
    _check_url(value, ("redis", "rediss"), "redis://localhost:6379")
    path = urlsplit(value).path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f'has path "/{path}"; the only path a redis URL takes is a database number, e.g. "/0"')
    from redis.connection import parse_url  # the parser the client itself uses: what it refuses, `run` would

    try:
        parse_url(value)
    except ValueError as exc:
        raise ValueError(f"does not parse as a redis URL: {exc}") from None
    return value


def split_host_port(address: str) -> tuple[str, int]:
    """`"host:port"` (IPv6 hosts in brackets) -> (host, port); ValueError with a reason otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError('should be "host:port" such as "127.0.0.1:9464" (or "" to disable the HTTP server)')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError('an IPv6 host needs brackets, e.g. "[::1]:9464"')
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(f"port {port!r} should be a number from 0 to 65535")
    return host, int(port)


def mask_url(url: str) -> str:
    """The URL with its secrets masked: the password of `user:password@` and every query parameter that carries
    one (`?password=...`, which redis-py also reads): `redis://user:***@host:6379/0?password=***`."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{urllib.parse.quote(k)}={MASK if _SECRET_PARAM.search(k) else urllib.parse.quote(v)}" for k, v in pairs
        )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_SECRET_PARAM = re.compile(r"pass|secret|token|key", re.IGNORECASE)


Name = Annotated[str, AfterValidator(_check_name)]
Region = Annotated[str, AfterValidator(_check_region)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
RedisUrl = Annotated[str, AfterValidator(_check_redis_url)]
Profile = Annotated[str, annotated_types.MinLen(1)]
GraphId = Annotated[str, AfterValidator(_check_graph_id)]
PathText = Annotated[str, AfterValidator(_check_path)]


def _secret(kind: str = "value") -> dict[str, Any]:
    return {"secret": kind}


# ---------------------------------------------------------------------------------------------- schema


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class DaemonConfig(_Model):
    """`[daemon]`: process-wide settings."""

    http_address: str = Field(
        "127.0.0.1:9464",
        description='"host:port" of the HTTP server (/metrics, /healthz, /readyz, /status, the status page at / '
        'and the graph view at /graph); port 0 picks a free port; "" disables the server.',
    )
    graph_view: bool = Field(
        True,
        description="Serve the graph view (/graph, /graph/data): a read-only look at the replicated vertices and "
        "edges for whoever can reach `http_address`; false turns it off (the status page at / stays).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Least severe log level.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="Log rendering; auto = console on a terminal, JSON lines otherwise."
    )
    data_dir: PathText = Field(
        "./data",
        min_length=1,
        description="Directory for checkpoints, dead letters and the embedded FalkorDB engine; created if absent.",
    )
    drain_grace_seconds: float = Field(
        20.0,
        gt=0,
        description="On SIGTERM, how long in-flight batches may finish and checkpoint before exit; keep it "
        "below the platform's kill timeout (ECS stopTimeout, systemd TimeoutStopSec).",
    )
    dead_letter_path: PathText | None = Field(
        None,
        min_length=1,
        description="JSON-lines file of changes that could not be applied; default `<data_dir>/dead-letter.jsonl`.",
    )
    restart_backoff_max_seconds: float = Field(
        60.0,
        gt=0,
        description="Ceiling of the exponential backoff between restarts of a failed source or sink.",
    )
    idle_start_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="With `run --exit-when-idle`: give up (exit 3, naming the sink and why) when a source's sink "
        "has not become ready this long after start, instead of waiting for it forever.",
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("http_address")
    @classmethod
    def _http_address(cls, value: str) -> str:
        if value:
            split_host_port(value)
        return value

    @property
    def http_bind(self) -> tuple[str, int] | None:
        """(host, port) for the HTTP server, or None when it is disabled."""
        return split_host_port(self.http_address) if self.http_address else None

    @property
    def resolved_data_dir(self) -> Path:
        """`data_dir` as an absolute path."""
        return Path(self.data_dir).expanduser().absolute()


class SqliteCheckpointConfig(_Model):
    """`[checkpoint] kind = "sqlite"`: positions in a local SQLite file."""

    kind: Literal["sqlite"] = Field("sqlite", description="Checkpoint store kind.")
    path: PathText | None = Field(
        None, min_length=1, description="SQLite database file; default `<data_dir>/checkpoints.sqlite3`."
    )


class DynamoDBCheckpointConfig(_Model):
    """`[checkpoint] kind = "dynamodb"`: shared positions with leases, for several instances of the daemon
    (a dynamodb source's shards are shared among them; a neptune or file source runs active/standby: one
    instance applies, the others stand by).
    The timing rule is explained in docs/architecture.md, "Leases and self-fencing"."""

    kind: Literal["dynamodb"] = Field(description="Checkpoint store kind.")
    table: Name = Field(description="DynamoDB table holding positions and leases; created (on-demand) if absent.")
    region: Region = Field(description="AWS region of the table.")
    endpoint: HttpUrl | None = Field(None, description="endpoint_url for botocore (local stand-ins); default AWS.")
    lease_duration_seconds: float = Field(
        15.0,
        gt=0,
        description="How long a lease whose counter stopped moving stays its owner's: another instance takes it "
        "only after watching it unchanged this long on its own clock.",
    )
    renew_interval_seconds: float = Field(
        3.0, gt=0, description="How often an instance heartbeats (renews) the leases it holds."
    )
    take_interval_seconds: float = Field(
        5.0, gt=0, description="How often an instance looks for free, expired or stealable leases."
    )
    fencing_margin_seconds: float = Field(
        3.0,
        ge=0,
        description="An instance stops writing a partition this long before the earliest moment another "
        "instance may take it (covers clock-rate drift and the gap between the check and the write).",
    )
    max_steal: int = Field(
        1, ge=0, description="At most this many leases asked from the most loaded instance per take round."
    )
    steal_tolerance: int = Field(
        1,
        ge=0,
        description="Ask for a lease only when the most loaded instance holds more than this many leases above "
        "our count; 1 gives an even share plus or minus one without thrashing.",
    )

    @model_validator(mode="after")
    def _timing(self) -> DynamoDBCheckpointConfig:
        budget = self.lease_duration_seconds - self.fencing_margin_seconds
        if 2 * self.renew_interval_seconds > budget:
            raise ValueError(
                "renew_interval_seconds should be at most half of lease_duration_seconds - fencing_margin_seconds "
                f"({budget / 2:g}), so one late heartbeat does not stop the writes"
            )
        return self


class StartPosition(_Model):
    """A stream position, `{commit_num = N, op_num = M}`."""

    commit_num: int = Field(ge=1, description="Neptune stream commitNum.")
    op_num: int = Field(ge=1, description="Neptune stream opNum within the commit.")

    @property
    def position(self) -> tuple[int, int]:
        return (self.commit_num, self.op_num)


class _SourceBase(_Model):
    name: Name = Field(description="Unique source name: metric label, checkpoint key, env override selector.")
    sink: str | None = Field(
        None,
        description="Name of the `[sinks.NAME]` table this source replicates into (a graph sink). With `sinks` "
        "it may be left out: it is then `sinks[0]` when that is a graph sink, and none when every sink is an event "
        "sink. One of `sink` and `sinks` is required.",
    )
    sinks: list[str] = Field(
        default_factory=list,
        description="Every sink this source feeds, read from the stream once (docs/events.md): the graph sink first, "
        "then event sinks (kinesis, sqs, sns, eventbridge, webhook, s3), each with its own checkpoint (`SOURCE@SINK`). "
        'Event sinks only (no graph sink) is allowed: `sinks = ["archive"]`. Default `[sink]`.',
    )
    queue_size: int = Field(8, ge=1, description="Pages buffered between the source and its apply loop.")
    window_max_changes: int = Field(
        20000,
        ge=1,
        description="Most changes the scheduler splits into parallel lanes at once. A window always ends at the end "
        "of a source commit (so a property update written as ADD and REMOVE in either order is never split), and may "
        "grow past this for that, up to 10 times it; only a larger commit is split.",
    )
    edge_type_cache_size: int = Field(
        200000, ge=0, description="Edge id -> type entries kept to route edge-property records; 0 disables."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_or_many_sinks(cls, data: Any) -> Any:
        if isinstance(data, dict):
            sink, sinks = data.get("sink"), data.get("sinks")
            if sink is None and isinstance(sinks, list) and sinks:
                data = {**data, "sink": sinks[0]}
            elif sink is not None and sinks is None:
                data = {**data, "sinks": [sink]}
        return data

    @model_validator(mode="after")
    def _sinks_start_with_sink(self) -> _SourceBase:
        if not self.sinks:
            raise ValueError("name the sinks this source feeds: `sink` (its graph sink) or `sinks = [...]`")
        if self.sink is not None and self.sinks[0] != self.sink:
            raise ValueError(f"sinks should start with the graph sink {self.sink!r} (or leave `sink` out)")
        if len(set(self.sinks)) != len(self.sinks):
            raise ValueError("sinks should name each sink once")
        return self

    @property
    def event_sinks(self) -> list[str]:
        """The sinks this source feeds besides its graph sink (every sink of an event-only source)."""
        return [name for name in self.sinks if name != self.sink]


class _NeptuneStreamBase(_SourceBase):
    """What the property-graph and the SPARQL stream sources of Neptune share (`daemon.sources.stream_reader`)."""

    kind: str = Field(description="Source kind.")
    endpoint: HttpUrl = Field(
        description="Cluster endpoint URL, normally https://CLUSTER-ENDPOINT:8182 (botocore's endpoint_url)."
    )
    region: Region = Field(description="AWS region of the cluster.")
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")
    start: Literal["trim_horizon", "latest"] | StartPosition = Field(
        "trim_horizon",
        description='Where to begin when no checkpoint exists: "trim_horizon" (oldest record kept), "latest" '
        "(only changes made from now on) or {commit_num = N, op_num = M} (from that position, inclusive).",
    )
    limit: int = Field(
        1000,
        ge=1,
        le=100000,
        description="GetPropertygraphStream / GetSparqlStream page size (records) when caught up; pages grow "
        "from it while behind (`limit_max`).",
    )
    limit_max: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="Largest page while behind: after a full page, when the apply loop is waiting for records, "
        "the next page asks for twice as many, up to this (the API allows 100,000 records and answers at most "
        "10 MB); a page shorter than `limit`, or pages waiting for the apply loop, bring it back to `limit`. "
        f"Unset = the larger of `limit` and {DEFAULT_STREAM_LIMIT_MAX:,}; equal to `limit` = fixed pages. "
        ">= `limit`.",
    )
    poll_interval_min_seconds: float = Field(
        0.05, gt=0, description="Pause after an empty poll, doubled while the stream stays idle."
    )
    poll_interval_max_seconds: float = Field(5.0, gt=0, description="Idle backoff ceiling; >= the minimum.")
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one stream request.")

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("trim_horizon", "latest"):
            raise ValueError(f'should be "trim_horizon", "latest" or {{commit_num = N, op_num = M}} (got {value!r})')
        if isinstance(value, dict):
            try:
                return StartPosition.model_validate(value)
            except ValidationError as exc:
                reasons = [
                    f"{_dotted(e['loc'])}: {'unknown key' if e['type'] == 'extra_forbidden' else _reason(e)}"
                    for e in exc.errors()
                ]
                raise ValueError("; ".join(reasons) + "; expected {commit_num = N, op_num = M}") from None
        if not isinstance(value, str | StartPosition):
            raise ValueError('should be "trim_horizon", "latest" or {commit_num = N, op_num = M}')
        return value

    @field_validator("poll_interval_max_seconds")
    @classmethod
    def _poll_max(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("poll_interval_min_seconds")
        if low is not None and value < low:
            raise ValueError(f"should be >= poll_interval_min_seconds ({low})")
        return value

    @field_validator("limit_max")
    @classmethod
    def _limit_max(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("limit")
        if value is not None and low is not None and value < low:
            raise ValueError(f"should be >= limit ({low})")
        return value

    @property
    def page_limit_max(self) -> int:
        """The largest page the source asks for (`limit_max`, or its default)."""
        return self.limit_max if self.limit_max is not None else max(self.limit, DEFAULT_STREAM_LIMIT_MAX)


class NeptuneSourceConfig(_NeptuneStreamBase):
    """`[[sources]] kind = "neptune"`: a Neptune Database property-graph stream."""

    kind: Literal["neptune"] = Field(description="Source kind.")


class NeptuneSparqlSourceConfig(_NeptuneStreamBase):
    """`[[sources]] kind = "neptune-sparql"`: a Neptune Database RDF (SPARQL) stream of N-Quads (docs/rdf.md); its
    sink is an RDF sink (`oxigraph`, `sparql`)."""

    kind: Literal["neptune-sparql"] = Field(description="Source kind.")
    blank_node_prefix: str | None = Field(
        None,
        min_length=1,
        description="IRI prefix of the skolem IRIs that stand for the stream's blank nodes (`_:b7` becomes "
        "<PREFIX b7>); unset = https://graph-replicator.invalid/.well-known/genid/<source name>/.",
    )


class FileSourceConfig(_SourceBase):
    """`[[sources]] kind = "file"`: Neptune stream records read from a capture file or a directory of them."""

    kind: Literal["file"] = Field(description="Source kind.")
    path: PathText = Field(
        min_length=1,
        description="A capture file, or a directory whose files are read in name order: JSON lines of "
        'GetPropertygraphStream (or, with format = "nquads", GetSparqlStream) records or whole response pages, '
        "optionally gzipped.",
    )
    format: Literal["pg_json", "nquads"] = Field(
        "pg_json",
        description='What the records hold: "pg_json" (a property-graph stream, into a property-graph sink) or '
        '"nquads" (a SPARQL stream, into an RDF sink; docs/rdf.md).',
    )
    blank_node_prefix: str | None = Field(
        None,
        min_length=1,
        description='format = "nquads": IRI prefix of the skolem IRIs for blank nodes; unset = '
        "https://graph-replicator.invalid/.well-known/genid/<source name>/ (set it to the live source's to replay "
        "into the same replica).",
    )
    limit: int = Field(5000, ge=1, le=100000, description="Records per batch handed to the apply loop.")
    on_malformed: Literal["stop", "dead_letter"] = Field(
        "stop",
        description="A line that cannot be read (bad JSON, truncated gzip, a bad record, a position not after "
        'the previous one): "stop" stops the source with an error naming file and line; "dead_letter" writes '
        "it to the dead-letter file and reads on.",
    )
    follow: bool = Field(
        False,
        description="After the end of the input, keep watching for appended lines and new files (like tail -f).",
    )
    poll_interval_seconds: float = Field(1.0, gt=0, description="With `follow`, pause between looks for new input.")
    max_record_bytes: int = Field(
        16 << 20,
        ge=1024,
        description="The longest line read, in bytes; a longer line is malformed (`on_malformed` decides), and its "
        "dead letter keeps its size and first 256 bytes, so one huge line cannot exhaust memory.",
    )


class AttributeCondition(_Model):
    """One attribute's test in a mapping rule's `when`: every key given must hold."""

    equals: str | int | float | bool | None = Field(
        None, description="The attribute has this value (S, N or BOOL compared by value)."
    )
    begins_with: str | None = Field(None, min_length=1, description="The attribute is a string with this prefix.")
    exists: bool | None = Field(None, description="The attribute is present (true) or absent (false).")
    regex: str | None = Field(
        None,
        min_length=1,
        description="The attribute is a string that this regular expression (Python `re` syntax) matches as a "
        "whole; its named groups `(?P<NAME>...)` are captures that id templates use as `{ATTRIBUTE~NAME}`.",
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str | None) -> str | None:
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"regular expression {regex!r} does not compile: {exc}") from None
        return regex

    @property
    def guarantees_presence(self) -> bool:
        return self.equals is not None or self.begins_with is not None or self.exists is True or self.regex is not None

    @property
    def captures(self) -> list[str]:
        """The named groups of `regex`, in order (none without one)."""
        return list(re.compile(self.regex).groupindex) if self.regex is not None else []


# `{NAME}`, `{NAME[i]}`, `{NAME[i:]}` or `{NAME~GROUP}`; a NAME holds no brace, bracket or tilde.
_TEMPLATE_PART = re.compile(r"\{([^{}\[\]~]+)(?:\[(\d+)(:?)\]|~([^{}\[\]~]+))?\}")


class TemplateRef(NamedTuple):
    """One `{...}` of an id template: the attribute it reads and which piece of it.

    `index` alone: the i-th part when the value is split on the rule's separator; with `rest`, the parts from
    the i-th on, joined by the separator again (everything after a prefix); `group`: the named group of the
    attribute's `regex` test."""

    attr: str
    index: int | None = None
    rest: bool = False
    group: str | None = None


def template_refs(template: str) -> list[TemplateRef]:
    """The references of an id template, in order; ValueError on a malformed one."""
    rest = _TEMPLATE_PART.sub("", template)
    if "{" in rest or "}" in rest:
        raise ValueError(
            f"malformed template {template!r}: use {{ATTRIBUTE}}, {{ATTRIBUTE[i]}} (the i-th part when the value "
            "is split on the rule's separator), {ATTRIBUTE[i:]} (the parts from the i-th on) or "
            "{ATTRIBUTE~NAME} (a named group of the attribute's `regex` test), and no other braces"
        )
    found = [
        TemplateRef(m[1], int(m[2]) if m[2] is not None else None, bool(m[3]), m[4])
        for m in _TEMPLATE_PART.finditer(template)
    ]
    if not found:
        raise ValueError(f"template {template!r} names no attribute, so every item would get the same id")
    return found


class VertexTarget(_Model):
    """A rule's `vertex = {label, id}`: the item becomes one vertex."""

    label: str = Field(min_length=1, description="Vertex label.")
    id: str = Field(min_length=1, description='Vertex id template, e.g. "user:{PK[1]}".')


class EdgeTarget(_Model):
    """A rule's `edge = {type, id, from, to}`: the item becomes one edge (its endpoints are created bare if
    they do not exist yet)."""

    model_config = ConfigDict(populate_by_name=True)

    type: str = Field(min_length=1, description="Relationship type.")
    id: str = Field(min_length=1, description="Edge id template.")
    from_: str = Field(alias="from", min_length=1, description="Id template of the start vertex.")
    to: str = Field(min_length=1, description="Id template of the end vertex.")


class MappingRule(_Model):
    """`[[sources.rules]]`: which items become which vertex or edge. Rules are tried in order; the first whose
    `when` holds maps the item."""

    name: Name = Field(description="Rule name, used in errors, dead letters and metrics.")
    when: dict[str, AttributeCondition] = Field(
        default_factory=dict,
        description='Attribute tests that must all hold, e.g. {SK = {begins_with = "FOLLOWS#"}}; empty = every item.',
    )
    vertex: VertexTarget | None = Field(None, description="{label, id}: the item is a vertex.")
    edge: EdgeTarget | None = Field(None, description="{type, id, from, to}: the item is an edge.")
    properties: list[str] | Literal["*"] = Field(
        "*", description='Attributes that become properties; "*" = every attribute except the table key.'
    )
    exclude: list[str] = Field(default_factory=list, description="Attributes never made properties.")
    rename: dict[str, str] = Field(default_factory=dict, description="Attribute -> property name.")
    required: list[str] = Field(
        default_factory=list,
        description="Attributes an item matching this rule must have (templates may use them); an item "
        "without one is dead-lettered.",
    )
    separator: str = Field(
        "#", min_length=1, description="Separator of `{ATTRIBUTE[i]}` / `{ATTRIBUTE[i:]}` parts in templates."
    )

    @property
    def templates(self) -> dict[str, str]:
        if self.vertex is not None:
            return {"vertex.id": self.vertex.id}
        assert self.edge is not None
        return {"edge.id": self.edge.id, "edge.from": self.edge.from_, "edge.to": self.edge.to}


class DynamoDBSourceConfig(_SourceBase):
    """`[[sources]] kind = "dynamodb"`: a DynamoDB table's stream, items mapped to vertices and edges by
    `[[sources.rules]]`."""

    kind: Literal["dynamodb"] = Field(description="Source kind.")
    table: Name | None = Field(None, description="Table name; its LatestStreamArn is followed. Or `stream_arn`.")
    stream_arn: str | None = Field(None, min_length=1, description="Stream ARN, instead of `table`.")
    key: list[str] = Field(
        min_length=1,
        max_length=2,
        description='The table key attributes, e.g. ["PK", "SK"]; checked against the stream at start.',
    )
    region: Region = Field(description="AWS region of the table.")
    endpoint: HttpUrl | None = Field(None, description="DynamoDB endpoint_url for botocore; default AWS.")
    streams_endpoint: HttpUrl | None = Field(
        None, description="DynamoDB Streams endpoint_url; default `endpoint` when that is set, else AWS."
    )
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")
    start: Literal["trim_horizon", "latest"] = Field(
        "trim_horizon",
        description='Where shards without a checkpoint begin: "trim_horizon" (oldest record kept, 24 h) or '
        '"latest" (shards open at the first start begin at their newest record; later shards from their start).',
    )
    rules: list[MappingRule] = Field(min_length=1, description="Item -> vertex / edge rules, tried in order.")
    vertex_removes: Literal["keep_edges", "detach"] = Field(
        "keep_edges",
        description='A REMOVE of a vertex item: "keep_edges" strips the vertex and deletes it once no edge '
        'item holds it (the replica then depends only on the table\'s items); "detach" deletes it with its edges.',
    )
    ttl_deletes: Literal["delete", "mark"] = Field(
        "delete",
        description='Items deleted by DynamoDB TTL: "delete" like any REMOVE, or "mark" (keep the element and '
        "set `ttl_mark_property` to the deletion time).",
    )
    ttl_mark_property: str = Field("expired_at", min_length=1, description="Property set on TTL-expired elements.")
    limit: int = Field(1000, ge=1, le=1000, description="GetRecords page size (records).")
    poll_interval_seconds: float = Field(1.0, gt=0, description="Pause of a shard reader after a page with no records.")
    min_get_records_interval_seconds: float = Field(
        0.25, ge=0, description="Least time between two GetRecords calls on one shard (service limit ~5/s)."
    )
    discovery_interval_seconds: float = Field(
        30.0, gt=0, description="How often DescribeStream looks for new shards (also after a shard ends)."
    )
    iterator_refresh_seconds: float = Field(
        600.0,
        gt=0,
        lt=900,
        description="A shard iterator older than this (e.g. after back-pressure) is renewed before its 15-minute "
        "expiry.",
    )
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one DynamoDB request.")

    @field_validator("rules")
    @classmethod
    def _rules(cls, rules: list[MappingRule], info: ValidationInfo) -> list[MappingRule]:
        keys = set(info.data.get("key") or [])
        problems: list[str] = []
        names: set[str] = set()
        for i, rule in enumerate(rules):
            where = f"rules[{i}] (name {rule.name!r})"
            if rule.name in names:
                problems.append(f"{where}: duplicate rule name")
            names.add(rule.name)
            if (rule.vertex is None) == (rule.edge is None):
                problems.append(
                    f"{where}: give exactly one of `vertex = {{label, id}}` or `edge = {{type, id, from, to}}`"
                )
                continue
            for attr, cond in rule.when.items():
                if cond.equals is None and cond.begins_with is None and cond.exists is None and cond.regex is None:
                    problems.append(f"{where}.when.{attr}: give equals, begins_with or exists (or regex)")
            known = keys | set(rule.required) | {a for a, c in rule.when.items() if c.guarantees_presence}
            for field_name, template in rule.templates.items():
                try:
                    refs = template_refs(template)
                except ValueError as exc:
                    problems.append(f"{where}.{field_name}: {exc}")
                    continue
                for ref in refs:
                    if ref.group is not None:
                        cond = rule.when.get(ref.attr)
                        captures = cond.captures if cond is not None else []
                        if ref.group not in captures:
                            has = (
                                f"its `regex` test defines {', '.join(map(repr, captures))}"
                                if captures
                                else "it has no `regex` test with named groups"
                                if cond is not None and cond.regex is not None
                                else "`when` gives it no `regex` test"
                            )
                            problems.append(
                                f"{where}.{field_name}: template names capture {ref.group!r} of attribute "
                                f"{ref.attr!r}, which is not a capture of this rule: {has}"
                            )
                    elif ref.attr not in known:
                        problems.append(
                            f"{where}.{field_name}: template names attribute {ref.attr!r}, which this rule does not "
                            f"guarantee; it is not a key attribute ({', '.join(sorted(keys)) or 'none'}), nor "
                            "tested present by `when`, nor listed in `required`"
                        )
        if problems:
            raise ValueError("; ".join(problems))
        return rules

    @model_validator(mode="after")
    def _table_or_stream(self) -> DynamoDBSourceConfig:
        if (self.table is None) == (self.stream_arn is None):
            raise ValueError("give exactly one of `table` (its latest stream is followed) or `stream_arn`")
        return self


def _retry_max_not_below_initial(cls: type, value: float, info: ValidationInfo) -> float:
    """`retry_max_seconds` of a sink: not below its `retry_initial_seconds`."""
    low = info.data.get("retry_initial_seconds")
    if low is not None and value < low:
        raise ValueError(f"should be >= retry_initial_seconds ({low})")
    return value


class _SinkBase(_Model):
    batch_size: int = Field(500, ge=1, le=100000, description="Most changes in one statement batch.")
    concurrency: int = Field(4, ge=1, le=64, description="Batches in flight at once (parallel apply lanes).")
    retry_initial_seconds: float = Field(0.1, gt=0, description="First retry delay (full jitter, doubling).")
    retry_max_seconds: float = Field(10.0, gt=0, description="Retry delay ceiling; >= retry_initial_seconds.")
    attempts_before_split: int = Field(
        4,
        ge=1,
        description="Retryable failures of one batch before it is split in halves to find a poison change.",
    )
    request_timeout_seconds: float = Field(60.0, gt=0, description="Timeout of one batch request.")

    _retry_max = field_validator("retry_max_seconds")(_retry_max_not_below_initial)


class FalkorDBSinkConfig(_SinkBase):
    """`[sinks.NAME] kind = "falkordb"`: an external FalkorDB, or the embedded engine when `url` is unset."""

    kind: Literal["falkordb"] = Field(description="Sink kind.")
    url: RedisUrl | None = Field(
        None,
        repr=False,
        json_schema_extra=_secret("url"),
        description="redis://[user:password@]host:port or rediss://...; unset = start the embedded engine "
        "under `<data_dir>`. The password part is masked when printed.",
    )
    password: SecretStr | None = Field(None, json_schema_extra=_secret(), description="Password (secret).")
    graph: str = Field("graph", min_length=1, description="Graph (key) name.")
    id_property: str = Field("~id", min_length=1, description="Property holding the source id, indexed.")
    base_label: str = Field(
        "Replicated", min_length=1, description="Label on every replicated vertex, indexed on id_property."
    )
    engine_fsync: Literal["always", "everysec"] = Field(
        "always", description="appendfsync of the embedded engine (ignored with `url`)."
    )

    @property
    def embedded(self) -> bool:
        return self.url is None


# "HTTP Request Payload Maximum (150MB)" of Neptune's limits page: larger requests get 400 BadRequestException
# (the test stand refuses them the same way); batches stay far below by default.
NEPTUNE_REQUEST_MAX_BYTES = 150_000_000
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # the HTTP sinks' `max_request_bytes`


class _HttpSinkBase(_SinkBase):
    max_request_bytes: int = Field(
        DEFAULT_MAX_REQUEST_BYTES,
        ge=64 * 1024,
        le=NEPTUNE_REQUEST_MAX_BYTES,
        description="Largest batch request body: a batch whose rows would make a larger one is sent in halves "
        "(a single row goes alone whatever its size). Neptune refuses requests over 150 MB.",
    )


class NeptuneSinkConfig(_HttpSinkBase):
    """`[sinks.NAME] kind = "neptune"`: a Neptune Database cluster (openCypher)."""

    kind: Literal["neptune"] = Field(description="Sink kind.")
    endpoint: HttpUrl = Field(description="Writer endpoint URL, normally https://CLUSTER-ENDPOINT:8182.")
    region: Region = Field(description="AWS region of the cluster.")
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")


class NeptuneAnalyticsSinkConfig(_HttpSinkBase):
    """`[sinks.NAME] kind = "neptune-analytics"`: a Neptune Analytics graph (openCypher)."""

    kind: Literal["neptune-analytics"] = Field(description="Sink kind.")
    graph_id: GraphId = Field(description="Graph identifier such as g-abc123.")
    region: Region = Field(description="AWS region of the graph.")
    endpoint: HttpUrl | None = Field(None, description="endpoint_url for botocore; default the public endpoint.")
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")


class RouteConfig(_Model):
    """`route = {...}` of an event sink: which changes it takes (docs/events.md). Every filter that is set must
    match; an empty route takes everything."""

    types: list[Annotated[str, annotated_types.MinLen(1)]] = Field(
        default_factory=list,
        description='Globs on the event type, e.g. ["graph.edge.added"] or ["graph.vertex.*"].',
    )
    labels: list[str] = Field(
        default_factory=list,
        description="Vertex labels / edge types; property changes carry none and do not match a label filter.",
    )
    properties: list[str] = Field(
        default_factory=list, description="Property keys; only property changes of these keys match."
    )
    event_names: list[Literal["INSERT", "MODIFY", "REMOVE"]] = Field(
        default_factory=list,
        description='DynamoDB sources: the stream record\'s eventName, e.g. ["REMOVE"]; events of other sources '
        "have none and do not match.",
    )
    ttl: bool | None = Field(
        None,
        description="DynamoDB sources: true = only items deleted by TTL expiry (`userIdentity` of the DynamoDB "
        "service), false = everything but them; unset = both.",
    )


class _EventSinkBase(_Model):
    route: RouteConfig = Field(default_factory=RouteConfig, description="Which changes this sink takes.")
    buffer_batches: int = Field(
        64,
        ge=1,
        description="Source batches buffered for this sink; when full the source waits for it (and so do the "
        "source's other sinks).",
    )
    window_max_events: int = Field(
        1000,
        ge=1,
        description="Most changes turned into events and delivered before the sink's checkpoint is written (what a "
        "crash or a drain replays at most).",
    )
    retry_initial_seconds: float = Field(0.1, gt=0, description="First retry delay (full jitter, doubling).")
    retry_max_seconds: float = Field(10.0, gt=0, description="Retry delay ceiling; >= retry_initial_seconds.")
    attempts_before_unhealthy: int = Field(
        4, ge=1, description="Failed calls in a row before the sink is reported not ready."
    )
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one call.")

    _retry_max = field_validator("retry_max_seconds")(_retry_max_not_below_initial)


class KinesisSinkConfig(_EventSinkBase):
    """`[sinks.NAME] kind = "kinesis"`: CloudEvents into a Kinesis data stream (`PutRecords`, partition key =
    element id)."""

    kind: Literal["kinesis"] = Field(description="Sink kind.")
    stream: Annotated[str, annotated_types.MinLen(1)] = Field(description="Stream name or ARN.")
    region: Region = Field(description="AWS region of the stream.")
    endpoint: HttpUrl | None = Field(None, description="endpoint_url for botocore; default the public endpoint.")
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")


class SQSSinkConfig(_EventSinkBase):
    """`[sinks.NAME] kind = "sqs"`: CloudEvents into an SQS queue (`SendMessageBatch`; a FIFO queue groups by
    element id and de-duplicates by event id)."""

    kind: Literal["sqs"] = Field(description="Sink kind.")
    queue_url: HttpUrl = Field(description="Queue URL; a name ending in .fifo is a FIFO queue (per-element order).")
    region: Region = Field(description="AWS region of the queue.")
    endpoint: HttpUrl | None = Field(None, description="endpoint_url for botocore; default the public endpoint.")
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")


class SNSSinkConfig(_EventSinkBase):
    """`[sinks.NAME] kind = "sns"`: CloudEvents published to an SNS topic (`PublishBatch`; a FIFO topic groups by
    element id and de-duplicates by event id)."""

    kind: Literal["sns"] = Field(description="Sink kind.")
    topic_arn: Annotated[str, annotated_types.MinLen(1)] = Field(
        description="Topic ARN; a name ending in .fifo is a FIFO topic (per-element order)."
    )
    region: Region = Field(description="AWS region of the topic.")
    endpoint: HttpUrl | None = Field(None, description="endpoint_url for botocore; default the public endpoint.")
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")


class EventBridgeSinkConfig(_EventSinkBase):
    """`[sinks.NAME] kind = "eventbridge"`: CloudEvents put on an EventBridge bus (`PutEvents`; detail-type = the
    event type). EventBridge keeps no order between events."""

    kind: Literal["eventbridge"] = Field(description="Sink kind.")
    event_bus: Annotated[str, annotated_types.MinLen(1)] = Field("default", description="Event bus name or ARN.")
    region: Region = Field(description="AWS region of the bus.")
    endpoint: HttpUrl | None = Field(None, description="endpoint_url for botocore; default the public endpoint.")
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")


def _check_text_template(value: str) -> str:
    from daemon.events.sinks import render

    sample = {"type": "t", "subject": "s", "id": "i", "source": "s", "time": "", "data": {"id": "s"}}
    try:
        render(value, sample)
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a usable template ({exc}); fields are written {{type}}, {{data_label}}, ...") from None
    return value


class WebhookSinkConfig(_EventSinkBase):
    """`[sinks.NAME] kind = "webhook"`: CloudEvents POSTed as a JSON array, signed with HMAC-SHA256."""

    kind: Literal["webhook"] = Field(description="Sink kind.")
    url: HttpUrl = Field(repr=False, json_schema_extra=_secret("url"), description="URL the events are POSTed to.")
    secret: SecretStr | None = Field(
        None,
        json_schema_extra=_secret(),
        description="HMAC-SHA256 key of the `X-Graph-Replicator-Signature` header (secret); or `secret_env`.",
    )
    secret_env: str | None = Field(
        None, min_length=1, description="Environment variable holding the secret (read at start)."
    )
    events_per_request: int = Field(100, ge=1, le=10000, description="Most events in one request.")
    text_template: Annotated[str, AfterValidator(_check_text_template)] | None = Field(
        None,
        description='Post `{"text": ...}` (a Slack-style incoming webhook) instead of the CloudEvents, one line per '
        "event from this template: `{type}`, `{subject}`, `{time}`, `{id}`, `{data_label}`, `{data_type}`, "
        "`{data_from}`, `{data_to}`, `{data_key}`, `{data_value}`.",
    )
    max_request_bytes: int = Field(1024 * 1024, ge=1024, description="Largest request body; a larger event is "
                                   "dead-lettered with its size.")  # fmt: skip

    def secret_value(self, environ: Mapping[str, str] | None = None) -> str | None:
        if self.secret is not None:
            return self.secret.get_secret_value()
        if self.secret_env is not None:
            value = (os.environ if environ is None else environ).get(self.secret_env)
            if not value:
                raise ValueError(f"webhook secret: environment variable {self.secret_env} is not set")
            return value
        return None


def _check_bucket(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise ValueError("not an S3 bucket name (3 to 63 of a-z, 0-9, '.', '-')")
    return value


def _check_key_prefix(value: str) -> str:
    if value.startswith("/") or "//" in value:
        raise ValueError("an S3 key prefix does not start with '/' nor hold '//'")
    if len(value.encode()) > 512:
        raise ValueError("at most 512 bytes (S3 keys are at most 1024, and the archive adds up to about 300)")
    return value


class S3SinkConfig(_EventSinkBase):
    """`[sinks.NAME] kind = "s3"`: an archive of CloudEvents, one gzip newline-delimited JSON object per window,
    keyed by commit date and position range; windows are cut where a replay cuts them too (docs/events.md)."""

    kind: Literal["s3"] = Field(description="Sink kind.")
    bucket: Annotated[str, AfterValidator(_check_bucket)] = Field(description="Bucket name.")
    prefix: Annotated[str, AfterValidator(_check_key_prefix)] = Field(
        "graph-replicator/events/",
        description="Key prefix; objects are `<prefix>source=NAME/date=YYYY-MM-DD/[partition=SHARD/]FIRST-LAST"
        ".ndjson.gz` (a `/` is not added: end it with one for a folder).",
    )
    region: Region = Field(description="AWS region of the bucket.")
    endpoint: HttpUrl | None = Field(
        None, description="endpoint_url for botocore (path-style addressing then); default the public endpoint."
    )
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")
    object_max_events: int = Field(
        100000, ge=1, description="Most events in one object; a window is cut before the event that would pass it."
    )
    object_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Most uncompressed bytes in one object (built in memory, so at most 1 GiB); a window is cut "
        "before the event that would pass it, and one event larger than this is dead-lettered.",
    )
    flush_seconds: float = Field(
        60.0,
        ge=0,
        description="A window open this long is written as it is, without waiting to fill (`run --exit-when-idle` "
        "writes it as soon as the source is caught up). Bounds how far a sparse route's checkpoint lags.",
    )
    compression_level: int = Field(6, ge=1, le=9, description="gzip level.")


GRAPH_SINK_KINDS = frozenset({"falkordb", "neptune", "neptune-analytics"})
EVENT_SINK_KINDS = frozenset({"kinesis", "sqs", "sns", "eventbridge", "webhook", "s3"})


class OxigraphSinkConfig(_SinkBase):
    """`[sinks.NAME] kind = "oxigraph"`: an embedded pyoxigraph RDF store under `<data_dir>/oxigraph/NAME` (the RDF
    default, like the embedded FalkorDB for property graphs); for `neptune-sparql` sources (docs/rdf.md)."""

    kind: Literal["oxigraph"] = Field(description="Sink kind.")
    path: PathText | None = Field(
        None, min_length=1, description="Store directory; unset = `<data_dir>/oxigraph/NAME`."
    )

    @property
    def embedded(self) -> bool:
        return True


class SparqlSinkConfig(_HttpSinkBase):
    """`[sinks.NAME] kind = "sparql"`: any SPARQL 1.1 Update endpoint (Neptune RDF, Fuseki, GraphDB, Oxigraph
    server) over the SPARQL 1.1 protocol; for `neptune-sparql` sources (docs/rdf.md)."""

    kind: Literal["sparql"] = Field(description="Sink kind.")
    update_url: HttpUrl = Field(
        description="Update endpoint URL, e.g. https://CLUSTER-ENDPOINT:8182/sparql (Neptune), "
        "http://HOST:3030/DATASET/update (Fuseki)."
    )
    query_url: HttpUrl | None = Field(None, description="Query endpoint URL; unset = `update_url`.")
    auth: Literal["none", "sigv4"] = Field(
        "none", description='"sigv4": sign every request for Neptune IAM auth (service neptune-db); "none": no auth.'
    )
    region: Region | None = Field(None, description='AWS region of the cluster (required with auth = "sigv4").')
    profile: Profile | None = Field(None, description="AWS profile name; default credential chain when unset.")
    bulk_loader: bool = Field(
        False,
        description="The endpoint is a Neptune cluster: `graph-replicator bootstrap` copies through its bulk loader "
        "(N-Quads files in S3, `[bootstrap]` s3_bucket and iam_role_arn) at the scheme, host and port of "
        "`update_url`, instead of batched INSERT DATA. Needs `region`.",
    )

    @model_validator(mode="after")
    def _region_for_sigv4(self) -> SparqlSinkConfig:
        if self.auth == "sigv4" and self.region is None:
            raise ValueError('region is required with auth = "sigv4"')
        if self.bulk_loader and self.region is None:
            raise ValueError("region is required with bulk_loader = true (the loader's neptunedata client)")
        return self

    @property
    def loader_endpoint(self) -> str:
        """The cluster endpoint the bulk loader answers on (`update_url` without its path)."""
        parts = urlsplit(str(self.update_url))
        return f"{parts.scheme}://{parts.netloc}"


RDF_SOURCE_KINDS = frozenset({"neptune-sparql"})
RDF_SINK_KINDS = frozenset({"oxigraph", "sparql"})


def _check_role_arn(value: str) -> str:
    if not re.fullmatch(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/\S+", value):
        raise ValueError('should be an IAM role ARN such as "arn:aws:iam::123456789012:role/NeptuneLoadFromS3"')
    return value


class BootstrapConfig(_Model):
    """`[bootstrap]`: `graph-replicator bootstrap` (first full copy, see docs/bootstrap.md)."""

    s3_bucket: str | None = Field(
        None,
        min_length=3,
        description="Bucket for the files the Neptune bulk loader reads: CSV (neptune sinks), N-Quads (sparql sinks "
        "with bulk_loader).",
    )
    s3_prefix: str = Field(
        "graph-replicator/bootstrap", description="Key prefix; each run writes under `<prefix>/<source>/<run id>/`."
    )
    s3_region: Region | None = Field(None, description="Region of the bucket; default the sink's region.")
    s3_endpoint: HttpUrl | None = Field(None, description="endpoint_url for S3 (local stand-ins); default AWS.")
    iam_role_arn: Annotated[str, AfterValidator(_check_role_arn)] | None = Field(
        None, description="Role the Neptune cluster assumes to read the bucket (attached to the cluster)."
    )
    loader_parallelism: Literal["LOW", "MEDIUM", "HIGH", "OVERSUBSCRIBE"] = Field(
        "HIGH", description="Loader `parallelism`; lowered one step after each deadlock."
    )
    loader_fail_on_error: bool = Field(True, description="Loader `failOnError`: stop at the first bad record.")
    loader_poll_seconds: float = Field(5.0, gt=0, description="Pause between loader status polls.")
    loader_retries: int = Field(
        3, ge=0, description="Loader jobs resumed after a deadlock, an S3 read error or write conflicts."
    )
    file_max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="CSV (or N-Quads) text per file before a new file is started (gzipped on upload); buffered "
        "rows take about ten times this in memory.",
    )
    multipart_part_bytes: int = Field(
        16 * 1024 * 1024, ge=5 * 1024 * 1024, description="Files larger than this are uploaded in parts this size."
    )
    keep_files: bool = Field(True, description="Keep the CSV files in S3 after a successful load.")
    read_page_size: int = Field(
        5000,
        ge=1,
        le=100000,
        description="Vertices or edges per snapshot query; quads per SPARQL page (RDF sources); items per DynamoDB "
        "Scan page.",
    )
    scan_segments: int = Field(
        4, ge=1, le=1000, description="DynamoDB sources: parallel Scan segments (`TotalSegments`)."
    )
    scan_capacity_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="DynamoDB sources: share of the table's provisioned (or on-demand maximum) read capacity the "
        "scan may use per second.",
    )
    scan_read_units_per_second: float | None = Field(
        None,
        gt=0,
        description="DynamoDB sources: read capacity units per second for the scan, instead of the share; an "
        "on-demand table without a maximum is scanned unthrottled unless this is set.",
    )
    scan_consistent_read: bool = Field(
        True,
        description="DynamoDB sources: strongly consistent Scan (twice the read units; every write acknowledged "
        "before the bootstrap began is in the copy).",
    )
    write_batch_size: int = Field(
        5000,
        ge=1,
        le=100000,
        description="Rows per openCypher statement (quads per INSERT DATA for RDF) when writing without the loader.",
    )


CHECKPOINT_KINDS: dict[str, type[_Model]] = {
    "sqlite": SqliteCheckpointConfig,
    "dynamodb": DynamoDBCheckpointConfig,
}
SOURCE_KINDS: dict[str, type[_Model]] = {
    "neptune": NeptuneSourceConfig,
    "neptune-sparql": NeptuneSparqlSourceConfig,
    "file": FileSourceConfig,
    "dynamodb": DynamoDBSourceConfig,
}
SINK_KINDS: dict[str, type[_Model]] = {
    "falkordb": FalkorDBSinkConfig,
    "neptune": NeptuneSinkConfig,
    "neptune-analytics": NeptuneAnalyticsSinkConfig,
    "kinesis": KinesisSinkConfig,
    "sqs": SQSSinkConfig,
    "sns": SNSSinkConfig,
    "eventbridge": EventBridgeSinkConfig,
    "webhook": WebhookSinkConfig,
    "s3": S3SinkConfig,
    "oxigraph": OxigraphSinkConfig,
    "sparql": SparqlSinkConfig,
}


def _kind_of(default: str | None) -> Callable[[Any], str | None]:
    def get(value: Any) -> str | None:
        kind = value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", None)
        return kind if isinstance(kind, str) else None

    return get


CheckpointConfig = Annotated[
    Annotated[SqliteCheckpointConfig, Tag("sqlite")] | Annotated[DynamoDBCheckpointConfig, Tag("dynamodb")],
    Discriminator(_kind_of("sqlite")),
]
SourceConfig = Annotated[
    Annotated[NeptuneSourceConfig, Tag("neptune")]
    | Annotated[NeptuneSparqlSourceConfig, Tag("neptune-sparql")]
    | Annotated[FileSourceConfig, Tag("file")]
    | Annotated[DynamoDBSourceConfig, Tag("dynamodb")],
    Discriminator(_kind_of(None)),
]
SinkConfig = Annotated[
    Annotated[FalkorDBSinkConfig, Tag("falkordb")]
    | Annotated[NeptuneSinkConfig, Tag("neptune")]
    | Annotated[NeptuneAnalyticsSinkConfig, Tag("neptune-analytics")]
    | Annotated[KinesisSinkConfig, Tag("kinesis")]
    | Annotated[SQSSinkConfig, Tag("sqs")]
    | Annotated[SNSSinkConfig, Tag("sns")]
    | Annotated[EventBridgeSinkConfig, Tag("eventbridge")]
    | Annotated[WebhookSinkConfig, Tag("webhook")]
    | Annotated[S3SinkConfig, Tag("s3")]
    | Annotated[OxigraphSinkConfig, Tag("oxigraph")]
    | Annotated[SparqlSinkConfig, Tag("sparql")],
    Discriminator(_kind_of(None)),
]


class Config(_Model):
    """The whole file. Build it with `load_config` / `parse_config`: they also run the cross-checks."""

    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="Process-wide settings.")
    checkpoint: CheckpointConfig = Field(default_factory=SqliteCheckpointConfig, description="Checkpoint store.")
    sources: list[SourceConfig] = Field(default_factory=list, description="Change streams to replicate.")
    sinks: dict[str, SinkConfig] = Field(default_factory=dict, description="Targets, by name.")
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig, description="First full copy.")

    @property
    def checkpoint_path(self) -> Path | None:
        """The SQLite checkpoint file (absolute), or None for a non-SQLite store."""
        if not isinstance(self.checkpoint, SqliteCheckpointConfig):
            return None
        if self.checkpoint.path is None:
            return self.daemon.resolved_data_dir / "checkpoints.sqlite3"
        return Path(self.checkpoint.path).expanduser().absolute()

    @property
    def dead_letter_path(self) -> Path:
        """The dead-letter JSON-lines file (absolute)."""
        if self.daemon.dead_letter_path is None:
            return self.daemon.resolved_data_dir / "dead-letter.jsonl"
        return Path(self.daemon.dead_letter_path).expanduser().absolute()

    def source(self, name: str) -> NeptuneSourceConfig | FileSourceConfig | DynamoDBSourceConfig:
        """The source called `name` (KeyError if none)."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(f"no source named {name!r}")

    def sink_for(self, source: NeptuneSourceConfig | FileSourceConfig | DynamoDBSourceConfig | str) -> SinkConfig:
        """The graph sink config a source (or source name) replicates into (ValueError for an event-only source)."""
        src = self.source(source) if isinstance(source, str) else source
        if src.sink is None:
            raise ValueError(f"source {src.name!r} feeds event sinks only: it has no graph sink")
        return self.sinks[src.sink]

    @model_validator(mode="after")
    def _event_only_sources(self) -> Config:
        """A source whose first sink is an event sink feeds event sinks only: it has no graph sink (`sink` None;
        the cross-checks refuse a `sink = "..."` that names an event sink)."""
        for i, source in enumerate(self.sources):
            first = self.sinks.get(source.sink) if source.sink is not None else None
            if first is not None and first.kind in EVENT_SINK_KINDS:
                self.sources[i] = source.model_copy(update={"sink": None})
        return self


# --------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from `environ` (default os.environ), validate and cross-check a TOML config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([(str(path), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([(str(path), f"cannot read: {exc}")]) from None
    return parse_config(text, environ, origin=str(path))


def parse_config(text: str, environ: Mapping[str, str] | None = None, origin: str = "<config>") -> Config:
    """`load_config` for TOML text; `origin` names it in syntax errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(origin, f"TOML syntax error: {exc}")]) from None
    overrides, problems = _apply_env(data, os.environ if environ is None else environ)
    if problems:
        raise ConfigError(problems)
    config, errors = _validate(data, overrides)
    problems = [(_user_key(_error_loc(e), data), _reason(e) + _origin_note(_error_loc(e), overrides)) for e in errors]
    problems += _cross_check(data)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    assert config is not None
    return config


def parse_env_value(raw: str) -> Any:
    """An override value: the TOML value it spells (`5`, `true`, `"x"`, `{a = 1}`), else the text itself."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    return parsed["v"] if parsed.keys() == {"v"} else raw


@dataclass
class _Override:
    var: str
    raw: str
    node: dict[str, Any]
    key: str


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> tuple[dict[tuple, _Override], list]:
    """Apply GRAPH_REPLICATOR__* variables to `data` in place; returns overrides by normalized key path."""
    overrides: dict[tuple, _Override] = {}
    problems: list[tuple[str, str]] = []
    for var in sorted(environ):
        if not var.upper().startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        try:
            path = _resolve_env_path(data, parts)
            node: Any = data
            for depth, part in enumerate(path[:-1], 1):
                node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
                if not isinstance(node, dict) and path[:depth] != ("sources",):
                    raise ValueError(f"{_user_key(path[:depth], data)} is not a table")
        except ValueError as exc:
            problems.append((var, str(exc)))
            continue
        try:
            environ[var].encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, as Python decodes them (surrogateescape)
            problems.append((var, "the value is not valid UTF-8 text"))
            continue
        node[path[-1]] = parse_env_value(environ[var])
        overrides[path] = _Override(var, environ[var], node, path[-1])
    return overrides, problems


def _resolve_env_path(data: dict[str, Any], parts: list[str]) -> tuple:
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"should be {ENV_PREFIX}SECTION__KEY (parts separated by double underscores)")
    section, selector, rest = parts[0], parts[1], parts[2:]
    if section not in ("sources", "sinks"):
        return tuple(parts)
    if not rest:
        raise ValueError(f"should be {ENV_PREFIX}{section.upper()}__NAME__KEY")
    if section == "sinks":
        sinks = data.get("sinks")
        names = [n for n in sinks if n.lower() == selector] if isinstance(sinks, dict) else []
        if len(names) != 1:
            defined = ", ".join(f'"{n}"' for n in sinks) if isinstance(sinks, dict) and sinks else "none"
            raise ValueError(f'no sink named "{selector}" in [sinks] (defined sinks: {defined})')
        return ("sinks", names[0], *rest)
    sources = data.get("sources")
    sources = sources if isinstance(sources, list) else []
    if re.fullmatch(r"[0-9]+", selector):
        if int(selector) >= len(sources):
            raise ValueError(f"no source at index {selector} (the config has {len(sources)})")
        return ("sources", int(selector), *rest)
    found = [i for i, s in enumerate(sources) if isinstance(s, dict) and str(s.get("name", "")).lower() == selector]
    if len(found) != 1:
        known = ", ".join(f'"{s.get("name")}"' for s in sources if isinstance(s, dict)) or "none"
        raise ValueError(f'no source named "{selector}" (sources: {known})')
    return ("sources", found[0], *rest)


def _validate(data: dict[str, Any], overrides: dict[tuple, _Override]) -> tuple[Config | None, list]:
    """Validate; an override that parsed as a non-string where a string is expected falls back to its text."""
    while True:
        try:
            return Config.model_validate(data), []
        except ValidationError as exc:
            errors = exc.errors()
        retry = False
        for error in errors:
            override = overrides.get(_strip_tags(error["loc"]))
            if override and error["type"] == "string_type" and override.node[override.key] != override.raw:
                override.node[override.key] = override.raw
                retry = True
        if not retry:
            return None, errors


def _cross_check(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Checks across sections, on the raw data so they are reported with the schema problems."""
    problems: list[tuple[str, str]] = []
    sources = data.get("sources")
    sinks = data.get("sinks") if isinstance(data.get("sinks"), dict) else {}
    if not sources:
        problems.append(("sources", "at least one [[sources]] entry is required"))
    seen: dict[str, int] = {}
    for i, source in enumerate(sources if isinstance(sources, list) else []):
        if not isinstance(source, dict):
            continue
        name, sink = source.get("name"), source.get("sink")
        if isinstance(name, str):
            if name.lower() in seen:
                where = f"sources[{seen[name.lower()]}]"
                problems.append((_user_key(("sources", i, "name"), data), f"duplicate source name (also {where})"))
            seen.setdefault(name.lower(), i)
        if isinstance(sink, str) and sink not in sinks:
            defined = ", ".join(f'"{n}"' for n in sinks) or "none"
            problems.append(
                (
                    _user_key(("sources", i, "sink"), data),
                    f'no sink named "{sink}" in [sinks] (defined sinks: {defined})',
                )
            )
        problems.extend(_check_fan_out(data, i, source, sinks))
        problems.extend(_check_dynamodb_routes(data, i, source, sinks))
        problems.extend(_check_rdf_pairing(data, i, source, sinks))
    listed = sources if isinstance(sources, list) else []
    for name, cfg in sinks.items():
        fed = any(isinstance(s, dict) and isinstance(s.get("sinks"), list) and name in s["sinks"] for s in listed)
        if isinstance(cfg, dict) and isinstance(cfg.get("kind"), str) and cfg["kind"] in EVENT_SINK_KINDS and not fed:
            problems.append((f"sinks.{_toml_key(name)}", "event sink fed by no source (add it to a source's sinks)"))
    lowered = [n.lower() for n in sinks]
    for name in sinks:
        if lowered.count(name.lower()) > 1:
            problems.append((f"sinks.{_toml_key(name)}", "sink names differ only in case"))
    return problems


def _check_rdf_pairing(data: dict[str, Any], i: int, source: dict[str, Any], sinks: dict[str, Any]) -> list:
    """An RDF source (neptune-sparql, or a file of N-Quads) feeds RDF sinks only; any other source no RDF sink
    (event sinks take property-graph changes)."""
    kind = source.get("kind")
    if not isinstance(kind, str):
        return []  # (the schema reports a kind of the wrong type)
    source_rdf = kind in RDF_SOURCE_KINDS or (kind == "file" and source.get("format") == "nquads")
    fed = source.get("sinks") if isinstance(source.get("sinks"), list) else [source.get("sink")]
    key = "sinks" if isinstance(source.get("sinks"), list) else "sink"
    problems = []
    for sink in fed:
        if not isinstance(sink, str) or not isinstance(sinks.get(sink), dict):
            continue
        sink_kind = sinks[sink].get("kind")
        if isinstance(sink_kind, str) and source_rdf != (sink_kind in RDF_SINK_KINDS):
            wanted = "an RDF sink (oxigraph, sparql)" if source_rdf else "a property-graph or event sink"
            problems.append(
                (
                    _user_key(("sources", i, key), data),
                    f'sink "{sink}" is kind "{sink_kind}"; {"an RDF" if source_rdf else "a property-graph"} '
                    f"source needs {wanted}",
                )
            )
    return problems


def _check_fan_out(data: dict[str, Any], i: int, source: dict[str, Any], sinks: dict[str, Any]) -> list:
    """`sinks = [...]`: each named sink exists; at most one graph sink, first, then event sinks (or event sinks
    only); a DynamoDB source's s3 sink needs the SQLite checkpoint store in this version (docs/events.md)."""
    names = source.get("sinks")
    if not isinstance(names, list):
        names = [source["sink"]] if isinstance(source.get("sink"), str) else []
    problems = []
    defined = ", ".join(f'"{n}"' for n in sinks) or "none"
    kinds = [_sink_kind(sinks, name) for name in names]
    sink = source.get("sink")
    if isinstance(sink, str) and _sink_kind(sinks, sink) in EVENT_SINK_KINDS:
        problems.append((_user_key(("sources", i, "sink"), data),
                         f'`sink` names the graph sink; "{sink}" is a {_sink_kind(sinks, sink)} sink (for a source '
                         f'that feeds event sinks only, write sinks = ["{sink}"])'))  # fmt: skip
    for j, name in enumerate(names):
        if not isinstance(name, str) or (j == 0 and "sinks" not in source):
            continue
        key = _user_key(("sources", i, "sinks"), data)
        kind = kinds[j]
        if name not in sinks:
            problems.append((key, f'no sink named "{name}" in [sinks] (defined sinks: {defined})'))
        elif j > 0 and kind in GRAPH_SINK_KINDS and kinds[0] in EVENT_SINK_KINDS:
            problems.append((key, f'"{name}" is a graph sink: the graph sink comes first in sinks, before the event '
                                  "sinks (or leave it out: event sinks only)"))  # fmt: skip
        elif j > 0 and kind in GRAPH_SINK_KINDS:
            problems.append((key, f'"{name}" is a graph sink: one graph sink per source, first in the list '
                                  "(replicate into a second graph with a second source)"))  # fmt: skip
    checkpoint = data.get("checkpoint")
    shared = isinstance(checkpoint, dict) and checkpoint.get("kind") == "dynamodb"
    if "s3" in kinds and shared and source.get("kind") == "dynamodb":
        why = ('an s3 sink of a DynamoDB source needs [checkpoint] kind = "sqlite" in this version (its open '
               "windows are not handed over with a shard's lease yet); the other event sinks may share the "
               'shards with kind = "dynamodb"')  # fmt: skip
        problems.append((_user_key(("sources", i, "sinks"), data), why))
    return problems


def _sink_kind(sinks: dict[str, Any], name: Any) -> str | None:
    """The kind of the sink called `name` in the raw data; None when it is not there (or not a string: the schema
    reports that)."""
    kind = sinks[name].get("kind") if isinstance(name, str) and isinstance(sinks.get(name), dict) else None
    return kind if isinstance(kind, str) else None


def _check_dynamodb_routes(data: dict[str, Any], i: int, source: dict[str, Any], sinks: dict[str, Any]) -> list:
    """A route on `event_names` or `ttl = true` takes nothing from a source other than DynamoDB: say so."""
    names = source.get("sinks")
    if source.get("kind") == "dynamodb" or not isinstance(names, list):
        return []
    problems = []
    kind, source_name = source.get("kind"), source.get("name")
    for name in names:
        if _sink_kind(sinks, name) not in EVENT_SINK_KINDS:
            continue
        route = sinks[name].get("route")
        if isinstance(route, dict) and (route.get("event_names") or route.get("ttl") is True):
            problems.append((_user_key(("sources", i, "sinks"), data),
                             f'sink "{name}" routes on DynamoDB event names or TTL deletions; source '
                             f'"{source_name}" is kind "{kind}": it would take nothing'))  # fmt: skip
    return problems


# ------------------------------------------------------------------------------------------ error text


def _strip_tags(loc: tuple) -> tuple:
    """Drop the union tags pydantic puts in error locations: sources.0.neptune.x -> sources.0.x."""
    if len(loc) > 2 and loc[0] in ("sources", "sinks") and loc[2] in _kinds_for(loc[0]):
        return loc[:2] + loc[3:]
    if len(loc) > 1 and loc[0] == "checkpoint" and loc[1] in CHECKPOINT_KINDS:
        return loc[:1] + loc[2:]
    return tuple(loc)


def _kinds_for(section: str) -> dict[str, type[_Model]]:
    return {"sources": SOURCE_KINDS, "sinks": SINK_KINDS, "checkpoint": CHECKPOINT_KINDS}.get(section, {})


def _error_loc(error: Mapping[str, Any]) -> tuple:
    """Where a validation error points in the user's data (a bad `kind` points at `kind`)."""
    loc = _strip_tags(error["loc"])
    if error["type"] in ("union_tag_invalid", "union_tag_not_found") and isinstance(error["input"], dict):
        loc = (*loc, "kind")
    return loc


def _user_key(loc: tuple, data: dict[str, Any]) -> str:
    """The dotted key the user wrote: `sources[0] (name "main").endpoint`, `sinks.replica.batch_size`."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            sources = data.get("sources")
            if i == 1 and loc[0] == "sources" and isinstance(sources, list) and isinstance(sources[part], dict):
                name = sources[part].get("name")
                if isinstance(name, str):
                    out += f' (name "{name}")'
        else:
            out += ("." if out else "") + _toml_key(str(part))
    return out or "<top level>"


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _reason(error: Mapping[str, Any]) -> str:
    kind, loc, value = error["type"], error["loc"], error["input"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        if not isinstance(value, dict):
            return "should be a table"
        known = ", ".join(f'"{k}"' for k in _kinds_for(loc[0]))
        tag = value.get("kind")
        if "kind" not in value:
            return f"required; known kinds: {known}"
        return f'unknown kind "{tag}"; known kinds: {known}'
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "should be a table"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Input ")
    secret = any(p in ("password", "url") for p in loc if isinstance(p, str))
    if not secret and kind != "value_error" and isinstance(value, str | int | float | bool):
        message += f" (got {_toml_value(value)})"
    return message


def _unknown_key(loc: tuple) -> str:
    loc = tuple(loc)
    parent: type[BaseModel] | None = None
    if len(loc) == 1:
        parent = Config
    elif loc[0] == "daemon" and len(loc) == 2:
        parent = DaemonConfig
    elif loc[0] == "bootstrap" and len(loc) == 2:
        parent = BootstrapConfig
    elif loc[0] == "checkpoint" and len(loc) == 3:
        parent = CHECKPOINT_KINDS.get(loc[1])
    elif loc[0] in ("sources", "sinks") and len(loc) == 4:
        parent = _kinds_for(loc[0]).get(loc[2])
    if parent is None:
        return "unknown key"
    keys = list(parent.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return "unknown key; known keys: " + ", ".join(keys)


def _origin_note(loc: tuple, overrides: dict[tuple, _Override]) -> str:
    for path, override in overrides.items():
        if loc[: len(path)] == path:
            return f" (set by {override.var})"
    return ""


# -------------------------------------------------------------------------------------------- printing


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(text: str) -> str:
    return (
        '"'
        + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in text)
        + '"'
    )


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_value(value: Any) -> str:
    """A Python value (str, bool, int, float, list, dict) as an inline TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(text, text)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _plain(value: Any) -> Any:
    """A model as dicts and scalars, secrets masked, unset optional keys left out, `kind` first."""
    if isinstance(value, BaseModel):
        out: dict[str, Any] = {}
        fields = type(value).model_fields
        for name in sorted(fields, key=lambda n: n != "kind"):
            item = getattr(value, name)
            if item is None:
                continue
            secret = (fields[name].json_schema_extra or {}).get("secret")  # type: ignore[union-attr]
            key = fields[name].alias or name
            out[key] = mask_url(item) if secret == "url" else MASK if secret else _plain(item)
        return out
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _comment(value: Any) -> str:
    """Text for a TOML comment: control characters (a newline would end the comment) as escapes."""
    return "".join(c if " " <= c != "\x7f" else f"\\u{ord(c):04X}" for c in str(value))


def format_resolved(config: Config) -> str:
    """The config with every default filled in, as TOML, secrets masked; derived paths as comments."""
    data = _plain(config)
    lines = [
        "# resolved graph-replicator config (secrets masked)",
        f"# data_dir resolves to {_comment(config.daemon.resolved_data_dir)}",
        f"# checkpoint file: {_comment(config.checkpoint_path or '-')}",
        f"# dead-letter file: {_comment(config.dead_letter_path)}",
    ]

    def table(header: str, body: dict[str, Any]) -> None:
        lines.extend(["", header])
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items())

    table("[daemon]", data["daemon"])
    table("[checkpoint]", data["checkpoint"])
    for source in data["sources"]:
        table("[[sources]]", source)
    if not data["sinks"]:
        table("[sinks]", {})
    for name, sink in data["sinks"].items():
        table(f"[sinks.{_toml_key(name)}]", sink)
    table("[bootstrap]", data["bootstrap"])
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- reference


_REFERENCE_SECTIONS: list[tuple[str, type[BaseModel], type[BaseModel] | None]] = [
    ("`[daemon]`", DaemonConfig, None),
    ('`[checkpoint]` kind = "sqlite" (the default)', SqliteCheckpointConfig, None),
    (
        '`[checkpoint]` kind = "dynamodb" (several instances, active/standby; neptune and file sources only)',
        DynamoDBCheckpointConfig,
        None,
    ),
    ("`[[sources]]`, every kind", _SourceBase, None),
    ('`[[sources]]` kind = "neptune"', NeptuneSourceConfig, _SourceBase),
    ("`start = {commit_num = N, op_num = M}`", StartPosition, None),
    (
        '`[[sources]]` kind = "neptune-sparql" (the keys of kind "neptune", and:)',
        NeptuneSparqlSourceConfig,
        NeptuneSourceConfig,
    ),
    ('`[[sources]]` kind = "file"', FileSourceConfig, _SourceBase),
    ('`[[sources]]` kind = "dynamodb"', DynamoDBSourceConfig, _SourceBase),
    ("`[[sources.rules]]` (dynamodb mapping rules)", MappingRule, None),
    ("`when.ATTRIBUTE = {...}` (a rule's attribute test)", AttributeCondition, None),
    ("`vertex = {...}`", VertexTarget, None),
    ("`edge = {...}`", EdgeTarget, None),
    ("`[sinks.NAME]`, every kind", _SinkBase, None),
    ('`[sinks.NAME]` kind = "falkordb"', FalkorDBSinkConfig, _SinkBase),
    ('`[sinks.NAME]` kind = "neptune"', NeptuneSinkConfig, _SinkBase),
    ('`[sinks.NAME]` kind = "neptune-analytics"', NeptuneAnalyticsSinkConfig, _SinkBase),
    ("`[sinks.NAME]`, every event sink kind (docs/events.md)", _EventSinkBase, None),
    ("`route = {...}` (an event sink's filter)", RouteConfig, None),
    ('`[sinks.NAME]` kind = "kinesis"', KinesisSinkConfig, _EventSinkBase),
    ('`[sinks.NAME]` kind = "sqs"', SQSSinkConfig, _EventSinkBase),
    ('`[sinks.NAME]` kind = "sns"', SNSSinkConfig, _EventSinkBase),
    ('`[sinks.NAME]` kind = "eventbridge"', EventBridgeSinkConfig, _EventSinkBase),
    ('`[sinks.NAME]` kind = "webhook"', WebhookSinkConfig, _EventSinkBase),
    ('`[sinks.NAME]` kind = "s3"', S3SinkConfig, _EventSinkBase),
    ('`[sinks.NAME]` kind = "oxigraph" (RDF)', OxigraphSinkConfig, _SinkBase),
    ('`[sinks.NAME]` kind = "sparql" (RDF)', SparqlSinkConfig, _SinkBase),
    ("`[bootstrap]`", BootstrapConfig, None),
]
_CHECK_NAMES: dict[Any, str] = {
    _check_name: "name ([A-Za-z0-9_.-]+)",
    _check_region: "AWS region",
    _check_http_url: "http(s) URL",
    _check_redis_url: "redis(s) URL",
    _check_graph_id: "graph id",
    _check_role_arn: "IAM role ARN",
    _check_bucket: "S3 bucket name",
    _check_key_prefix: "S3 key prefix",
}
_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", SecretStr: "string, secret"}


def _type_text(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> str:
    for item in metadata:
        if isinstance(item, AfterValidator) and item.func in _CHECK_NAMES:
            return _CHECK_NAMES[item.func]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_text(args[0], args[1:])
    if origin is Literal:
        return " \\| ".join(_toml_value(a) for a in args)
    if origin in (Union, UnionType):
        return " \\| ".join(_type_text(a) for a in args if a is not type(None))
    if annotation is StartPosition:
        return "{commit_num, op_num}"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds_text(metadata: list[Any]) -> str:
    bounds = {
        word: getattr(m, attr)
        for m in metadata
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if isinstance(m, annotated_types.BaseMetadata) and hasattr(m, attr)
    }
    if bounds.keys() == {">=", "<="}:
        return f", {bounds['>=']}..{bounds['<=']}"
    return "".join(f", {word} {value}" for word, value in bounds.items())


def reference_markdown() -> str:
    """Markdown tables of every key (type, default, description), rendered from the models."""
    out: list[str] = []
    for title, model, exclude in _REFERENCE_SECTIONS:
        out += [f"### {title}", "", "| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if exclude is not None and name in exclude.model_fields:
                continue
            name = field.alias or name
            if field.is_required():
                default = "required"
            elif field.default_factory is not None:
                default = f"`{_toml_value(_plain(field.default_factory()))}`"  # type: ignore[call-arg]
            elif field.default is None:
                default = "unset"
            else:
                default = f"`{_toml_value(field.default)}`"
            kind = _type_text(field.annotation, field.metadata) + _bounds_text(field.metadata)
            description = (field.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {kind} | {default} | {description} |")
        out.append("")
    return "\n".join(out)


_BEGIN, _END = "<!-- BEGIN GENERATED: python -m daemon.config -->", "<!-- END GENERATED -->"


def update_reference(path: str | Path) -> bool:
    """Rewrite the generated block of a markdown file; True if it changed."""
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    head, _, tail = text.partition(_BEGIN)
    _, _, tail = tail.partition(_END)
    new = f"{head}{_BEGIN}\n\n{reference_markdown()}\n{_END}{tail}"
    file.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    if len(sys.argv) > 1:
        update_reference(sys.argv[1])
    else:
        print(reference_markdown())
