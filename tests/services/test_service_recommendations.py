"""Routes of the recommendation service. The similar and event services run in-process on
real ports (`upstream_settings`), so the upstream calls are real."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from musicrec import service_recommendations
from musicrec.artifacts import ArtifactPaths
from musicrec.blending import blend, dedupe, merge_by_score
from musicrec.service_recommendations import create_app
from musicrec.settings import Settings

from .conftest import free_port, make_settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The service alone (its upstreams are not running: fine for offline and 422s)."""
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def online_client(upstream_settings: Settings) -> Iterator[TestClient]:
    """The service with the similar and event services up."""
    with TestClient(create_app(upstream_settings)) as c:
        yield c


def add_events(cfg: Settings, user: int, tracks: list[int]) -> None:
    with httpx.Client(base_url=cfg.events_base_url) as c:
        for t in tracks:
            c.post("/add_event", params={"user_id": user, "track_id": t}).raise_for_status()


def expected_online(
    cfg: Settings, art: dict[str, Any], recent: list[int], k: int, user: int | None = None
) -> list[int]:
    """The online list by the rules: similar tracks of the latest distinct events merged by
    best score, without recent tracks and (for `user`) without tracks heard before the fit."""
    seeds = dedupe(recent)[: cfg.online_history_k]
    none: tuple[list[int], list[float]] = ([], [])
    sources = [tuple(x[: cfg.online_similar_k] for x in art["similar"].get(s, none)) for s in seeds]
    merged = merge_by_score(sources, 10**6, banned=set(recent))  # type: ignore[arg-type]
    heard = set(art["heard"].get(user, ())) if user is not None else set()
    return [t for t in merged if t not in heard][:k]


def popular_unheard(art: dict[str, Any], user: int) -> list[int]:
    heard = set(art["heard"].get(user, ()))
    return [t for t in art["popular"] if t not in heard]


def recs(client: TestClient, path: str, user: int, k: int | None = None) -> list[int]:
    params = {"user_id": user} if k is None else {"user_id": user, "k": k}
    r = client.post(path, params=params)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"recs"}
    return list(r.json()["recs"])


def test_offline_warm_cold_and_default_k(client: TestClient, artifacts: dict[str, Any]) -> None:
    warm, cold = artifacts["warm_user"], artifacts["cold_user"]
    assert recs(client, "/recommendations_offline", warm, 5) == artifacts["recs"][warm][:5]
    assert recs(client, "/recommendations_offline", cold, 5) == artifacts["popular"][:5]
    assert recs(client, "/recommendations_offline", cold) == artifacts["popular"][:100]


def test_online_is_empty_without_events(
    online_client: TestClient, artifacts: dict[str, Any]
) -> None:
    assert recs(online_client, "/recommendations_online", artifacts["warm_user"], 10) == []


