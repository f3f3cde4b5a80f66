"""`ServiceMetrics.observe`, the per-request counter and latency histogram of every
service: counts per label set, the histogram's buckets, and a bounded label set; the
`MetricsMiddleware` feeding it, and `render` under several workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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


def test_middleware_counts_a_crash_as_a_500_and_times_each_request() -> None:
    """`MetricsMiddleware` on its own: a request whose app raises before answering is
    counted as a 500 (what the client gets), an answered one under its own status; both
    are timed by their duration (well under a second here)."""
    import asyncio
    import logging

    from musicrec.service_common import MetricsMiddleware

    async def crash(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def no_content(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        pass

    m = ServiceMetrics("similar")
    logger = logging.getLogger("musicrec.services.test")
    scope = {"type": "http", "method": "POST", "path": "/x", "query_string": b""}
    with pytest.raises(RuntimeError):
        asyncio.run(MetricsMiddleware(crash, m, logger)(dict(scope), None, send))
    asyncio.run(MetricsMiddleware(no_content, m, logger)(dict(scope), None, send))
    got = samples(m)
    labels = (("method", "POST"), ("route", "unmatched"))
    assert got[("http_requests_total", (*labels, ("status", "500")))] == 1
    assert got[("http_requests_total", (*labels, ("status", "204")))] == 1
    route = (("route", "unmatched"),)
    assert got[("http_request_duration_seconds_count", route)] == 2
    assert 0 <= got[("http_request_duration_seconds_sum", route)] < 1.0


def test_upstream_batch_sizes_fall_in_doubling_buckets() -> None:
    """`upstream_batch_keys`: how many lookups a coalesced call carried, in buckets 1, 2,
    4, ... 256 (a dashboard reads "at most 4 keys" from le="4")."""
    m = ServiceMetrics("recommendations")
    for keys in (1, 2, 3, 4, 5, 200, 300):
        m.upstream_batch.labels("similar").observe(keys)
    bucket = {
        dict(labels)["le"]: value
        for (name, labels), value in samples(m).items()
        if name == "upstream_batch_keys_bucket"
    }
    assert bucket == {
        "1.0": 1,
        "2.0": 2,
        "4.0": 4,
        "8.0": 5,
        "16.0": 5,
        "32.0": 5,
        "64.0": 5,
        "128.0": 5,
        "256.0": 6,
        "+Inf": 7,
    }


def test_render_reads_the_workers_files_under_prometheus_multiproc_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With several uvicorn workers (`PROMETHEUS_MULTIPROC_DIR` set, multi-process
    values), /metrics renders what the workers wrote in the directory, not an empty page."""
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    # what prometheus_client picks at import when the variable is set in a worker
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    m = ServiceMetrics("similar")
    for _ in range(3):
        m.observe("POST", "/similar_tracks", 200, 0.001)
    assert any(tmp_path.iterdir())  # the counts went to the directory's files
    got = samples(m)
    key = (("method", "POST"), ("route", "/similar_tracks"), ("status", "200"))
    assert got[("http_requests_total", key)] == 3
