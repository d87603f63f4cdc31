"""Bootstrap: the first full copy of a source into its target, then the hand-off to streaming (docs/bootstrap.md).

Rooms, one job each:

| module | job |
|---|---|
| `records` | snapshot records, the `SnapshotReader` contract, records -> change records |
| `neptune_reader` | position first, then keyset-paginated openCypher reads of a Neptune source |
| `sparql_reader` | position first, then grouped keyset pages of SPARQL reads of a Neptune RDF source |
| `csv_format` | the bulk loader's openCypher CSV format (headers, cells, what CSV cannot carry) |
| `csv_files` | records -> rolled, gzipped CSV files plus the residual spool |
| `nquads_files` | quads -> rolled, gzipped N-Quads files (the loader's `nquads` format) |
| `spool` | change records on disk until the load is done |
| `s3` | uploads (single PUT or multipart) |
| `loader` | `StartLoaderJob` / `GetLoaderJobStatus`, outcomes, resume after deadlock |
| `direct` | records through the normal sink machinery (FalkorDB, Neptune Analytics, the residual) |
| `progress` | terminal line, progress logs, metrics |
| `retry` | bounded classified retries of AWS calls |
| `runner` | the sequence, and the position hand-off to the checkpoint store |
"""

from daemon.bootstrap.records import BootstrapConfigError, BootstrapError, SnapshotEdge, SnapshotReader, SnapshotVertex
from daemon.bootstrap.runner import Bootstrap, BootstrapResult

__all__ = [
    "Bootstrap",
    "BootstrapConfigError",
    "BootstrapError",
    "BootstrapResult",
    "SnapshotEdge",
    "SnapshotReader",
    "SnapshotVertex",
]
