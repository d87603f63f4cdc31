"""`python -m daemon` is the `graph-replicator` command."""

from daemon.cli import main

raise SystemExit(main())
