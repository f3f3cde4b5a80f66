"""Integer query parameters on every route of the three services: decimal digits only, each
parameter once (`service_common.decimal_digits`, `NoRepeatedQuery`). pydantic alone read
`1_000`, `+5` and `2.0` as integers and FastAPI took the last of a repeated parameter, so
`?user_id=0&user_id=1` answered for user 1 and `/add_event?...&track_id=4&track_id=5`
stored track 5."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from musicrec.service_events import create_app as events_app
from musicrec.service_recommendations import create_app as recommendations_app
from musicrec.service_similar import create_app as similar_app
from musicrec.settings import Settings

#: (app factory, route, its integer parameters with a valid value each)
ROUTES: list[tuple[Callable[[Settings], FastAPI], str, dict[str, str]]] = [
    (recommendations_app, "/recommendations", {"user_id": "3", "k": "5"}),
    (recommendations_app, "/recommendations_offline", {"user_id": "3", "k": "5"}),
    (recommendations_app, "/recommendations_online", {"user_id": "3", "k": "5"}),
    (similar_app, "/similar_tracks", {"track_id": "3", "k": "5"}),
    (events_app, "/add_event", {"user_id": "3", "track_id": "5"}),
    (events_app, "/get_events", {"user_id": "3", "k": "5"}),
    (events_app, "/delete_events", {"user_id": "3"}),
]
#: what pydantic's lax mode read as 1000, 5, 5, 2 and 7 (`+` in a query is a space)
LAX = ["1_000", "%2B5", "+5", "2.0", "%207", "7%20", "0x10", "1e3"]


@pytest.fixture(params=ROUTES, ids=[r[1] for r in ROUTES])
def route(request: pytest.FixtureRequest, settings: Settings) -> Iterator[dict[str, Any]]:
    make_app, path, params = request.param
    with TestClient(make_app(settings)) as client:
        yield {"client": client, "path": path, "params": params}


def query(params: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items())


def test_the_valid_query_is_answered(route: dict[str, Any]) -> None:
    # online needs the upstreams (not running here): 503; the point is "not a 422"
    r = route["client"].post(f"{route['path']}?{query(route['params'])}")
    assert r.status_code in (200, 503), r.text


@pytest.mark.parametrize("lax", LAX)
def test_an_integer_in_another_notation_is_a_422(route: dict[str, Any], lax: str) -> None:
    for name in route["params"]:
        params = {**route["params"], name: lax}
        r = route["client"].post(f"{route['path']}?{query(params)}")
        assert r.status_code == 422, (name, lax, r.text)
        assert f"query {name}: " in r.json()["message"], r.json()
        assert "decimal digits" in r.json()["message"]


def test_a_negative_integer_keeps_the_bounds_message(route: dict[str, Any]) -> None:
    name = next(iter(route["params"]))
    r = route["client"].post(f"{route['path']}?{query({**route['params'], name: '-1'})}")
    assert r.status_code == 422
    assert "greater than or equal to" in r.json()["message"]


def test_a_repeated_parameter_is_a_422_naming_it(route: dict[str, Any], settings: Settings) -> None:
    client, path = route["client"], route["path"]
    for name, value in route["params"].items():
        r = client.post(f"{path}?{query(route['params'])}&{name}={value}9")
        assert r.status_code == 422, (name, r.text)
        body = r.json()
        assert body["detail"][0]["loc"] == ["query", name]
        assert body["detail"][0]["input"] == [value, f"{value}9"]
        assert f"query {name}: given more than once" in body["message"]
    # the same value twice is still two parameters
    name, value = next(iter(route["params"].items()))
    assert client.post(f"{path}?{query(route['params'])}&{name}={value}").status_code == 422


def test_a_repeated_parameter_keeps_404_and_405_and_its_route_label(
    route: dict[str, Any],
) -> None:
    """The 422 comes only where a route answers: the middleware runs before routing, and
    an unknown path or a wrong method with a repeated name used to get a 422 (labelled
    "unmatched" in the metrics) instead of its 404 or 405."""
    client, path = route["client"], route["path"]
    name, value = next(iter(route["params"].items()))
    repeated = f"{query(route['params'])}&{name}={value}"
    assert client.post(f"/no_such_route?{repeated}").status_code == 404
    assert client.delete(f"{path}?{repeated}").status_code == 405
    assert client.post(f"{path}?{repeated}").status_code == 422
    text = client.get("/metrics").text
    assert f'http_requests_total{{method="POST",route="{path}",status="422"}} 1.0' in text
    assert 'route="unmatched",status="422"' not in text


def test_a_repeated_blank_name_is_ignored(route: dict[str, Any]) -> None:
    """`?=1&=2` names no parameter (FastAPI ignores it): not a 422 with an empty name."""
    r = route["client"].post(f"{route['path']}?{query(route['params'])}&=1&=2")
    assert r.status_code in (200, 503), r.text


def test_a_repeated_track_is_not_stored(settings: Settings) -> None:
    with TestClient(events_app(settings)) as client:
        r = client.post("/add_event?user_id=1&track_id=4&track_id=5")
        assert r.status_code == 422
        assert client.post("/get_events?user_id=1").json() == {"events": [], "count": 0}


def test_the_openapi_schema_keeps_the_bounds(route: dict[str, Any]) -> None:
    """The validator sits after `Query(...)`: before it, FastAPI wrote `ge`/`le` instead
    of `minimum`/`maximum`, and the fuzzer sent `k=0` as a valid request."""
    spec = route["client"].app.openapi()["paths"][route["path"]]["post"]["parameters"]
    schemas = {p["name"]: p["schema"] for p in spec}
    for name in route["params"]:
        assert schemas[name]["type"] == "integer"
        assert {"minimum", "maximum"} <= schemas[name].keys(), schemas[name]
        assert not {"ge", "le"} & schemas[name].keys()


def test_many_repeated_names_are_answered_in_one_bounded_422() -> None:
    """8,000 names given twice each (64 kB, what uvicorn's parser accepts): the answer
    lists the first `MAX_ERRORS` and counts the rest, each with at most `MAX_ERRORS` values
    (the first version built every error by scanning the whole query again per name: 3.35
    s on the event loop for this query, through uvicorn). The middleware alone: the test
    client refuses so long a URL."""
    import asyncio

    import orjson

    from musicrec.service_common import MAX_ERRORS, NoRepeatedQuery

    letters = "abcdefghijklmnopqrst"
    names = [a + b + c for a in letters for b in letters for c in letters]
    query = "&".join(f"{n}=1&{n}=2" for n in names) + "&k=1" * 50
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a repeated query reached the app")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "query_string": query.encode()}
    asyncio.run(NoRepeatedQuery(app)(scope, receive, send))
    assert sent[0]["status"] == 422
    body = orjson.loads(sent[1]["body"])
    assert len(body["detail"]) == MAX_ERRORS
    assert body["detail"][0] == {
        "type": "repeated_parameter",
        "loc": ["query", "aaa"],
        "msg": "given more than once; send each parameter once",
        "input": ["1", "2"],
    }
    assert body["message"].endswith(f"... and {len(names) + 1 - MAX_ERRORS} more error(s)")
    # a name given 50 times shows MAX_ERRORS of its values
    asyncio.run(
        NoRepeatedQuery(app)({**scope, "query_string": b"k=1" + b"&k=1" * 50}, receive, send)
    )
    assert orjson.loads(sent[3]["body"])["detail"][0]["input"] == ["1"] * MAX_ERRORS


@pytest.mark.parametrize(
    ("query", "repeated"),
    [
        (b"user_id=1&k=5", None),
        (b"user_id=1&user_id=2", "user_id"),
        (b"user%5Fid=1&user_id=2", "user_id"),  # the same name once decoded
        (b"user%5fid=1&k=2", None),
        (b"a+b=1&a%20b=2", "a b"),  # `+` is a space
        (b"a+b=1&ab=2", None),
        (b"k=1&k", "k"),  # a name without a value counts
        (b"=1&=2&k=3", None),  # blank names name nothing
        (b"k=1&&j=2", None),  # an empty part is no parameter
    ],
)
def test_repeated_names_are_found_however_written(query: bytes, repeated: str | None) -> None:
    """The middleware skips parsing a query whose names are distinct as written and carry
    no escape; one with an escape is decoded before its names are compared."""
    import asyncio

    import orjson

    from musicrec.service_common import NoRepeatedQuery

    reached: list[bool] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "query_string": query}
    asyncio.run(NoRepeatedQuery(app)(scope, receive, send))
    if repeated is None:
        assert reached == [True] and sent == []
    else:
        assert reached == [] and sent[0]["status"] == 422
        assert orjson.loads(sent[1]["body"])["detail"][0]["loc"] == ["query", repeated]


def test_the_openapi_schema_documents_the_422_body(route: dict[str, Any]) -> None:
    """Every route documents its 422 as the body the handler sends (`detail` list plus
    `message`), not FastAPI's default `HTTPValidationError`."""
    spec = route["client"].app.openapi()["paths"][route["path"]]["post"]["responses"]
    schema = spec["422"]["content"]["application/json"]["schema"]
    assert schema["$ref"] == "#/components/schemas/ValidationErrorResponse"
