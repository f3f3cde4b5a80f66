"""verify_service.py must fail when a service misbehaves: each fault below made it pass
before (found by a review), and with no fault it passes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from musicrec.service_common import INT32_MAX
from musicrec.service_events import create_app as events_app
from musicrec.service_recommendations import create_app as recs_app
from musicrec.service_similar import create_app as similar_app
from musicrec.settings import Settings
from musicrec.verify import _call, pick_ids, run_verification

from .conftest import ThreadedServer, make_settings, running

UNKNOWN_TRACK = INT32_MAX - 7  # the track the verifier asks for as unknown
#: faults of the event service (the others are the similar-tracks service's)
EVENT_FAULTS = (
    "idempotency key ignored",
    "retry stored twice",
    "deletion not done",
    "stats without events",
)


async def _respond(send: Send, status: int, body: bytes, ctype: str) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Faulty:
    """ASGI wrapper of a service (similar tracks, events) that misbehaves as `mode` says."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.mode: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.mode is None:
            return await self.app(scope, receive, send)
        path, query = scope["path"], scope["query_string"].decode()
        if self.mode == "deletion not done" and path == "/delete_events":
            body = b'{"result":"ok","deleted":2}'
            return await _respond(send, 200, body, "application/json")
        if self.mode == "stats without events" and path == "/stats":
            return await _respond(send, 200, b'{"events":0}', "application/json")
        if self.mode in EVENT_FAULTS[:2] and path == "/add_event":
            headers = [(k, v) for k, v in scope["headers"] if k != b"idempotency-key"]
            if self.mode == "idempotency key ignored" or len(headers) == len(scope["headers"]):
                return await self.app({**scope, "headers": headers}, receive, send)

            async def drop(message: Message) -> None:
                pass

            async def no_body() -> Message:
                return {"type": "http.request", "body": b"", "more_body": False}

            # "retry stored twice": the listen stored once more without the key, then the
            # keyed call answered as usual (the replay's id and header look right)
            await self.app({**scope, "headers": headers}, no_body, drop)
            return await self.app(scope, receive, send)
        if self.mode == "metrics without samples" and path == "/metrics":
            text = b"# HELP http_requests_total Requests\n# TYPE http_requests_total counter\n"
            return await _respond(send, 200, text, "text/plain; version=0.0.4")
        if self.mode == "route answers empty" and path == "/similar_tracks" and "source=" in query:
            return await _respond(send, 200, b'{"track_id_2":[],"score":[]}', "application/json")
        if (
            self.mode == "unknown track 500"
            and path == "/similar_tracks"
            and f"track_id={UNKNOWN_TRACK}" in query
        ):
            return await _respond(send, 500, b"Internal Server Error", "text/plain")
        sent: list[Message] = []

        async def keep(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, keep)
        start = sent[0]
        body = b"".join(m.get("body", b"") for m in sent[1:])
        ctype = dict(start["headers"]).get(b"content-type", b"").decode()
        if self.mode == "batch scores halved" and path == "/similar_tracks_batch":
            data = orjson.loads(body)
            for r in data["results"]:
                r["score"] = [s / 2 for s in r["score"]]
            body = orjson.dumps(data)
        if self.mode == "JSON sent as text/html" and ctype.startswith("application/json"):
            ctype = "text/html"
        await _respond(send, start["status"], body, ctype)


@pytest.fixture(scope="module")
def services(
    artifacts: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Faulty, Faulty]]:
    """The three services in-process, the similar and the events one behind `Faulty`."""
    work = tmp_path_factory.mktemp("verify_catches")
    cfg = make_settings(artifacts["root"], work)
    similar, events = Faulty(similar_app(cfg)), Faulty(events_app(cfg))
    with running(
        [
            ThreadedServer(similar, cfg.similar_port),  # type: ignore[arg-type]
            ThreadedServer(events, cfg.events_port),  # type: ignore[arg-type]
            ThreadedServer(recs_app(cfg), cfg.recs_port),
        ]
    ):
        yield cfg, similar, events


