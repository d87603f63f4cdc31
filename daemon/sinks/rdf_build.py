"""Building the RDF sinks (`oxigraph`, `sparql`) from their config tables; `daemon.supervisor.build_sink` and
`graph-replicator query` call it, so pyoxigraph is imported only by configs that use RDF."""

from __future__ import annotations

from pathlib import Path

from daemon.config import Config, OxigraphSinkConfig, SparqlSinkConfig
from daemon.sinks.oxigraph import OxigraphSink, RdfSink
from daemon.sinks.sparql import SparqlSink


def oxigraph_path(name: str, cfg: OxigraphSinkConfig, config: Config) -> Path:
    """The store directory of an `oxigraph` sink (absolute)."""
    if cfg.path is not None:
        return Path(cfg.path).expanduser().absolute()
    return config.daemon.resolved_data_dir / "oxigraph" / name


def build_rdf_sink(name: str, cfg: OxigraphSinkConfig | SparqlSinkConfig, config: Config) -> RdfSink:
    """The sink object for one `[sinks.NAME]` table of an RDF kind."""
    common = {"timeout_seconds": cfg.request_timeout_seconds, "concurrency": cfg.concurrency}
    if isinstance(cfg, OxigraphSinkConfig):
        return OxigraphSink(name, path=oxigraph_path(name, cfg, config), **common)
    return SparqlSink(
        name,
        update_url=str(cfg.update_url),
        query_url=str(cfg.query_url) if cfg.query_url else None,
        sigv4_region=cfg.region if cfg.auth == "sigv4" else None,
        profile=cfg.profile,
        max_request_bytes=cfg.max_request_bytes,
        **common,
    )
