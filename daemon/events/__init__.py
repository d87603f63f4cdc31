"""Event sinks: every change a source reads, fanned out as CloudEvents 1.0 to Kinesis, SQS, SNS, EventBridge,
webhooks and an S3 archive (docs/events.md).

`cloudevents` turns a `GraphChange` into one event and routes it; `sinks` delivers events in batches with
classified retries, per-element order and dead letters; `fanout` reads a source once and feeds its graph
pipeline and every event sink, each with its own bounded buffer and checkpoint; `archive` is the `s3` sink and its
lane, whose windows are cut by position so that a replay rewrites the same objects.
"""
