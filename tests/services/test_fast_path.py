"""The express lane (`musicrec.fast_path`): it answers plain requests exactly as the FastAPI
routes do, and leaves everything else to them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from musicrec.fast_path import parse_id_k
from musicrec.service_recommendations import create_app
from musicrec.service_similar import create_app as similar_app
from musicrec.settings import Settings

from .test_service_recommendations import add_events


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"user_id=42", (42, 100)),
        (b"user_id=42&k=7", (42, 7)),
        (b"k=7&user_id=42", (42, 7)),
        (b"user_id=0&k=1", (0, 1)),
        (b"user_id=2147483647&k=1000", (2**31 - 1, 1000)),
        (b"user_id=007&k=05", (7, 5)),  # FastAPI reads leading zeros the same way
        (b"", None),
        (b"k=7", None),  # no user
        (b"user_id=", None),
        (b"user_id", None),
        (b"user_id=-1", None),
        (b"user_id=+1", None),
        (b"user_id=2147483648", None),  # above int32
        (b"user_id=12345678901", None),  # 11 digits
        (b"user_id=1&k=0", None),
        (b"user_id=1&k=1001", None),
        (b"user_id=1&user_id=2", None),  # repeated
        (b"user_id=1&k=2&k=3", None),
        (b"user_id=1&foo=2", None),  # extra parameter: left to FastAPI
        (b"user_id=%31", None),  # percent-encoded
        (b"user_id=1.0", None),
        (b"user_id=\xd9\xa1", None),  # a non-ASCII digit
        (b"user_id=1&", None),
        (b"user_id=1" + b"&k=1" * 20, None),  # too long
    ],
)
def test_parse_id_k(query: bytes, expected: tuple[int, int] | None) -> None:
    assert parse_id_k(query, b"user_id", 100) == expected
    # another route's id parameter: the user_id form is then not plain
    other = query.replace(b"user_id", b"track_id")
    assert parse_id_k(other, b"track_id", 100) == expected
    if expected is not None:
        assert parse_id_k(query, b"track_id", 100) is None


QUERIES = [
    "user_id={warm}",
    "user_id={warm}&k=7",
    "k=7&user_id={warm}",
    "user_id={online}&k=12",
    "user_id={cold}&k=5",
    "user_id=0&k=1",
    "user_id=2147483647&k=1000",
    "user_id=007&k=05",
    "",
    "k=7",
    "user_id=",
    "user_id=-1",
    "user_id=2147483648",
    "user_id={warm}&k=0",
    "user_id={warm}&k=1001",
    "user_id=1&user_id={warm}",
    "user_id={warm}&foo=2",
    "user_id=%31&k=3",
    "user_id=abc",
    "user_id=1_000",  # pydantic's lax notations: refused on both lanes
    "user_id=%2B1",
    "user_id={warm}&k=2.0",
    "user_id={warm}&k=%207",
]


@pytest.fixture
def both(upstream_settings: Settings, artifacts: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The service with and without the lane (same upstreams, same artifacts), and a user
    with events (online blend)."""
    online = artifacts["warm_user"] + 1
    add_events(upstream_settings, online, artifacts["similar_tracks"][:4])
    on = upstream_settings.model_copy(update={"fast_path": True})
    off = upstream_settings.model_copy(update={"fast_path": False})
    with TestClient(create_app(on)) as c_on, TestClient(create_app(off)) as c_off:
        yield {
            "on": c_on,
            "off": c_off,
            "ids": {
                "warm": artifacts["warm_user"],
                "cold": artifacts["cold_user"],
                "online": online,
            },
        }


def assert_same_answers(on: TestClient, off: TestClient, path: str, queries: list[str]) -> None:
    """Every query gets the same status, body and headers with and without the lane; the
    queries cover both 200s and 422s."""
    statuses = set()
    for query in queries:
        url = f"{path}?{query}"
        a, b = on.post(url), off.post(url)
        assert (a.status_code, a.content) == (b.status_code, b.content), url
        for h in ("content-type", "content-length"):
            assert a.headers.get(h) == b.headers.get(h), (url, h)
        statuses.add(a.status_code)
    assert statuses == {200, 422}
    # other methods are the router's business (405) whether or not the lane is on
    url = f"{path}?{queries[0]}"
    assert on.get(url).status_code == off.get(url).status_code == 405


@pytest.mark.parametrize("path", ["/recommendations", "/recommendations_offline"])
def test_lane_answers_exactly_as_the_route(both: dict[str, Any], path: str) -> None:
    queries = [q.format(**both["ids"]) for q in QUERIES]
    assert_same_answers(both["on"], both["off"], path, queries)