@pytest.mark.parametrize(
    ("mode", "failed_check"),
    [
        (None, None),
        ("metrics without samples", "similar /metrics"),
        ("batch scores halved", "similar tracks batch"),
        ("JSON sent as text/html", "similar tracks, best first"),
        ("route answers empty", "similar tracks, route"),
        ("unknown track 500", "similar tracks, unknown track: empty"),
        ("idempotency key ignored", "add_event retried with one Idempotency-Key"),
        ("retry stored twice", "add_event retried with one Idempotency-Key"),
        ("deletion not done", "delete_events: the user's history deleted"),
        ("stats without events", "event /stats"),
    ],
)
def test_the_verifier_fails_a_misbehaving_service(
    services: tuple[Settings, Faulty, Faulty],
    tmp_path: Path,
    mode: str | None,
    failed_check: str | None,
) -> None:
    cfg, similar, events = services
    faulty = events if mode in EVENT_FAULTS else similar
    faulty.mode = mode
    log = tmp_path / "service_test.log"
    try:
        rc = run_verification(cfg, log_path=log)
    finally:
        faulty.mode = None
    lines = log.read_text().splitlines()
    failed = [x for x in lines if x.startswith("FAIL ")]
    if failed_check is None:
        assert rc == 0 and not failed, failed
    else:
        assert rc == 1 and any(failed_check in x for x in failed), failed or lines[-1]