@pytest.mark.parametrize("set_max", [2048, 0], ids=["history as a set", "binary search"])
def test_online_merges_similar_tracks_of_latest_events(
    online_client: TestClient,
    upstream_settings: Settings,
    artifacts: dict[str, Any],
    set_max: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both ways of leaving out the heard tracks (a set for short histories, a binary search
    in the index for long ones) give the rule's list."""
    monkeypatch.setattr(service_recommendations, "SET_HISTORY_MAX", set_max)
    user = artifacts["warm_user"]
    seeds = artifacts["similar_tracks"][:7]
    # an unknown track and a repeat among the events: stored, ignored / counted once
    events = [*seeds, 2**31 - 2, seeds[-1]]
    add_events(upstream_settings, user, events)
    recent = list(reversed(events))
    got = recs(online_client, "/recommendations_online", user, 30)
    assert got == expected_online(upstream_settings, artifacts, recent, 30, user)
    assert got and not set(got) & set(events)
    # tracks the user heard before the pipeline's fit are left out too: the same merge
    # without that rule would have returned some of them
    heard = set(artifacts["heard"][user])
    assert set(expected_online(upstream_settings, artifacts, recent, 30)) & heard
    assert not set(got) & heard


def test_blended_interleaves_and_is_exactly_k(
    online_client: TestClient, upstream_settings: Settings, artifacts: dict[str, Any]
) -> None:
    user = artifacts["warm_user"]
    events = artifacts["similar_tracks"][10:13]
    add_events(upstream_settings, user, events)
    recent = list(reversed(events))
    for k in (1, 10, 60, 250):
        got = recs(online_client, "/recommendations", user, k)
        online = expected_online(upstream_settings, artifacts, recent, k, user)
        offline = artifacts["recs"][user][: 2 * k + len(recent)]
        popular = popular_unheard(artifacts, user)
        assert got == blend(online, offline, k, set(recent), popular)
        assert len(got) == k and len(set(got)) == k
        assert not set(got) & set(events)
        assert not set(got) & set(artifacts["heard"][user])
    got = recs(online_client, "/recommendations", user, 10)
    online = expected_online(upstream_settings, artifacts, recent, 10, user)
    offline_first = [t for t in artifacts["recs"][user] if t not in online and t not in events]
    assert got[0] == online[0] and got[1] == offline_first[0]


def test_blended_tops_up_a_short_list_and_stops_at_the_catalogue(
    online_client: TestClient, artifacts: dict[str, Any]
) -> None:
    user = artifacts["short_user"]
    heard = set(artifacts["heard"][user])
    got = recs(online_client, "/recommendations", user, 50)
    assert len(got) == 50 and len(set(got)) == 50
    assert got[: len(artifacts["recs"][user])] == artifacts["recs"][user]
    # the top-up skips the popular tracks the user heard before the fit (some are among
    # the first 50, so the unfiltered list would differ)
    assert heard & set(artifacts["popular"][:50])
    assert not set(got) & heard
    everything = recs(online_client, "/recommendations", user, 1000)
    assert set(everything) == set(artifacts["popular"]) - heard


def test_a_user_with_history_but_no_stored_list_gets_popular_tracks_not_heard(
    tmp_path: Path,
) -> None:
    """A user of the heard index without a stored list (the pipeline found no candidate
    worth ranking, or the files come from different runs) gets the popular tracks without
    those heard, from both routes that fall back to the popular list."""
    from musicrec.artifacts import ArtifactPaths
    from musicrec.heard import HeardIndex

    from .artifacts_fixture import describe_artifacts, write_fake_artifacts

    art = write_fake_artifacts(tmp_path / "art", n_users=10, n_tracks=100, seed=3)
    paths = ArtifactPaths(art["root"])
    index = HeardIndex.load(paths.heard_dir, mmap=False)
    user = art["cold_user"]  # above every user with a list: appended, the ids stay sorted
    heard = np.sort(np.array(art["popular"][1:12:2], dtype=index.tracks.dtype))
    HeardIndex(
        np.append(index.users, np.array([user], dtype=index.users.dtype)),
        np.append(index.offsets, index.offsets[-1] + heard.size),
        np.concatenate([index.tracks, heard]),
    ).save(paths.heard_dir)
    assert describe_artifacts(art["root"])["heard"][user] == heard.tolist()
    unheard = [t for t in art["popular"] if t not in set(heard.tolist())]
    cfg = make_settings(art["root"], tmp_path)  # upstreams down: the offline fallback
    with TestClient(create_app(cfg)) as c:
        assert recs(c, "/recommendations_offline", user, 10) == unheard[:10]
        assert recs(c, "/recommendations", user, 10) == unheard[:10]
        # a user the pipeline never saw still gets the popular list as it is
        assert recs(c, "/recommendations_offline", user + 1, 10) == art["popular"][:10]


def write_lists(
    paths: ArtifactPaths, users: list[int], tracks: list[int], popular: list[int]
) -> None:
    """`recommendations.parquet` (ranks in the given order) and `top_popular.parquet`."""
    import pandas as pd

    from musicrec.io import write_parquet

    paths.ensure_dirs()
    n = len(users)
    recs_table = {"user_id": users, "track_id": tracks, "score": [1.0] * n, "rank": range(1, n + 1)}
    write_parquet(pd.DataFrame(recs_table), paths.recommendations)
    ranks = range(1, len(popular) + 1)
    popular_table = {"track_id": popular, "rank": ranks, "listeners": [100 - r for r in ranks]}
    write_parquet(pd.DataFrame(popular_table), paths.top_popular)


def test_loading_drops_padding_ids_but_keeps_track_0(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Padding rows (track -1, which some libraries emit) are dropped from the stored lists
    and the popular list when they are loaded, so never served; track 0 is an id like any
    other and is kept in both. A user whose rows were all padding has no list: the popular
    list without the one track they heard (track 0: a history of one track is a history).
    One user left is not "no users"."""
    from musicrec.heard import HeardIndex
    from musicrec.service_recommendations import OfflineRecs

    paths = ArtifactPaths(tmp_path)
    write_lists(paths, [7, 7, 7, 7, 9], [5, -1, 0, 3, -1], popular=[-1, 0, 8, 5])
    ids = np.array([7, 9], dtype=np.int64)
    offsets = np.array([0, 0, 1], dtype=np.int64)
    HeardIndex(ids, offsets, np.array([0], dtype=np.int64)).save(paths.heard_dir)
    with caplog.at_level("WARNING", logger="musicrec.services.recommendations"):
        offline = OfflineRecs.load(paths)
    assert offline.offline(7, 10) == [5, 0, 3]
    assert offline.offline(9, 10) == [8, 5]  # only padding: the popular tracks not heard
    assert offline.offline(1, 10) == [0, 8, 5]  # never seen: the popular list
    assert offline.popular == [0, 8, 5]
    assert not [r for r in caplog.records if "has no users" in r.getMessage()]


def test_loading_warns_of_no_users_and_refuses_an_empty_popular_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored lists holding only padding: the service loads, warns that everyone gets the
    popular list, and serves it, even when it is one track long; a popular list of padding
    only is refused (cold-start users would get nothing)."""
    from musicrec.errors import ArtifactError
    from musicrec.service_recommendations import OfflineRecs

    paths = ArtifactPaths(tmp_path)
    write_lists(paths, [7, 9], [-1, -1], popular=[-1, 4])
    with caplog.at_level("WARNING", logger="musicrec.services.recommendations"):
        offline = OfflineRecs.load(paths)
    assert offline.offline(7, 10) == [4] and len(offline.users) == 0
    assert [r.levelname for r in caplog.records if "has no users" in r.getMessage()] == ["WARNING"]
    write_lists(paths, [7], [3], popular=[-1, -1])
    with pytest.raises(ArtifactError, match="no tracks"):
        OfflineRecs.load(paths)


def test_repeats_in_a_stored_list_are_replaced_by_its_next_tracks(tmp_path: Path) -> None:
    """A stored list may repeat a track (the blend drops the repeats): each dropped repeat
    is replaced by the next ranked track of the list, before any popular track. Upstreams
    down here, so the answer is the offline part alone."""

    write_lists(ArtifactPaths(tmp_path / "art"), [7] * 8, [1, 1, 2, 2, 3, 3, 4, 4], [90, 91])
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = make_settings(tmp_path / "art", tmp_path, similar_url=dead, events_url=dead)
    with TestClient(create_app(cfg)) as c:
        assert recs(c, "/recommendations", 7, 3) == [1, 2, 3]
        assert recs(c, "/recommendations", 7, 4) == [1, 2, 3, 4]
        assert recs(c, "/recommendations", 7, 5) == [1, 2, 3, 4, 90]


def long_history(cfg: Settings, art: dict[str, Any]) -> dict[str, Any]:
    """A warm user who, after the fit, heard the head of their own stored list and popular
    tracks (12 events worth recommending), then 6 tracks with similar tracks."""
    user = art["warm_user"]
    heard = set(art["heard"][user])
    old = art["recs"][user][:6] + [t for t in art["popular"] if t not in heard][:6]
    new = [t for t in art["similar_tracks"] if t not in old][:6]
    add_events(cfg, user, old + new)
    return {"user": user, "old": old, "recent": list(reversed(old + new))}


@pytest.mark.parametrize("exclude", [10_000, 6])
def test_the_latest_exclude_events_max_events_are_never_recommended(
    upstream_settings: Settings, artifacts: dict[str, Any], exclude: int
) -> None:
    """The online part, the offline part and the top-up drop the user's latest
    `exclude_events_max` events: all 18 by default; with 6, the older 12 come back (so
    the rule is what decides)."""
    cfg = upstream_settings.model_copy(update={"exclude_events_max": exclude})
    h = long_history(cfg, artifacts)
    user, old = h["user"], set(h["old"])
    dropped = h["recent"][:exclude]
    popular = popular_unheard(artifacts, user)
    with TestClient(create_app(cfg)) as c:
        online = recs(c, "/recommendations_online", user, 50)
        assert online == expected_online(cfg, artifacts, dropped, 50, user)
        for k in (10, 1000):
            got = recs(c, "/recommendations", user, k)
            on = expected_online(cfg, artifacts, dropped, k, user)
            off = artifacts["recs"][user][: 2 * k + len(dropped)]
            assert got == blend(on, off, k, set(dropped), popular)
            assert not set(got) & set(dropped)
            assert bool(set(got) & old) == (exclude == 6)
        assert "recommendation_fallbacks_total{" not in c.get("/metrics").text


def test_fallback_keeps_excluding_every_event_read_when_only_similar_is_down(
    upstream_settings: Settings, artifacts: dict[str, Any]
) -> None:
    """With the similar service down, the offline answer still leaves out all the events
    the first call read (the user's own stored tracks among them)."""
    cfg = upstream_settings.model_copy(update={"similar_url": f"http://127.0.0.1:{free_port()}"})
    h = long_history(cfg, artifacts)
    user, recent = h["user"], h["recent"]
    with TestClient(create_app(cfg)) as c:
        got = recs(c, "/recommendations", user, 10)
        assert got == [t for t in artifacts["recs"][user] if t not in recent][:10]
        assert 'reason="similar:unreachable"' in c.get("/metrics").text
    assert set(h["old"]) & set(artifacts["recs"][user][:10])  # what it dropped


@pytest.mark.parametrize(
    ("host", "connect"),
    [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("::1", "[::1]")],
)
def test_default_upstream_urls_follow_the_bind_address(host: str, connect: str) -> None:
    """The upstream URLs derived from `MUSICREC_HOST` are ones the client accepts: a
    wildcard bind address becomes loopback, an IPv6 address gets its brackets."""
    from musicrec.http_client import HttpPool

    cfg = Settings(host=host, similar_port=8010, events_port=8020)
    assert cfg.similar_base_url == f"http://{connect}:8010"
    assert cfg.events_base_url == f"http://{connect}:8020"
    for url in (cfg.similar_base_url, cfg.events_base_url):
        assert HttpPool(url, timeout_s=1).base_url == url


def test_coalesced_events_answers_stay_within_the_client_body_limit() -> None:
    """However deep the events read, a coalesced call's answer fits what the client reads
    (every id at its longest JSON, an int64 with sign and comma, times the users per call)
    and what the event service answers in one call (users x k)."""
    from musicrec.http_client import MAX_BODY
    from musicrec.service_common import (
        EVENTS_BATCH_MAX_EVENTS,
        EVENTS_BATCH_MAX_USERS,
        SIMILAR_BATCH_MAX_SEEDS,
    )
    from musicrec.service_recommendations import EVENTS_BATCH, events_batch

    assert len(str(-(2**63))) + 1 == service_recommendations.EVENT_ID_JSON_BYTES
    # the coalesced calls are within what each upstream's batch route takes
    assert EVENTS_BATCH <= EVENTS_BATCH_MAX_USERS
    assert service_recommendations.SIMILAR_BATCH <= SIMILAR_BATCH_MAX_SEEDS
    assert events_batch(1_000) == EVENTS_BATCH  # the default depth keeps full batches
    for k in (1, 100, 1_000, 2_500, 5_000, 10_000):
        assert 1 <= events_batch(k) <= EVENTS_BATCH
        assert events_batch(k) * k * service_recommendations.EVENT_ID_JSON_BYTES <= MAX_BODY
        assert events_batch(k) * k <= EVENTS_BATCH_MAX_EVENTS
    assert events_batch(10_000) < EVENTS_BATCH
    # the service's own coalescer takes that size (metrics are not used to build it)
    metrics: Any = None
    upstreams = service_recommendations.Upstreams(Settings(exclude_events_max=10_000), metrics)
    assert upstreams.events.max_batch == events_batch(10_000)


def test_exclude_events_max_is_bounded() -> None:
    for bad in (0, 10_001):
        with pytest.raises(ValueError, match="exclude_events_max"):
            Settings(exclude_events_max=bad)


@pytest.mark.parametrize("path", ["/recommendations", "/recommendations_offline"])
@pytest.mark.parametrize(
    "params",
    [
        {"user_id": -1},
        {"user_id": 2**31},
        {"user_id": 10**30},
        {"user_id": "x"},
        {"user_id": 1, "k": 0},
        {"user_id": 1, "k": 1001},
        {"user_id": 1, "k": -5},
        {"k": 5},
    ],
)
def test_bad_params_422_never_500(client: TestClient, path: str, params: dict[str, Any]) -> None:
    r = client.post(path, params=params)
    assert r.status_code == 422
    body = r.json()
    assert body["detail"] and body["message"].startswith("invalid request:")


def test_online_bad_params_422(client: TestClient) -> None:
    assert (
        client.post("/recommendations_online", params={"user_id": 1, "k": 1001}).status_code == 422
    )


def test_fallback_to_offline_when_upstreams_are_down(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = make_settings(artifacts["root"], tmp_path, similar_url=dead, events_url=dead)
    user = artifacts["warm_user"]
    with TestClient(create_app(cfg)) as c:
        assert recs(c, "/recommendations", user, 10) == artifacts["recs"][user][:10]
        r = c.post("/recommendations_online", params={"user_id": user, "k": 10})
        assert r.status_code == 503 and "events:unreachable" in r.json()["detail"]
        metrics = c.get("/metrics").text
    assert 'recommendation_fallbacks_total{reason="events:unreachable"} 1.0' in metrics
    assert 'upstream_errors_total{kind="unreachable",upstream="events"}' in metrics


def test_the_schema_documents_the_statuses_of_the_online_route(client: TestClient) -> None:
    """/recommendations_online answers 200, 422, or 503 when not ready or an upstream fails
    (`test_fallback_to_offline_when_upstreams_are_down`): its OpenAPI entry lists exactly
    those, the 503 with the error body and the upstream case in its description."""
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/recommendations_online"]["post"]["responses"]
    assert set(responses) == {"200", "422", "503"}
    unavailable = responses["503"]
    assert "upstream" in unavailable["description"]
    assert unavailable["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_an_unforeseen_error_in_the_online_part_falls_back_and_is_logged(
    upstream_settings: Settings,
    artifacts: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not only the upstream failures the client names: any exception in the online part
    gives the offline answer (still without the events read before it), not a 500, and
    its traceback in the log: once per 10 s, not per request (an upstream answering
    garbage to every request flooded the log with tracebacks)."""
    h = long_history(upstream_settings, artifacts)
    user, recent = h["user"], h["recent"]

    def broken_merge(*args: Any, **kwargs: Any) -> list[int]:
        raise KeyError("an answer nobody foresaw")  # after the events and similar calls

    monkeypatch.setattr(service_recommendations, "merge_by_score", broken_merge)
    with TestClient(create_app(upstream_settings)) as c:
        got = recs(c, "/recommendations", user, 10)
        assert got == [t for t in artifacts["recs"][user] if t not in recent][:10]
        r = c.post("/recommendations_online", params={"user_id": user, "k": 10})
        assert r.status_code == 503 and "online:error" in r.json()["detail"]
        for _ in range(3):
            recs(c, "/recommendations", user, 10)
        metrics = c.get("/metrics").text
    assert 'recommendation_fallbacks_total{reason="online:error"} 4.0' in metrics
    logged = [r for r in caplog.records if "online part failed" in r.message]
    assert [(r.levelname, r.exc_info is not None) for r in logged if r.levelname != "DEBUG"] == [
        ("ERROR", True)
    ]


def test_probes_and_not_ready(upstream_settings: Settings) -> None:
    app = create_app(upstream_settings)
    c = TestClient(app)
    assert c.get("/ready").status_code == 503
    assert c.get("/health").status_code == 200
    assert c.post("/recommendations", params={"user_id": 1}).status_code == 503
    with TestClient(app) as c2:
        assert c2.get("/ready").json() == {"ready": True, "service": "recommendations"}
        schema = c2.get("/openapi.json").json()
        resp = schema["paths"]["/recommendations"]["post"]["responses"]
        assert resp["200"]["content"]["application/json"]["schema"]["$ref"].endswith("RecsResponse")
        assert "422" in resp


def test_concurrent_requests_share_coalesced_upstream_calls(
    upstream_settings: Settings, artifacts: dict[str, Any]
) -> None:
    """40 users at once, each with its own events: every answer is what the user alone
    would get, and the upstream lookups travelled in fewer calls than requests."""
    from .conftest import ThreadedServer

    users = [10_000 + i for i in range(40)]
    tracks = artifacts["similar_tracks"]
    history = {u: tracks[i % 20 : i % 20 + 3] for i, u in enumerate(users)}
    for u, ts in history.items():
        add_events(upstream_settings, u, ts)
    cfg = upstream_settings.model_copy(update={"recs_port": free_port()})
    server = ThreadedServer(create_app(cfg), cfg.recs_port)
    server.start()
    try:

        async def fire() -> list[list[int]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
                rs = await asyncio.gather(
                    *(
                        c.post("/recommendations_online", params={"user_id": u, "k": 10})
                        for u in users
                    )
                )
            assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
            return [r.json()["recs"] for r in rs]

        got = asyncio.run(fire())
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    for u, answer in zip(users, got, strict=True):
        recent = list(reversed(history[u]))
        assert answer == expected_online(cfg, artifacts, recent, 10)
    calls = metric(metrics, 'upstream_batch_keys_count{upstream="events"}')
    keys = metric(metrics, 'upstream_batch_keys_sum{upstream="events"}')
    assert keys == len(users) and calls < len(users)
    assert "recommendation_fallbacks_total{" not in metrics


def metric(text: str, name: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


def test_artifacts_fetched_from_s3_are_the_files_it_reads(
    artifacts: dict[str, Any], tmp_path: Path, fake_s3: list[tuple[Settings, Path, list[str]]]
) -> None:
    """With `fetch_artifacts_from_s3` the service downloads its two files and the heard
    index (not the data, models and pictures of the tree) before it loads them."""
    cfg = make_settings(tmp_path / "fresh", tmp_path, fetch_artifacts_from_s3=True)
    with TestClient(create_app(cfg)) as c:
        assert c.get("/ready").status_code == 200
        user = artifacts["warm_user"]
        got = c.post("/recommendations_offline", params={"user_id": user, "k": 3}).json()
        assert got["recs"] == artifacts["recs"][user][:3]
    files = ["recommendations/recommendations.parquet", "recommendations/top_popular.parquet"]
    files += [
        f"recommendations/heard/{name}" for name in ("users.npy", "offsets.npy", "tracks.npy")
    ]
    assert fake_s3 == [(cfg, tmp_path / "fresh", files)]


@pytest.mark.parametrize(
    ("upstream", "answer"),
    [
        ("similar", {"track_id_2": ["123", "456"], "score": [0.9, 0.8]}),
        ("similar", {"track_id_2": [123.7, 456.0], "score": [0.9, 0.8]}),
        ("similar", {"track_id_2": [True, 456], "score": [0.9, 0.8]}),
        ("similar", {"track_id_2": {"123": 1, "456": 2}, "score": "xy"}),
        ("similar", {"track_id_2": [123, 456], "score": ["0.9", 0.8]}),
        ("events", {"events": "123"}),
        ("events", {"events": {"77": 1}}),
        ("events", {"events": [1.9, True]}),
        ("events", {"user_id": "USER", "events": []}),
    ],
)
def test_an_upstream_answer_of_the_wrong_types_is_a_bad_payload(
    artifacts: dict[str, Any], tmp_path: Path, upstream: str, answer: dict[str, Any]
) -> None:
    """JSON of the right shape but the wrong types from an upstream (strings, floats, bools
    or an object where integer lists belong): they were served as recommendations ("123",
    123.7, true) or read as other ids ("123" -> 1, 2, 3) with a 200. Now the upstream's
    bad payload: the offline list, and 503 from /recommendations_online."""
    from fastapi import Body, FastAPI

    from .conftest import ThreadedServer

    user = artifacts["warm_user"]
    seed = next(iter(artifacts["similar"]))
    fake = FastAPI()

    @fake.post("/get_events_batch")
    def events(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        good = {"events": [seed]}
        return {
            "results": [
                {"user_id": u, **(answer if upstream == "events" else good)}
                for u in body["user_ids"]
            ]
        }

    @fake.post("/similar_tracks_batch")
    def similar(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return {"results": [{"track_id": t, **answer} for t in body["track_ids"]]}

    port = free_port()
    server = ThreadedServer(fake, port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    cfg = make_settings(artifacts["root"], tmp_path, similar_url=url, events_url=url)
    try:
        with TestClient(create_app(cfg)) as c:
            got = recs(c, "/recommendations", user, 10)
            r = c.post("/recommendations_online", params={"user_id": user, "k": 10})
            metrics = c.get("/metrics").text
    finally:
        server.stop()
    read = [] if upstream == "events" else [seed]  # events read are still left out
    assert got == [t for t in artifacts["recs"][user] if t not in read][:10]
    assert r.status_code == 503 and f"{upstream}:bad_payload" in r.json()["detail"]
    assert f'recommendation_fallbacks_total{{reason="{upstream}:bad_payload"}} 1.0' in metrics
