"""Routes of the similar-tracks service (TestClient)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from musicrec.service_common import BATCH_BODY_MAX, SIMILAR_BATCH_MAX_SEEDS
from musicrec.service_similar import create_app
from musicrec.settings import Settings

from .conftest import assert_json_413, make_settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def test_similar_tracks_best_first(client: TestClient, artifacts: dict[str, Any]) -> None:
    track = artifacts["similar_tracks"][0]
    ids, scores = artifacts["similar"][track]
    r = client.post("/similar_tracks", params={"track_id": track, "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"track_id_2", "score"}
    assert body["track_id_2"] == ids[:5]
    assert np.allclose(body["score"], scores[:5], rtol=1e-6)
    assert body["score"] == sorted(body["score"], reverse=True)


def test_similar_tracks_default_k_and_unknown_track(
    client: TestClient, artifacts: dict[str, Any]
) -> None:
    track = artifacts["similar_tracks"][1]
    r = client.post("/similar_tracks", params={"track_id": track})
    assert r.json()["track_id_2"] == artifacts["similar"][track][0][:10]
    unknown = artifacts["no_similar_track"]
    r = client.post("/similar_tracks", params={"track_id": unknown, "k": 5})
    assert r.status_code == 200
    assert r.json() == {"track_id_2": [], "score": []}


def test_batch_one_entry_per_seed_in_order(client: TestClient, artifacts: dict[str, Any]) -> None:
    seeds = [*artifacts["similar_tracks"][:3], artifacts["no_similar_track"]]
    r = client.post("/similar_tracks_batch", json={"track_ids": seeds, "k": 4})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["track_id"] for x in results] == seeds
    for x in results[:3]:
        assert x["track_id_2"] == artifacts["similar"][x["track_id"]][0][:4]
    assert results[3]["track_id_2"] == [] and results[3]["score"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"track_id": -1},
        {"track_id": 2**31},
        {"track_id": "x"},
        {"track_id": 1, "k": 0},
        {"track_id": 1, "k": 1001},
        {},
    ],
)
def test_similar_tracks_bad_params_422(client: TestClient, params: dict[str, Any]) -> None:
    r = client.post("/similar_tracks", params=params)
    assert r.status_code == 422
    assert r.json()["message"].startswith("invalid request:")


@pytest.mark.parametrize(
    "body",
    [
        {"track_ids": list(range(SIMILAR_BATCH_MAX_SEEDS + 1)), "k": 5},
        {"track_ids": [-3], "k": 5},
        {"track_ids": [1], "k": 0},
        {"track_ids": "nope"},
    ],
)
def test_batch_bad_body_422(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/similar_tracks_batch", json=body).status_code == 422


def test_batch_body_size_is_bounded(client: TestClient) -> None:
    big = b'{"track_ids": [' + b"1," * BATCH_BODY_MAX + b"1]}"
    assert_json_413(client, "/similar_tracks_batch", big)


def test_plain_text_errors_below_the_handlers_are_sent_as_json() -> None:
    """`JsonErrorBodies` on its own: a plain-text error in several body parts becomes one
    JSON `detail`, its other headers kept; a success passes untouched."""
    import asyncio

    from musicrec.service_common import JsonErrorBodies

    def app_of(status: int, content_type: bytes) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            headers = [(b"content-type", content_type), (b"content-length", b"9"), (b"x-a", b"1")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"Too ", "more_body": True})
            await send({"type": "http.response.body", "body": b"Large"})

        return app

    def run(app: Any) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        asyncio.run(JsonErrorBodies(app)({"type": "http"}, None, send))
        return sent

    start, body = run(app_of(413, b"text/plain; charset=utf-8"))
    assert start["status"] == 413 and body["body"] == b'{"detail":"Too Large"}'
    assert dict(start["headers"]) == {
        b"x-a": b"1",
        b"content-type": b"application/json",
        b"content-length": str(len(body["body"])).encode(),
    }
    ok = run(app_of(200, b"text/plain"))
    assert [m.get("body") for m in ok] == [None, b"Too ", b"Large"]
    assert ok[0]["headers"][0] == (b"content-type", b"text/plain")
    # every error status from 400 on; a 399 passes untouched like the success
    start, body = run(app_of(400, b"text/plain"))
    assert start["status"] == 400 and body["body"] == b'{"detail":"Too Large"}'
    assert [m.get("body") for m in run(app_of(399, b"text/plain"))] == [None, b"Too ", b"Large"]


def test_probes_metrics_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "service": "similar"}
    assert client.get("/ready").json() == {"ready": True, "service": "similar"}
    client.post("/similar_tracks", params={"track_id": 1})
    metrics = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/similar_tracks",status="200"}' in metrics
    assert "http_request_duration_seconds_bucket" in metrics
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/similar_tracks"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("SimilarResponse")
    assert "/similar_tracks_batch" in schema["paths"]


def test_not_ready_before_the_artifacts_are_loaded(settings: Settings) -> None:
    client = TestClient(create_app(settings))  # no `with`: the lifespan has not run
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["ready"] is False
    assert client.get("/health").status_code == 200
    assert client.post("/similar_tracks", params={"track_id": 1}).status_code == 503


def test_artifacts_fetched_from_s3_first_when_configured(
    artifacts: dict[str, Any], tmp_path: Path, fake_s3: list[tuple[Settings, Path, list[str]]]
) -> None:
    """With `fetch_artifacts_from_s3` the service downloads the file it reads, then loads it."""
    cfg = make_settings(tmp_path / "fresh", tmp_path, fetch_artifacts_from_s3=True)
    with TestClient(create_app(cfg)) as c:
        assert c.get("/ready").status_code == 200
        track = artifacts["similar_tracks"][0]
        r = c.post("/similar_tracks", params={"track_id": track, "k": 3})
        assert r.json()["track_id_2"] == artifacts["similar"][track][0][:3]
    assert fake_s3 == [(cfg, tmp_path / "fresh", ["recommendations/similar.parquet"])]


def test_one_structured_debug_line_per_request(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="musicrec.services"):
        client.post("/similar_tracks", params={"track_id": 5, "k": 2})
    lines = [r.getMessage() for r in caplog.records if r.name == "musicrec.services.similar"]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["path"] == "/similar_tracks" and entry["status"] == 200
    assert entry["query"] == "track_id=5&k=2" and entry["ms"] >= 0


def test_an_empty_similar_file_from_the_pipeline_serves_empty_lists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What `similar_tracks` writes when it finds no pair (one scored track) is a file the
    service starts with, answering empty lists (and warning)."""
    from musicrec.artifacts import ArtifactPaths
    from musicrec.io import write_parquet
    from musicrec.similar import empty_similar

    from .artifacts_fixture import write_fake_artifacts

    art = write_fake_artifacts(tmp_path / "art", n_users=10, n_tracks=100, seed=3)
    write_parquet(empty_similar(), ArtifactPaths(art["root"]).similar)
    with TestClient(create_app(make_settings(art["root"], tmp_path))) as c:
        r = c.post("/similar_tracks", params={"track_id": art["popular"][0], "k": 5})
        assert r.status_code == 200 and r.json() == {"track_id_2": [], "score": []}
    warned = [r for r in caplog.records if "holds no similar pairs" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING


def hand_made_similar(tmp_path: Path) -> Settings:
    """Fake artifacts whose `similar.parquet` is written by hand (rows in reverse order):
    track 0 with a self-pair and a padding id (-1) among its pairs, track 5 whose best
    match is track 0, a padding source (-1), and track 1 with 12 similar tracks; float32
    scores."""
    import pandas as pd

    from musicrec.artifacts import ArtifactPaths
    from musicrec.io import write_parquet

    from .artifacts_fixture import write_fake_artifacts

    art = write_fake_artifacts(tmp_path / "art", n_users=10, n_tracks=100, seed=3)
    rows = [
        (0, 5, 0.875, 1),
        (0, 0, 0.75, 2),  # self-pair
        (0, -1, 0.5, 3),  # padding
        (0, 7, 0.1, 4),  # float32: served as 0.1, not widened to 0.10000000149011612
        (5, 0, 0.5, 1),
        (5, 6, 0.25, 2),
        (-1, 5, 0.5, 1),  # padding source
        *[(1, 100 + i, 1 - i / 16, i + 1) for i in range(12)],
    ]
    sim = pd.DataFrame(rows, columns=["track_id_1", "track_id_2", "score", "rank"])
    sim["score"] = sim["score"].astype(np.float32)
    write_parquet(sim.iloc[::-1], ArtifactPaths(art["root"]).similar)
    return make_settings(art["root"], tmp_path)


def test_padding_ids_and_self_pairs_are_not_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Pairs with a negative id (padding) or a track paired with itself are dropped when
    the file is loaded; track 0 is a real id, as a seed and as a similar track. The start-up
    line counts what is served: tracks 0, 1 and 5; 2 + 12 + 2 pairs."""
    with (
        caplog.at_level(logging.INFO, logger="musicrec.services.similar"),
        TestClient(create_app(hand_made_similar(tmp_path))) as c,
    ):
        r0 = c.post("/similar_tracks", params={"track_id": 0, "k": 10}).json()
        r5 = c.post("/similar_tracks", params={"track_id": 5, "k": 10}).json()
    assert r0 == {"track_id_2": [5, 7], "score": [0.875, 0.1]}
    assert r5 == {"track_id_2": [0, 6], "score": [0.5, 0.25]}
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert len(loaded) == 1 and loaded[0].endswith(": 3 tracks, 16 pairs"), loaded
    assert "holds no similar pairs" not in caplog.text


def test_default_k_is_10_on_both_lanes(tmp_path: Path) -> None:
    """Without `k`, a track with 12 similar tracks gets its best 10, whether the express
    lane or the FastAPI route answers."""
    cfg = hand_made_similar(tmp_path)
    expected = {"track_id_2": list(range(100, 110)), "score": [1 - i / 16 for i in range(10)]}
    for lane in (True, False):
        with TestClient(create_app(cfg.model_copy(update={"fast_path": lane}))) as c:
            assert c.post("/similar_tracks?track_id=1").json() == expected, lane


def test_batch_accepts_k_from_1(client: TestClient, artifacts: dict[str, Any]) -> None:
    """`k` of the batch route is in 1 .. K_MAX like the single route's: k=1 is the best
    similar track of each seed."""
    seeds = artifacts["similar_tracks"][:2]
    r = client.post("/similar_tracks_batch", json={"track_ids": seeds, "k": 1})
    assert r.status_code == 200, r.text
    got = [x["track_id_2"] for x in r.json()["results"]]
    assert got == [artifacts["similar"][t][0][:1] for t in seeds]


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b'{"k": "\xff"}', "codec can't decode byte 0xff"), (b"[" * 5000 + b"]" * 5000, "recursion")],
    ids=["not utf-8", "nested 5000 deep"],
)
def test_a_body_the_json_parser_cannot_read_is_a_422_saying_why(
    client: TestClient, body: bytes, reason: str
) -> None:
    """FastAPI answers a body it cannot decode (not UTF-8, or nested deeper than the parser
    recurses) with a vague 400; here it is a 422 as any invalid body, with the reason."""
    r = client.post(
        "/similar_tracks_batch", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    answer = r.json()
    assert [e["type"] for e in answer["detail"]] == ["body_invalid"]
    assert answer["message"].startswith("invalid request: body: the body is not valid JSON: ")
    assert reason in answer["message"]
    assert "(got" not in answer["message"]  # there is no input to echo


def test_the_probes_document_their_answers(client: TestClient) -> None:
    """`/ready` documents both of its answers, 200 and 503, with the same body; `/metrics`
    its 200 in Prometheus's text format, not JSON."""
    paths = client.get("/openapi.json").json()["paths"]
    responses = paths["/ready"]["get"]["responses"]
    for status in ("200", "503"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema["$ref"] == "#/components/schemas/ReadyResponse", status
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert [t.split(";")[0] for t in metrics] == ["text/plain"], metrics