def test_similar_lane_answers_exactly_as_the_route(
    settings: Settings, artifacts: dict[str, Any]
) -> None:
    on = settings.model_copy(update={"fast_path": True})
    off = settings.model_copy(update={"fast_path": False})
    known = artifacts["similar_tracks"][0]
    queries = [
        q.replace("user_id", "track_id").format(warm=known, online=known + 1, cold=2**31 - 2)
        for q in QUERIES
    ]
    with TestClient(similar_app(on)) as c_on, TestClient(similar_app(off)) as c_off:
        assert_same_answers(c_on, c_off, "/similar_tracks", queries)
        # the user_id form is not this route's plain form: FastAPI's 422 either way
        assert c_on.post(f"/similar_tracks?user_id={known}").status_code == 422


@pytest.mark.parametrize("path", ["/recommendations", "/recommendations_offline"])
def test_lane_serves_plain_requests_without_the_route(
    upstream_settings: Settings, artifacts: dict[str, Any], path: str
) -> None:
    """Remove the FastAPI route after start-up: plain requests are still answered (by the
    lane, counted under the route's template), anything else now finds no route."""
    warm = artifacts["warm_user"]
    with TestClient(create_app(upstream_settings)) as c:
        before = c.post(path, params={"user_id": warm, "k": 5}).json()
        app: Any = c.app
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != path]
        assert c.post(f"{path}?user_id={warm}&k=5").json() == before
        assert c.post(f"{path}?user_id={warm}&k=5&x=1").status_code == 404
        assert c.post(f"{path}?user_id=-1").status_code == 404
        text = c.get("/metrics").text
        assert f'http_requests_total{{method="POST",route="{path}",status="200"}} 2.0' in text


def test_similar_lane_serves_plain_requests_without_the_route(
    settings: Settings, artifacts: dict[str, Any]
) -> None:
    """The same for `/similar_tracks`: once its FastAPI route is removed, a plain request
    is still answered (by the lane, counted under the route's template), anything else
    finds no route."""
    track = artifacts["similar_tracks"][0]
    with TestClient(similar_app(settings)) as c:
        before = c.post("/similar_tracks", params={"track_id": track, "k": 3}).json()
        app: Any = c.app
        app.router.routes = [
            r for r in app.router.routes if getattr(r, "path", "") != "/similar_tracks"
        ]
        assert c.post(f"/similar_tracks?track_id={track}&k=3").json() == before
        assert c.post(f"/similar_tracks?track_id={track}&k=3&x=1").status_code == 404
        text = c.get("/metrics").text
        assert 'http_requests_total{method="POST",route="/similar_tracks",status="200"} 2.0' in text


def test_lane_is_off_when_disabled(upstream_settings: Settings, artifacts: dict[str, Any]) -> None:
    cfg = upstream_settings.model_copy(update={"fast_path": False})
    with TestClient(create_app(cfg)) as c:
        app: Any = c.app
        app.router.routes = [
            r for r in app.router.routes if getattr(r, "path", "") != "/recommendations"
        ]
        url = f"/recommendations?user_id={artifacts['warm_user']}&k=5"
        assert c.post(url).status_code == 404


def test_not_ready_falls_through_to_the_503(upstream_settings: Settings) -> None:
    c = TestClient(create_app(upstream_settings))  # no lifespan: nothing loaded
    for path in ("/recommendations", "/recommendations_offline"):
        r = c.post(f"{path}?user_id=1&k=5")
        assert r.status_code == 503 and "not ready" in r.json()["detail"]
    r = TestClient(similar_app(upstream_settings)).post("/similar_tracks?track_id=1&k=5")
    assert r.status_code == 503 and "not ready" in r.json()["detail"]


@pytest.mark.parametrize(
    ("root_path", "url"),
    # the paths as uvicorn passes them: the root path in front of what the client asked
    [
        ("/similar_tracks", "/similar_tracks?track_id={t}&k=3"),  # the client asked for "/"
        ("/sim", "/sim/similar_tracks?track_id={t}&k=3"),
    ],
)
def test_lane_and_route_agree_under_a_root_path(
    settings: Settings, artifacts: dict[str, Any], root_path: str, url: str
) -> None:
    """uvicorn --root-path puts the root path in front of the request's path, and the router
    matches without it; the lane matched the whole path, so under the root path
    `/similar_tracks` a request for `/` was answered by the lane (the route: 404)."""
    t = artifacts["similar_tracks"][0]
    answers = []
    for lane in (True, False):
        cfg = settings.model_copy(update={"fast_path": lane})
        with TestClient(similar_app(cfg), root_path=root_path) as c:
            r = c.post(url.format(t=t))
            answers.append((r.status_code, r.content))
    assert answers[0] == answers[1]
