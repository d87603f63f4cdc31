"""The applier's metrics shortcuts (daemon.sinks.base._Observer, _gauge_value) count as prometheus_client does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from daemon.sinks.base import _gauge_value, _Observer


def test_observer_matches_histogram_observe() -> None:
    buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0)
    amounts = [0.0, 0.005, 0.0050001, 0.01, 0.3, 1.0, 9.99, 10.0, 10.5, 1e9, -1.0, 37]
    expositions = []
    for use_observer in (False, True):
        registry = CollectorRegistry()
        child = Histogram("batch_seconds", "doc", ["sink"], buckets=buckets, registry=registry).labels(sink="s")
        observe = _Observer(child).observe if use_observer else child.observe
        for amount in amounts:
            observe(amount)
        lines = generate_latest(registry).decode().splitlines()
        expositions.append([line for line in lines if "_created" not in line])  # a timestamp
    assert 'batch_seconds_bucket{le="0.005",sink="s"} 3.0' in expositions[0]
    assert 'batch_seconds_bucket{le="+Inf",sink="s"} 12.0' in expositions[0]
    assert expositions[1] == expositions[0]


def test_gauge_value_matches_gauge_calls() -> None:
    expositions = []
    for direct in (False, True):
        registry = CollectorRegistry()
        child = Gauge("inflight", "doc", ["sink"], registry=registry).labels(sink="s")
        if direct:
            value = _gauge_value(child)
            value.inc(1), value.inc(1), value.inc(-1), value.set(7.0), value.inc(-1)
        else:
            child.inc(), child.inc(), child.dec(), child.set(7), child.dec()
        expositions.append(generate_latest(registry).decode())
    assert 'inflight{sink="s"} 6.0' in expositions[0]
    assert expositions[1] == expositions[0]