def test_an_error_answer_cut_off_is_a_failed_call_not_a_stop() -> None:
    """A 500 whose body is shorter than its Content-Length: `IncompleteRead` escaped the
    call, and the whole verification stopped with every later check unrun."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\ncut short")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        _, reply = _call("GET", f"http://127.0.0.1:{server.getsockname()[1]}/health")
    finally:
        thread.join(10)
        server.close()
    assert reply.status == 0 and b"IncompleteRead" in reply.body, reply


def test_the_verifier_never_deletes_a_history_it_did_not_write(
    services: tuple[Settings, Faulty, Faulty], tmp_path: Path
) -> None:
    """The check of `/delete_events` deleted its user's history whatever it held (a
    listener's, with a pick gone wrong). Now a history of other tracks is left alone and
    the check skipped; what an interrupted run of the check left is cleaned up."""
    cfg, _, events = services
    user = pick_ids(cfg).delete_user
    ev = f"http://127.0.0.1:{cfg.events_port}"

    def history() -> list[int]:
        _, reply = _call("POST", f"{ev}/get_events", params={"user_id": user, "k": 100})
        return list(reply.data["events"])

    _call("POST", f"{ev}/delete_events", params={"user_id": user})  # the cases above left
    for t in (101, 102, 103):
        _call("POST", f"{ev}/add_event", params={"user_id": user, "track_id": t})
    log = tmp_path / "service_test.log"
    assert run_verification(cfg, log_path=log) == 0
    skip = f"SKIP delete_events: user {user}: it has listens this check did not add"
    assert skip in log.read_text().splitlines()
    assert history() == [103, 102, 101]
    _call("POST", f"{ev}/delete_events", params={"user_id": user})
    events.mode = "deletion not done"  # a run that leaves the check's two listens
    try:
        assert run_verification(cfg, log_path=log) == 1
    finally:
        events.mode = None
    assert len(history()) == 2
    assert run_verification(cfg, log_path=log) == 0  # the next run cleans them up
    assert history() == []


def test_the_log_replaces_a_symlink_and_is_written_whole(tmp_path: Path) -> None:
    """service_test.log was written in place: through a symlink at its path into whatever
    file that named (a file of another user's, in a shared folder), and half-written when
    the disk filled. Now it is a new file renamed over the path. (Services down and no
    artifacts here: every check fails fast, and the log still says so.)"""
    other = tmp_path / "other.txt"
    other.write_text("not the verifier's\n")
    log = tmp_path / "service_test.log"
    log.symlink_to(other)
    cfg = make_settings(tmp_path / "no-artifacts", tmp_path, upstream_timeout_s=0.2)
    assert run_verification(cfg, log_path=log) == 1
    assert other.read_text() == "not the verifier's\n"
    assert not log.is_symlink() and log.read_text().rstrip().splitlines()[-1].startswith("FAILED")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_log_can_go_to_a_pipe(tmp_path: Path) -> None:
    """`--log /dev/stdout` (a pipe or a terminal, not a file) is written to as it is: the
    rename of a temporary file beside it failed (no such directory) or, as root, replaced
    the device's link with a file."""
    import os

    read_end, write_end = os.pipe()
    cfg = make_settings(tmp_path / "no-artifacts", tmp_path, upstream_timeout_s=0.2)
    with os.fdopen(read_end) as pipe:  # the log is a few lines: it fits the pipe's buffer
        try:
            rc = run_verification(cfg, log_path=f"/proc/self/fd/{write_end}")
        finally:
            os.close(write_end)
        assert rc == 1
        assert pipe.read().rstrip().splitlines()[-1].startswith("FAILED")


def the_three_services(cfg: Settings) -> list[ThreadedServer]:
    """The similar, event and recommendation services of `cfg`, in-process on its ports."""
    return [
        ThreadedServer(similar_app(cfg), cfg.similar_port),
        ThreadedServer(events_app(cfg), cfg.events_port),
        ThreadedServer(recs_app(cfg), cfg.recs_port),
    ]


def test_a_missing_api_key_is_one_failure_that_says_which_setting(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """An event service started with a key, a verifier run without one: 14 FAIL lines of
    401s and wrong lists that never said why. Now one FAIL naming the setting, and the
    checks that need the event service skipped."""
    keyed = make_settings(artifacts["root"], tmp_path, events_api_key=SecretStr("k3y"))
    with running(the_three_services(keyed)):
        log = tmp_path / "service_test.log"
        rc = run_verification(keyed.model_copy(update={"events_api_key": None}), log_path=log)
    lines = log.read_text().splitlines()
    failed = [x for x in lines if x.startswith("FAIL ")]
    assert rc == 1 and len(failed) == 1, failed
    assert failed[0].startswith("FAIL event service without an API key: POST ")
    assert "-> 401" in failed[0] and "set MUSICREC_EVENTS_API_KEY" in failed[0]
    url = f"events ({keyed.events_base_url}) asks for an API key"
    assert f"SKIP events checks: not run: {url}" in lines
    assert any(x.startswith("SKIP online and blended checks") and url in x for x in lines)
    assert any(x.startswith("PASS similar tracks") for x in lines)  # the rest still ran


def test_a_long_answer_is_cut_in_the_log() -> None:
    """A log line shows at most 400 characters of an answer (then "..."), on one line."""
    from musicrec.verify import Reply

    assert Reply(200, b"x" * 400, None).short() == "x" * 400
    assert Reply(200, b"x" * 401, None).short() == "x" * 400 + "..."
    assert Reply(500, b"a\nb\xff", None).short() == "a b\ufffd"


def test_a_clean_run_runs_every_check(
    services: tuple[Settings, Faulty, Faulty], tmp_path: Path
) -> None:
    """Against healthy services (no API key set) every check runs and passes: a check
    turned into a skip (the heard-tracks one, say) would pass a service that breaks
    it."""
    cfg, _, _ = services
    log = tmp_path / "service_test.log"
    assert run_verification(cfg, log_path=log) == 0
    lines = log.read_text().splitlines()
    assert [x for x in lines if not x.startswith("PASS ")][:-1] == [
        "SKIP add_event API key: events_api_key not set: open"
    ]
    passed = {x.split(": ")[0].removeprefix("PASS ") for x in lines if x.startswith("PASS ")}
    for check in (
        "blended, user with history, k=1000",
        "blended, verify user",
        "delete_events",
        "similar tracks, unknown track",
        "online = similar to latest listens, heard ones removed",
        "user with history offline = ranker's list",
    ):
        assert check in passed, (check, sorted(passed))


def test_the_request_shown_in_the_log_has_its_query_and_json_body() -> None:
    """The log's request text: method, URL with the query, then the JSON body when one
    was sent (nothing for a bodiless POST)."""
    from .conftest import distinct_free_ports

    (port,) = distinct_free_ports(1)  # nothing listens: the call fails, the text stays
    url = f"http://127.0.0.1:{port}"
    shown, reply = _call("POST", f"{url}/get_events", params={"user_id": 7, "k": 2})
    assert shown == f"POST {url}/get_events?user_id=7&k=2" and reply.status == 0
    shown, _ = _call("POST", f"{url}/get_events_batch", body={"user_ids": [7], "k": 2})
    assert shown == f'POST {url}/get_events_batch {{"user_ids":[7],"k":2}}'


def test_a_run_with_the_key_checks_that_the_event_service_wants_it(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """Event service and verifier with the same key: every check passes, the ones of the
    key among them (a 401 without it and with a wrong one); the only skip-free run."""
    keyed = make_settings(artifacts["root"], tmp_path, events_api_key=SecretStr("k3y"))
    with running(the_three_services(keyed)):
        log = tmp_path / "service_test.log"
        rc = run_verification(keyed, log_path=log)
    lines = log.read_text().splitlines()
    assert rc == 0 and lines[-1].startswith("PASSED") and " 0 skipped" in lines[-1], lines
    passed = {x.split(": ")[0] for x in lines if x.startswith("PASS ")}
    assert {
        "PASS add_event without API key -> 401",
        "PASS add_event wrong API key -> 401",
        "PASS get_events without API key -> 401",
        "PASS delete_events without API key -> 401",
    } <= passed, sorted(passed)
