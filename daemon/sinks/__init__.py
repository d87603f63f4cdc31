"""Graph sinks: execute parameterised openCypher batches against one target engine."""
