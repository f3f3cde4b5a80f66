"""`ServiceMetrics.observe`, the per-request counter and latency histogram of every
service: counts per label set, the histogram's buckets, and a bounded label set."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from musicrec.service_common import ServiceMetrics


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_observe_counts_each_label_set_and_fills_the_histogram() -> None:
    m = ServiceMetrics("similar")
    m.observe("POST", "/similar_tracks", 200, 0.0004)  # bucket 0.0005
    m.observe("POST", "/similar_tracks", 200, 0.003)  # bucket 0.005 (the cached children)
    m.observe("POST", "/similar_tracks", 422, 0.02)  # bucket 0.025
    got = samples(m)
    ok = (("method", "POST"), ("route", "/similar_tracks"), ("status", "200"))
    bad = (("method", "POST"), ("route", "/similar_tracks"), ("status", "422"))
    assert got[("http_requests_total", ok)] == 2
    assert got[("http_requests_total", bad)] == 1
    route = (("route", "/similar_tracks"),)
    assert got[("http_request_duration_seconds_count", route)] == 3
    assert abs(got[("http_request_duration_seconds_sum", route)] - 0.0234) < 1e-12
    bucket = {
        le: got[("http_request_duration_seconds_bucket", (("le", le), *route))]
        for le in ("0.0005", "0.001", "0.005", "0.025", "+Inf")
    }
    assert bucket == {"0.0005": 1, "0.001": 1, "0.005": 2, "0.025": 3, "+Inf": 3}


def test_unknown_methods_share_one_label() -> None:
    m = ServiceMetrics("events")
    for method in ("BREW", "FOO", "X" * 100):
        m.observe(method, "unmatched", 405, 0.001)
    got = samples(m)
    methods = {dict(labels)["method"] for name, labels in got if name == "http_requests_total"}
    assert methods == {"OTHER"}
    key = (("method", "OTHER"), ("route", "unmatched"), ("status", "405"))
    assert got[("http_requests_total", key)] == 3
