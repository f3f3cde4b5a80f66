"""Exercise every endpoint of the running services and write `service_test.log`.

`run_verification()` (also `python verify_service.py` and `python -m musicrec verify`)
picks ids that exist in the current artifacts (read through the settings' artifact paths,
touching only parquet statistics, the first row group and filtered reads, so it stays cheap
on full-size data), computes what each endpoint should answer with the same rules as the
services (`musicrec.blending`), calls the services and logs one line per check:
`PASS|FAIL|SKIP <check>: <request> -> <status> <response>`. Returns 0 when every check
passed, 1 otherwise.

It writes a few events for a synthetic user (an id above every user id the pipeline knows),
never for a real user.
"""

from __future__ import annotations

import http.client
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from musicrec.artifacts import ArtifactPaths
from musicrec.blending import blend, dedupe, merge_by_score
from musicrec.columns import Columns as C
from musicrec.errors import ArtifactError, ConfigError
from musicrec.heard import HeardIndex, drop_heard, heard_by, unheard
from musicrec.io import write_bytes
from musicrec.service_common import INT32_MAX, K_MAX, SIMILAR_BATCH_MAX_SEEDS
from musicrec.settings import Settings, check_base_url, get_settings

log = logging.getLogger("musicrec.verify")

K = 10
#: events of the verify user beyond the latest 100 (its oldest): see `Verifier.check_events`
LONG_HISTORY = 105
#: a track id no artifact holds (the events check adds it and the one below it)
UNKNOWN_TRACK = INT32_MAX - 7
_BODY_SHOWN = 400


@dataclass
class Reply:
    """An HTTP answer: status, raw body, parsed JSON (None if not JSON), content type,
    headers (names in lower case)."""

    status: int
    body: bytes
    data: Any
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def is_json(self) -> bool:
        """200 with a JSON body declared as such."""
        return (
            self.status == 200
            and self.data is not None
            and self.content_type.split(";")[0].strip() == "application/json"
        )

    def short(self) -> str:
        text = self.body.decode("utf-8", "replace").replace("\n", " ")
        return text if len(text) <= _BODY_SHOWN else text[:_BODY_SHOWN] + "..."


#: the user ids the checks use when the artifacts leave them free: the verifier's own
#: events (five `add_event`s per run, kept in the event store) and a user without any
RESERVED_VERIFY_USER = INT32_MAX - 1
RESERVED_COLD_USER = INT32_MAX - 2
#: the user the check of `/delete_events` adds two listens to and deletes: its own id, so
#: that no other check's user (nor a listener) can lose a history to it
RESERVED_DELETE_USER = INT32_MAX - 3


@dataclass
class Picks:
    """Ids taken from the artifacts and what the artifacts say about them."""

    warm_user: int
    warm_list: list[int]
    cold_user: int
    verify_user: int
    delete_user: int
    popular: list[int]
    seeds: list[int]
    similar_of: Callable[[Sequence[int], int], dict[int, tuple[list[int], list[float]]]]
    #: the heard index the service reads (None for artifacts written before it existed)
    heard: HeardIndex | None = None

    def heard_of(self, user_id: int) -> np.ndarray:
        """The sorted tracks `user_id` heard before the served fit (empty if unknown)."""
        return heard_by(self.heard, user_id)


