"""graph-replicator: a change-data-capture replication daemon for property graphs (see docs/architecture.md)."""

__version__ = "0.1.0"