def _call(
    method: str,
    url: str,
    *,
    params: dict[str, Any] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[str, Reply]:
    """One request with urllib; returns the request text shown in the log and the reply."""
    full = url + ("?" + urllib.parse.urlencode(params) if params else "")
    data = orjson.dumps(body) if body is not None else (b"" if method == "POST" else None)
    hdrs = dict(headers or {})
    if body is not None:
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(full, data=data, method=method, headers=hdrs)
    shown = f"{method} {full}" + (f" {data.decode()}" if body is not None and data else "")
    try:
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                status, raw, got = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:  # its body is read here too: it may be cut off
            status, raw, got = exc.code, exc.read(), exc.headers
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # HTTPException: not HTTP at all (BadStatusLine) or cut off (IncompleteRead)
        return shown, Reply(0, f"connection failed: {type(exc).__name__}: {exc}".encode(), None)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    headers = {name.lower(): value for name, value in got.items()}
    return shown, Reply(status, raw, parsed, headers.get("content-type", ""), headers)


def _sorted_by_rank(table: Any, key: str) -> list[int]:
    order = pc.sort_indices(table, sort_keys=[(C.Rank, "ascending")])
    values = table.column(key).take(order).to_numpy()
    return [int(v) for v in values if v >= 0]


def _column_extreme(path: Path, column: str) -> tuple[int, int]:
    """(min, max) of an integer column from the parquet statistics (read if missing)."""
    pf = pq.ParquetFile(path)
    idx = pf.schema_arrow.get_field_index(column)
    lo: int | None = None
    hi: int | None = None
    for i in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(i).column(idx).statistics
        if stats is None or not stats.has_min_max:
            values = pq.read_table(path, columns=[column]).column(column).to_numpy()
            return (int(values.min()), int(values.max())) if values.size else (0, -1)
        lo = int(stats.min) if lo is None else min(lo, int(stats.min))
        hi = int(stats.max) if hi is None else max(hi, int(stats.max))
    return (lo, hi) if lo is not None and hi is not None else (0, -1)


def pick_ids(settings: Settings) -> Picks:
    """Choose the ids to test with from the current artifacts; `ArtifactError` when they
    are missing or cannot be read (a damaged parquet file, a column missing)."""
    paths = ArtifactPaths(settings.artifacts_dir)
    try:
        return _pick_ids(paths)
    except (pa.ArrowException, ValueError, KeyError) as exc:
        raise ArtifactError(
            f"{paths.root}: cannot read the artifacts to pick ids from "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _pick_ids(paths: ArtifactPaths) -> Picks:
    for p in (paths.recommendations, paths.top_popular, paths.similar):
        if not p.is_file():
            raise ArtifactError(f"{p}: artifact file is missing; cannot pick ids to verify")

    pop = pq.read_table(paths.top_popular, columns=[C.Item, C.Rank])
    popular = dedupe(_sorted_by_rank(pop, C.Item))

    recs_pf = pq.ParquetFile(paths.recommendations)
    first = recs_pf.read_row_group(0, columns=[C.User]) if recs_pf.metadata.num_row_groups else None
    lo, hi = _column_extreme(paths.recommendations, C.User)
    if first is None or first.num_rows == 0:
        warm_user, warm_list = -1, []
    else:
        warm_user = int(first.column(C.User)[0].as_py())
        rows = pq.read_table(
            paths.recommendations,
            columns=[C.Item, C.Rank],
            filters=[(C.User, "==", warm_user)],
        )
        warm_list = dedupe(_sorted_by_rank(rows, C.Item))
    # the events the checks add stay in the event store: they go to a reserved id at the
    # top of the id range, never to the next id a sequentially numbered new user will get
    if hi < RESERVED_DELETE_USER:
        cold_user, verify_user = RESERVED_COLD_USER, RESERVED_VERIFY_USER
        delete_user = RESERVED_DELETE_USER
    elif lo >= 3:
        cold_user, verify_user, delete_user = lo - 1, lo - 2, lo - 3
    else:
        raise ArtifactError(f"{paths.recommendations}: no free user id for a cold user")

    sim_pf = pq.ParquetFile(paths.similar)
    seeds: list[int] = []
    if sim_pf.metadata.num_row_groups:
        head = sim_pf.read_row_group(0, columns=[C.Item1]).column(C.Item1).to_numpy()
        seeds = [int(t) for t in dict.fromkeys(head.tolist()) if t >= 0][:3]

    def similar_of(tracks: Sequence[int], k: int) -> dict[int, tuple[list[int], list[float]]]:
        """Each track's top-k similar tracks and scores, as the similarity service ranks."""
        out: dict[int, tuple[list[int], list[float]]] = {t: ([], []) for t in tracks}
        if not tracks:
            return out
        table = pq.read_table(
            paths.similar,
            columns=[C.Item1, C.Item2, C.Score, C.Rank],
            filters=[(C.Item1, "in", list(tracks))],
        )
        src = table.column(C.Item1).to_numpy()
        dst = table.column(C.Item2).to_numpy()
        score = table.column(C.Score).to_numpy()
        rank = table.column(C.Rank).to_numpy()
        keep = (dst >= 0) & (dst != src)
        src, dst, score, rank = src[keep], dst[keep], score[keep], rank[keep]
        order = np.lexsort((rank, src))
        for s, d, sc in zip(src[order], dst[order], score[order], strict=True):
            tr, scs = out[int(s)]
            if len(tr) < k:
                tr.append(int(d))
                scs.append(float(sc))
        return out

    heard = HeardIndex.load(paths.heard_dir) if paths.heard_dir.exists() else None
    return Picks(
        warm_user, warm_list, cold_user, verify_user, delete_user, popular, seeds, similar_of, heard
    )


@dataclass
class Verifier:
    """Runs the checks and keeps the log lines."""

    settings: Settings
    recs_url: str
    similar_url: str
    events_url: str
    lines: list[str] = field(default_factory=list)
    passed: int = 0
    failures: int = 0
    skipped: int = 0

    def record(
        self, ok: bool | None, name: str, shown: str, reply: Reply | None, note: str = ""
    ) -> bool:
        """Log one check; `ok=None` means skipped."""
        verdict = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        if ok is None:
            self.skipped += 1
        elif ok:
            self.passed += 1
        else:
            self.failures += 1
        line = f"{verdict} {name}: {shown}"
        if reply is not None:
            line += f" -> {reply.status} {reply.short()}"
        if note:
            line += f" | {note}"
        self.lines.append(line)
        (log.info if ok is not False else log.error)("%s", line)
        return bool(ok)

    # --- helpers -------------------------------------------------------------------------

    @property
    def api_headers(self) -> dict[str, str]:
        return self.settings.events_auth_headers

    def expect_json(self, name: str, method: str, url: str, expected: Any, **kw: Any) -> Reply:
        shown, reply = _call(method, url, **kw)
        ok = reply.is_json and reply.data == expected
        note = "" if ok else f"expected 200 {orjson.dumps(expected).decode()[:_BODY_SHOWN]}"
        self.record(ok, name, shown, reply, note)
        return reply

    def expect_status(self, name: str, method: str, url: str, status: int, **kw: Any) -> Reply:
        shown, reply = _call(method, url, **kw)
        ok = reply.status == status
        self.record(ok, name, shown, reply, "" if ok else f"expected {status}")
        return reply

    def check_delete_events(self, user: int, tracks: tuple[int, ...]) -> None:
        """A privacy request: `user` (reserved for this check) gets `tracks`, then has its
        history deleted, and has none after. Only a history this check could have left
        (of `tracks` only: a run stopped half-way, a service that did not delete) is ever
        deleted: any other is left alone and the check skipped, so that a misconfigured
        pick can never delete a listener's history."""
        ev = self.events_url
        before = self.history_of(user)
        if before is None or not set(before) <= set(tracks):
            why = "its history could not be read" if before is None else "it has listens"
            if before is not None:
                why += " this check did not add"
            self.record(None, "delete_events", f"user {user}: {why}", None)
            return
        params = {"user_id": user}
        if self.api_headers:
            shown, reply = _call("POST", f"{ev}/delete_events", params=params)
            self.record(reply.status == 401, "delete_events without API key -> 401", shown, reply)
        if before:  # what an earlier run left
            _call("POST", f"{ev}/delete_events", params=params, headers=self.api_headers)
        added = [
            _call(
                "POST",
                f"{ev}/add_event",
                params={**params, "track_id": t},
                headers=self.api_headers,
            )[1]
            for t in tracks
        ]
        shown, reply = _call("POST", f"{ev}/delete_events", params=params, headers=self.api_headers)
        ok = all(a.is_json for a in added) and reply.is_json
        ok = ok and reply.data == {"result": "ok", "deleted": len(tracks)}
        ok = ok and self.history_of(user) == []
        self.record(ok, "delete_events: the user's history deleted", shown, reply)

    def history_of(self, user_id: int) -> list[int] | None:
        """The user's latest events, as deep as the services read them (the larger of
        `online_history_k` and `exclude_events_max`), newest first; None if the read
        failed."""
        k = max(self.settings.online_history_k, self.settings.exclude_events_max)
        _, reply = _call(
            "POST",
            f"{self.events_url}/get_events",
            params={"user_id": user_id, "k": k},
            headers=self.api_headers,
        )
        events = reply.data.get("events") if isinstance(reply.data, dict) else None
        if reply.status != 200 or not isinstance(events, list):
            return None
        return [int(t) for t in events]

    def events_of(self, user_id: int) -> list[int]:
        """`history_of`, with a failed read as no events."""
        return self.history_of(user_id) or []

    def expected_online(self, picks: Picks, user_id: int, recent: list[int], k: int) -> list[int]:
        seeds = dedupe(recent)[: self.settings.online_history_k]
        similar = picks.similar_of(seeds, self.settings.online_similar_k)
        merged = merge_by_score((similar[s] for s in seeds), K_MAX * len(seeds), set(recent))
        return drop_heard(merged, picks.heard_of(user_id))[:k]

    def expected_offline(self, picks: Picks, user_id: int, n: int) -> list[int]:
        base = picks.warm_list if user_id == picks.warm_user else picks.popular
        return base[:n]

    def expected_blend(self, picks: Picks, user_id: int, k: int) -> list[int]:
        recent = self.events_of(user_id)
        online = self.expected_online(picks, user_id, recent, k)
        offline = self.expected_offline(picks, user_id, 2 * k + len(set(recent)))
        popular = unheard(picks.popular, picks.heard_of(user_id))
        return blend(online, offline, k, set(recent), popular)

    # --- the checks ----------------------------------------------------------------------

    def run(self, picks: Picks) -> None:
        """Every check, in this order: the online and blended checks expect the events
        that `check_events` adds. The checks that need a service the probes could not
        reach are one skip line per group (each call would fail the same way); the
        others run."""
        down = self.check_probes()
        locked = {} if "events" in down else self.check_events_key(picks)
        groups: list[tuple[str, set[str], Callable[[], None]]] = [
            ("offline", {"recommendations"}, lambda: self.check_offline(picks)),
            ("similar tracks", {"similar"}, lambda: self.check_similar(picks)),
            ("events", {"events"}, lambda: self.check_events(picks)),
            ("online and blended", set(self.urls), lambda: self.check_online_and_blend(picks)),
            ("bad requests", set(), lambda: self.check_bad_requests({**down, **locked})),
            ("metrics", set(), lambda: self.check_metrics(down)),
        ]
        for name, needs, check in groups:
            why = [
                f"{', '.join(f'{s} ({where[s]})' for s in which)} {reason}"
                for where, reason in ((down, "not reachable"), (locked, "asks for an API key"))
                if (which := [s for s in self.urls if s in needs and s in where])
            ]
            if why:
                self.record(None, f"{name} checks", f"not run: {'; '.join(why)}", None)
            else:
                check()

    def check_events_key(self, picks: Picks) -> dict[str, str]:
        """Without a key in the settings, one read of the event service: a 401 means it
        was started with one. That is one FAIL line saying which setting to give, and the
        checks that need the event service are skipped (each failed on its own, 14 lines
        of 401s and wrong lists that never said why). Returns {"events": url} then."""
        if self.api_headers:
            return {}
        url = f"{self.events_url}/get_events"
        shown, reply = _call("POST", url, params={"user_id": picks.verify_user, "k": 1})
        if reply.status != 401:
            return {}
        note = (
            "the event service asks for an API key: set MUSICREC_EVENTS_API_KEY (environment "
            "or .env) to the key it was started with"
        )
        self.record(False, "event service without an API key", shown, reply, note)
        return {"events": self.events_url}

    @property
    def urls(self) -> dict[str, str]:
        """Each service's base URL by its name."""
        return {
            "recommendations": self.recs_url,
            "similar": self.similar_url,
            "events": self.events_url,
        }

    def check_probes(self) -> dict[str, str]:
        """`/health` and `/ready` of each service; returns the services that gave no HTTP
        answer (refused, timed out, not HTTP), name -> URL."""
        down = {}
        for name, url in self.urls.items():
            reply = self.expect_json(f"{name} /health", "GET", f"{url}/health", _health(name))
            if reply.status == 0:
                down[name] = url
                continue
            self.expect_json(
                f"{name} /ready", "GET", f"{url}/ready", {"ready": True, "service": name}
            )
        return down

    def check_offline(self, picks: Picks) -> None:
        """Offline lists: a user the pipeline never saw (popular), and one it did."""
        rec = self.recs_url
        self.expect_json(
            "cold user offline = top popular",
            "POST",
            f"{rec}/recommendations_offline",
            {"recs": picks.popular[:K]},
            params={"user_id": picks.cold_user, "k": K},
        )
        if picks.warm_user >= 0:
            self.expect_json(
                "user with history offline = ranker's list",
                "POST",
                f"{rec}/recommendations_offline",
                {"recs": picks.warm_list[:K]},
                params={"user_id": picks.warm_user, "k": K},
            )
        else:
            self.record(None, "user with history offline", "no user in the artifacts", None)

    def check_similar(self, picks: Picks) -> None:
        """Similar tracks, single (express lane and route, an unknown track) and batch."""
        if picks.seeds:
            t = picks.seeds[0]
            tracks, scores = picks.similar_of([t], K)[t]
            shown, reply = _call(
                "POST", f"{self.similar_url}/similar_tracks", params={"track_id": t, "k": K}
            )
            ok = (
                reply.is_json
                and _same_similar(reply.data, tracks, scores)
                and all(a >= b for a, b in zip(scores, scores[1:], strict=False))
            )
            self.record(ok, "similar tracks, best first", shown, reply, f"expected {tracks}")
            # the same through the FastAPI route (a request the express lane leaves to it),
            # and a track the service does not know: empty lists
            shown, reply = _call(
                "POST",
                f"{self.similar_url}/similar_tracks",
                params={"track_id": t, "k": K, "source": "verify"},
            )
            ok = reply.is_json and _same_similar(reply.data, tracks, scores)
            self.record(ok, "similar tracks, route", shown, reply, f"expected {tracks}")
            if picks.similar_of([UNKNOWN_TRACK], 1)[UNKNOWN_TRACK] == ([], []):
                self.expect_json(
                    "similar tracks, unknown track: empty",
                    "POST",
                    f"{self.similar_url}/similar_tracks",
                    {"track_id_2": [], "score": []},
                    params={"track_id": UNKNOWN_TRACK, "k": K},
                )
            batch = picks.similar_of(picks.seeds, K)
            shown, reply = _call(
                "POST",
                f"{self.similar_url}/similar_tracks_batch",
                body={"track_ids": picks.seeds, "k": K},
            )
            results = reply.data.get("results") if isinstance(reply.data, dict) else None
            ok = (
                reply.is_json
                and isinstance(results, list)
                and [r.get("track_id") for r in results] == list(picks.seeds)
                and all(
                    _same_similar(r, *batch[s]) for s, r in zip(picks.seeds, results, strict=True)
                )
            )
            self.record(ok, "similar tracks batch", shown, reply)
        else:
            self.record(None, "similar tracks", "similar.parquet is empty", None)

    def check_events(self, picks: Picks) -> None:
        """The event service: API key, adds (a long history, an unknown track, a keyed
        retry), reads newest first, a batch read, a deletion and `/stats`."""
        ev = self.events_url
        user = picks.verify_user
        if self.api_headers:
            shown, reply = _call("POST", f"{ev}/add_event", params={"user_id": user, "track_id": 1})
            self.record(reply.status == 401, "add_event without API key -> 401", shown, reply)
            shown, reply = _call(
                "POST",
                f"{ev}/add_event",
                params={"user_id": user, "track_id": 1},
                headers={"X-API-Key": "wrong"},
            )
            self.record(reply.status == 401, "add_event wrong API key -> 401", shown, reply)
            shown, reply = _call("POST", f"{ev}/get_events", params={"user_id": user, "k": 5})
            self.record(reply.status == 401, "get_events without API key -> 401", shown, reply)
        else:
            self.record(None, "add_event API key", "events_api_key not set: open", None)
        # a history longer than the latest 100 events the services once left out: the most
        # popular tracks, oldest first, added once (events stay in the store for later
        # runs; `events_of` reads at least LONG_HISTORY when the check below runs)
        long_history = picks.popular[:LONG_HISTORY]
        if (
            self.settings.exclude_events_max >= LONG_HISTORY
            and len(long_history) == LONG_HISTORY
            and len(self.events_of(user)) < LONG_HISTORY
        ):
            statuses = [
                _call(
                    "POST",
                    f"{ev}/add_event",
                    params={"user_id": user, "track_id": t},
                    headers=self.api_headers,
                )[1].status
                for t in long_history
            ]
            ok = statuses == [200] * LONG_HISTORY
            counts = ", ".join(f"{n} x {code}" for code, n in sorted(Counter(statuses).items()))
            self.record(ok, f"add_event x{LONG_HISTORY}: popular tracks", "", None, counts)
        unknown_track = UNKNOWN_TRACK
        self.expect_status(
            "add_event unknown track accepted",
            "POST",
            f"{ev}/add_event",
            200,
            params={"user_id": user, "track_id": unknown_track},
            headers=self.api_headers,
        )
        # a retry with the same Idempotency-Key stores nothing: one event, the first id (of
        # another unknown track than the one just added: a duplicate shows in the history)
        keyed = {**self.api_headers, "Idempotency-Key": f"verify-{uuid.uuid4()}"}
        keyed_track = unknown_track - 1
        listen = {"user_id": user, "track_id": keyed_track}
        _, first = _call("POST", f"{ev}/add_event", params=listen, headers=keyed)
        latest = self.events_of(user)[:2]
        shown, again = _call("POST", f"{ev}/add_event", params=listen, headers=keyed)
        ok = (
            first.is_json
            and again.is_json
            and again.data == first.data
            and "idempotent-replayed" not in first.headers
            and again.headers.get("idempotent-replayed") == "true"
            and latest == [keyed_track, unknown_track]
            and self.events_of(user)[:2] == latest
        )
        self.record(ok, "add_event retried with one Idempotency-Key: stored once", shown, again)
        added = picks.seeds or picks.popular[:3]
        for t in added:
            self.expect_status(
                "add_event",
                "POST",
                f"{ev}/add_event",
                200,
                params={"user_id": user, "track_id": t},
                headers=self.api_headers,
            )
        newest_first = list(reversed(added))
        self.expect_json(
            "get_events newest first",
            "POST",
            f"{ev}/get_events",
            {"events": newest_first, "count": len(newest_first)},
            params={"user_id": user, "k": len(newest_first)},
            headers=self.api_headers,
        )
        self.expect_json(
            "get_events batch, one entry per user in order",
            "POST",
            f"{ev}/get_events_batch",
            {
                "results": [
                    {"user_id": user, "events": newest_first[:2]},
                    {"user_id": picks.cold_user, "events": []},
                ]
            },
            body={"user_ids": [user, picks.cold_user], "k": 2},
            headers=self.api_headers,
        )
        self.check_delete_events(picks.delete_user, (unknown_track, keyed_track))
        shown, reply = _call("GET", f"{ev}/stats", headers=self.api_headers)
        ok = (
            reply.status == 200
            and isinstance(reply.data, dict)
            and reply.data.get("events", 0) >= len(added) + 1
        )
        self.record(ok, "event /stats", shown, reply)

    def check_online_and_blend(self, picks: Picks) -> None:
        """Online and blended lists against what the artifacts and the events predict."""
        rec, user = self.recs_url, picks.verify_user
        recent = self.events_of(user)
        expected_online = self.expected_online(picks, user, recent, K)
        reply = self.expect_json(
            "online = similar to latest listens, heard ones removed",
            "POST",
            f"{rec}/recommendations_online",
            {"recs": expected_online},
            params={"user_id": user, "k": K},
        )
        if picks.seeds and not expected_online:
            self.record(False, "online not empty", "seeds have no similar tracks?", None)
        for who, uid in (("verify user (events)", user), ("user with history", picks.warm_user)):
            if uid < 0:
                continue
            expected = self.expected_blend(picks, uid, K)
            self.expect_json(
                f"blended, {who}: online/offline interleaved, exactly k",
                "POST",
                f"{rec}/recommendations",
                {"recs": expected},
                params={"user_id": uid, "k": K},
            )
        # every event of the verify user is left out, not only the latest 100 (the oldest
        # are the most popular tracks, first in its cold-start list)
        check = "blended, verify user: none of its events, older than the latest 100 too"
        events = self.events_of(user)
        if self.settings.exclude_events_max < LONG_HISTORY:
            self.record(None, check, "", None, "MUSICREC_EXCLUDE_EVENTS_MAX is below it")
        elif len(events) < LONG_HISTORY:
            self.record(
                None,
                check,
                "",
                None,
                f"the verify user has {len(events)} events, fewer than {LONG_HISTORY} (too few "
                "popular tracks, or adding them failed)",
            )
        else:
            shown, reply = _call("POST", f"{rec}/recommendations", params={"user_id": user, "k": K})
            got = reply.data.get("recs", []) if isinstance(reply.data, dict) else []
            ok = reply.status == 200 and len(got) == K and not set(got) & set(events)
            self.record(ok, check, shown, reply, "" if ok else f"{len(events)} events")
        # the longest list reaches the popular top-up: none of it heard before the fit
        check = f"blended, user with history, k={K_MAX}: nothing heard before the pipeline's fit"
        if picks.warm_user < 0 or picks.heard is None:
            self.record(None, check, "", None, "no user with history or no heard index")
        else:
            reply = self.expect_json(
                check,
                "POST",
                f"{rec}/recommendations",
                {"recs": self.expected_blend(picks, picks.warm_user, K_MAX)},
                params={"user_id": picks.warm_user, "k": K_MAX},
            )
            got = reply.data.get("recs", []) if isinstance(reply.data, dict) else []
            heard = picks.heard_of(picks.warm_user)
            if heard.size and np.isin(np.asarray(got, dtype=np.int64), heard).any():
                self.record(False, check, "", reply, "a heard track came back")
        self.expect_json(
            "blended, cold user without events",
            "POST",
            f"{rec}/recommendations",
            {"recs": self.expected_blend(picks, picks.cold_user, K)},
            params={"user_id": picks.cold_user, "k": K},
        )

    def check_bad_requests(self, down: dict[str, str]) -> None:
        """Bad requests are 422, never 500 (those to the services in `down` not sent)."""
        rec, ev = self.recs_url, self.events_url
        bad = [
            ("k=0", f"{rec}/recommendations", {"user_id": 1, "k": 0}, None),
            (f"k={K_MAX + 1}", f"{rec}/recommendations", {"user_id": 1, "k": K_MAX + 1}, None),
            ("user_id=-1", f"{rec}/recommendations_offline", {"user_id": -1}, None),
            ("user_id=2**31", f"{rec}/recommendations_online", {"user_id": 2**31}, None),
            ("user_id=abc", f"{rec}/recommendations", {"user_id": "abc"}, None),
            ("track_id=-5", f"{self.similar_url}/similar_tracks", {"track_id": -5}, None),
            ("get_events k=0", f"{ev}/get_events", {"user_id": 1, "k": 0}, None),
            (
                "add_event track_id=2**31",
                f"{ev}/add_event",
                {"user_id": 1, "track_id": 2**31},
                None,
            ),
            (
                f"batch of {SIMILAR_BATCH_MAX_SEEDS + 1} ids",
                f"{self.similar_url}/similar_tracks_batch",
                None,
                {"track_ids": list(range(SIMILAR_BATCH_MAX_SEEDS + 1)), "k": 5},
            ),
        ]
        skipped = tuple(f"{url}/" for url in down.values())
        for label, url, params, body in bad:
            if url.startswith(skipped):
                continue
            self.expect_status(
                f"bad request {label} -> 422",
                "POST",
                url,
                422,
                params=params,
                body=body,
                headers=self.api_headers,
            )

    def check_metrics(self, down: dict[str, str]) -> None:
        """Each service's `/metrics` counted requests (but the services in `down`)."""
        for name, url in self.urls.items():
            if name in down:
                continue
            shown, reply = _call("GET", f"{url}/metrics")
            # a sample that counted requests (the name alone is in the HELP line anyway)
            ok = reply.status == 200 and any(
                line.startswith("http_requests_total{") and _sample_value(line) >= 1
                for line in reply.body.decode("utf-8", "replace").splitlines()
            )
            self.record(ok, f"{name} /metrics", shown, Reply(reply.status, reply.body[:120], None))


def _same_similar(data: Any, tracks: list[int], scores: list[float]) -> bool:
    """`data` is `{"track_id_2": tracks, "score": scores, ...}` (scores to 1e-5)."""
    if not isinstance(data, dict) or data.get("track_id_2") != tracks:
        return False
    got = data.get("score")
    return (
        isinstance(got, list)
        and len(got) == len(scores)
        and bool(np.allclose(got, scores, rtol=1e-5))
    )


def _sample_value(line: str) -> float:
    """The value of a Prometheus sample line (`name{labels} value`); -1 if unreadable."""
    try:
        return float(line.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return -1.0


def _health(name: str) -> dict[str, str]:
    return {"status": "ok", "service": name}


def run_verification(
    settings: Settings | None = None,
    *,
    recs_url: str | None = None,
    similar_url: str | None = None,
    events_url: str | None = None,
    log_path: str | Path = "service_test.log",
) -> int:
    """Run every check against the running services; 0 when all passed, else 1. A URL
    given without `http://` or `https://` raises `ConfigError` (nothing is checked)."""
    cfg = settings or get_settings()
    for flag, url in (
        ("--recs-url", recs_url),
        ("--similar-url", similar_url),
        ("--events-url", events_url),
    ):
        if url is not None:
            try:
                check_base_url(url)
            except ValueError as exc:
                raise ConfigError(f"{flag} {url!r}: {exc}") from None
    v = Verifier(
        cfg,
        (recs_url or cfg.recs_base_url).rstrip("/"),
        (similar_url or cfg.similar_base_url).rstrip("/"),
        (events_url or cfg.events_base_url).rstrip("/"),
    )
    start = time.perf_counter()
    try:
        picks = pick_ids(cfg)
    except (ArtifactError, OSError) as exc:
        v.record(False, "pick ids from the artifacts", str(exc), None)
    else:
        v.record(
            True,
            "pick ids from the artifacts",
            f"warm user {picks.warm_user}, cold user {picks.cold_user}, "
            f"verify user {picks.verify_user}, deletion user {picks.delete_user}, "
            f"seeds {picks.seeds}",
            None,
        )
        try:
            v.run(picks)
        except Exception as exc:  # noqa: BLE001 - the log must say the run stopped, and why
            v.record(False, "verification run", f"stopped: {type(exc).__name__}: {exc}", None)
    summary = (
        f"{'PASSED' if v.failures == 0 else 'FAILED'}: {v.passed} passed, {v.failures} failed, "
        f"{v.skipped} skipped in {time.perf_counter() - start:.2f}s"
    )
    text = "\n".join([*v.lines, summary]) + "\n"
    target = Path(log_path)
    if target.exists() and not target.is_file():  # a pipe or a device: `--log /dev/stdout`
        with open(target, "w", encoding="utf-8") as out:
            out.write(text)
    else:  # whole or not at all; a symlink at the path is replaced, not written through
        write_bytes(text.encode(), target)
    print(summary, flush=True)
    return 0 if v.failures == 0 else 1
