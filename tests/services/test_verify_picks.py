"""The ids verify_service.py checks with: the verifier's events go to a reserved user id,
never to the next id a new user of sequentially numbered data would get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from musicrec.artifacts import ArtifactPaths
from musicrec.errors import ArtifactError
from musicrec.io import write_parquet
from musicrec.service_common import INT32_MAX
from musicrec.verify import (
    RESERVED_COLD_USER,
    RESERVED_DELETE_USER,
    RESERVED_VERIFY_USER,
    pick_ids,
    run_verification,
)

from .artifacts_fixture import write_fake_artifacts
from .conftest import make_settings


def test_the_verifier_writes_to_a_reserved_user(artifacts: dict[str, Any], tmp_path: Path) -> None:
    picks = pick_ids(make_settings(artifacts["root"], tmp_path))
    mine = (picks.verify_user, picks.cold_user, picks.delete_user)
    assert mine == (INT32_MAX - 1, INT32_MAX - 2, INT32_MAX - 3)
    assert mine == (RESERVED_VERIFY_USER, RESERVED_COLD_USER, RESERVED_DELETE_USER)
    known = pd.read_parquet(ArtifactPaths(artifacts["root"]).recommendations)["user_id"]
    assert not set(mine) & set(known)
    assert picks.warm_user in set(known)


def test_ids_below_the_smallest_when_the_reserved_ones_are_taken(tmp_path: Path) -> None:
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    paths = ArtifactPaths(root)
    recs = pd.read_parquet(paths.recommendations)
    lo = int(recs["user_id"].min())
    taken = recs[recs["user_id"] == recs["user_id"].iloc[0]].assign(user_id=RESERVED_COLD_USER)
    write_parquet(pd.concat([recs, taken], ignore_index=True), paths.recommendations)
    picks = pick_ids(make_settings(root, tmp_path))
    assert (picks.cold_user, picks.verify_user, picks.delete_user) == (lo - 1, lo - 2, lo - 3)


def test_a_damaged_artifact_is_a_failed_check_in_the_log(tmp_path: Path) -> None:
    """A recommendations file that is not parquet: `pick_ids` raises `ArtifactError`, and
    the verifier writes its log with that failure and exits 1 (it died with a pyarrow
    traceback and no log before)."""
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    ArtifactPaths(root).recommendations.write_bytes(b"not a parquet file")
    cfg = make_settings(root, tmp_path)
    with pytest.raises(ArtifactError, match="cannot read the artifacts"):
        pick_ids(cfg)
    log = tmp_path / "service_test.log"
    assert run_verification(cfg, log_path=log) == 1
    lines = log.read_text().splitlines()
    assert any(x.startswith("FAIL pick ids from the artifacts") for x in lines), lines


def test_a_peer_that_is_not_http_is_a_failed_check_and_the_log_is_written(
    tmp_path: Path,
) -> None:
    """Every service address answering a line that is not HTTP (`BadStatusLine`, not an
    `OSError`): failed checks in a fresh log, exit 1, no traceback; a stale PASSED log of
    an earlier run is replaced."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    stop = threading.Event()

    def answer() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    log = tmp_path / "service_test.log"
    log.write_text("PASSED: 37 passed, 0 failed, 1 skipped in 0.60s\n")
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        rc = run_verification(
            make_settings(root, tmp_path),
            recs_url=url,
            similar_url=url,
            events_url=url,
            log_path=log,
        )
    finally:
        stop.set()
        thread.join()
        server.close()
    lines = log.read_text().splitlines()
    assert rc == 1 and lines[-1].startswith("FAILED:"), lines[-3:]
    assert any(x.startswith("FAIL") and "BadStatusLine" in x for x in lines), lines[:5]


def test_a_check_that_raises_is_a_failed_line_and_the_log_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from musicrec import verify

    def broken(self: object, picks: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(verify.Verifier, "run", broken)
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    log = tmp_path / "service_test.log"
    assert run_verification(make_settings(root, tmp_path), log_path=log) == 1
    lines = log.read_text().splitlines()
    assert "FAIL verification run: stopped: RuntimeError: boom" in lines, lines
    assert lines[-1].startswith("FAILED: 1 passed, 1 failed")


def test_the_recommendation_service_address_comes_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`MUSICREC_RECS_URL` was read by `verify_service.py` alone (from the environment),
    so `python -m musicrec verify` and `serve --verify` ignored it; it is a setting now,
    as the similar and event services' URLs are."""
    from musicrec.settings import Settings

    monkeypatch.setenv("MUSICREC_RECS_URL", "http://127.0.0.1:1/recs")
    assert Settings(_env_file=None).recs_base_url == "http://127.0.0.1:1/recs"
    monkeypatch.delenv("MUSICREC_RECS_URL")
    assert Settings(_env_file=None, recs_port=8123).recs_base_url == "http://127.0.0.1:8123"
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    log = tmp_path / "service_test.log"
    cfg = make_settings(root, tmp_path, recs_url="http://127.0.0.1:1/recs")
    assert run_verification(cfg, log_path=log) == 1
    lines = log.read_text().splitlines()
    assert any(
        x.startswith("FAIL recommendations /health: GET http://127.0.0.1:1/recs/health")
        for x in lines
    ), lines


def test_services_not_running_are_one_failure_each(tmp_path: Path) -> None:
    """Nothing listening: one failed `/health` per service and the other checks not run
    (39 lines of "Connection refused" before, each a failure)."""
    from .conftest import distinct_free_ports

    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    urls = [f"http://127.0.0.1:{port}" for port in distinct_free_ports(3)]
    log = tmp_path / "service_test.log"
    rc = run_verification(
        make_settings(root, tmp_path),
        recs_url=urls[0],
        similar_url=urls[1],
        events_url=urls[2],
        log_path=log,
    )
    lines = log.read_text().splitlines()
    assert rc == 1
    failed = [x for x in lines if x.startswith("FAIL ")]
    assert [x.split(":")[0] for x in failed] == [
        "FAIL recommendations /health",
        "FAIL similar /health",
        "FAIL events /health",
    ], lines
    assert all("connection failed" in x for x in failed)
    skips = [x for x in lines if x.startswith("SKIP ")]
    assert skips == [
        f"SKIP offline checks: not run: recommendations ({urls[0]}) not reachable",
        f"SKIP similar tracks checks: not run: similar ({urls[1]}) not reachable",
        f"SKIP events checks: not run: events ({urls[2]}) not reachable",
        f"SKIP online and blended checks: not run: recommendations ({urls[0]}), similar "
        f"({urls[1]}), events ({urls[2]}) not reachable",
    ]
    assert lines[-1].startswith("FAILED: 1 passed, 3 failed, 4 skipped")


def test_the_services_that_answer_are_checked_when_one_is_down(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """The event service down: the offline and similar-tracks checks, their bad requests
    and metrics still run (and pass), the checks that need events are skipped (the first
    version of the early stop skipped them all)."""
    from musicrec.service_recommendations import create_app as recs_app
    from musicrec.service_similar import create_app as similar_app

    from .conftest import ThreadedServer, running

    cfg = make_settings(artifacts["root"], tmp_path)  # nothing on cfg.events_port
    log = tmp_path / "service_test.log"
    with running(
        [
            ThreadedServer(similar_app(cfg), cfg.similar_port),
            ThreadedServer(recs_app(cfg), cfg.recs_port),
        ]
    ):
        rc = run_verification(cfg, log_path=log)
    lines = log.read_text().splitlines()
    assert rc == 1
    failed = [x.split(":")[0] for x in lines if x.startswith("FAIL ")]
    assert failed == ["FAIL events /health"], lines
    passed = [x.split(":")[0] for x in lines if x.startswith("PASS ")]
    for check in (
        "PASS cold user offline = top popular",
        "PASS user with history offline = ranker's list",
        "PASS similar tracks, best first",
        "PASS similar tracks batch",
        "PASS bad request k=0 -> 422",
        "PASS bad request track_id=-5 -> 422",
        "PASS recommendations /metrics",
        "PASS similar /metrics",
    ):
        assert check in passed, (check, passed)
    assert not any("get_events" in x or "events /metrics" in x for x in passed), passed
    skips = [x.split(":")[0] for x in lines if x.startswith("SKIP ")]
    assert skips == ["SKIP events checks", "SKIP online and blended checks"], lines


@pytest.mark.parametrize("flag", ["--recs-url", "--similar-url", "--events-url"])
def test_a_url_without_a_scheme_is_refused(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--recs-url localhost:8000` was taken, and every check failed with "unknown url
    type": now one error line, exit 2, and no log written."""
    import verify_service

    log = tmp_path / "service_test.log"
    assert verify_service.main([flag, "localhost:8000", "--log", str(log)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {flag} 'localhost:8000': not a base URL: it needs http:// or https:// and a "
        "host (e.g. http://127.0.0.1:8000)\n"
    )
    assert not log.exists()


def test_a_user_at_the_lowest_reserved_id_makes_the_picks_go_below_the_smallest(
    tmp_path: Path,
) -> None:
    """A listener whose id is `RESERVED_DELETE_USER` itself (the lowest reserved id): the
    reserved ids are not free, or the deletion check would delete that listener's
    history; the ids below the smallest are taken instead."""
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    paths = ArtifactPaths(root)
    recs = pd.read_parquet(paths.recommendations)
    lo = int(recs["user_id"].min())
    taken = recs[recs["user_id"] == recs["user_id"].iloc[0]].assign(user_id=RESERVED_DELETE_USER)
    write_parquet(pd.concat([recs, taken], ignore_index=True), paths.recommendations)
    picks = pick_ids(make_settings(root, tmp_path))
    assert (picks.cold_user, picks.verify_user, picks.delete_user) == (lo - 1, lo - 2, lo - 3)


def test_ids_are_picked_from_a_file_written_without_statistics(tmp_path: Path) -> None:
    """A recommendations file without parquet statistics (another writer's): the user
    ids' range is read from the column itself, not a crash."""
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    paths = ArtifactPaths(root)
    recs = pd.read_parquet(paths.recommendations)
    lo = int(recs["user_id"].min())
    taken = recs.iloc[:1].assign(user_id=RESERVED_DELETE_USER)  # only the column says so
    pq.write_table(
        pa.Table.from_pandas(pd.concat([recs, taken], ignore_index=True), preserve_index=False),
        paths.recommendations,
        write_statistics=False,
    )
    assert pq.ParquetFile(paths.recommendations).metadata.row_group(0).column(0).statistics is None
    picks = pick_ids(make_settings(root, tmp_path))
    assert (picks.cold_user, picks.verify_user, picks.delete_user) == (lo - 1, lo - 2, lo - 3)
    assert picks.warm_user == int(recs["user_id"].iloc[0])


def test_an_empty_recommendations_file_means_no_user_with_history(tmp_path: Path) -> None:
    """Recommendations without a row (no row group at all): no warm user (its checks
    skipped), the reserved ids for the others, no crash."""
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    paths = ArtifactPaths(root)
    schema = pq.read_schema(paths.recommendations)
    pq.ParquetWriter(paths.recommendations, schema).close()  # a schema, no row group
    assert pq.ParquetFile(paths.recommendations).metadata.num_row_groups == 0
    picks = pick_ids(make_settings(root, tmp_path))
    assert (picks.warm_user, picks.warm_list) == (-1, [])
    mine = (picks.verify_user, picks.cold_user, picks.delete_user)
    assert mine == (RESERVED_VERIFY_USER, RESERVED_COLD_USER, RESERVED_DELETE_USER)


def test_user_id_0_is_a_user_with_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids start at 0 in the source data: a warm user 0 has its offline list checked
    (only -1, no user in the artifacts, skips the check)."""
    from musicrec import verify
    from musicrec.settings import Settings
    from musicrec.verify import Picks, Reply, Verifier

    asked: list[int] = []

    def call(method: str, url: str, **kw: Any) -> tuple[str, Reply]:
        asked.append(kw["params"]["user_id"])
        return f"{method} {url}", Reply(200, b"", {"recs": [7, 8]}, "application/json")

    monkeypatch.setattr(verify, "_call", call)
    picks = Picks(0, [7, 8], 5, 6, 4, [7, 8], [], lambda tracks, k: {})
    v = Verifier(Settings(), "http://r", "http://s", "http://e")
    v.check_offline(picks)
    assert asked == [5, 0]
    assert [x.split(":")[0] for x in v.lines] == [
        "PASS cold user offline = top popular",
        "PASS user with history offline = ranker's list",
    ]
    v = Verifier(Settings(), "http://r", "http://s", "http://e")
    v.check_offline(Picks(-1, [], 5, 6, 4, [7, 8], [], lambda tracks, k: {}))
    assert v.lines[1] == "SKIP user with history offline: no user in the artifacts"


def test_the_expected_lists_keep_track_0_and_drop_the_padding() -> None:
    """A list read from the artifacts is in rank order without the -1 padding; track id
    0 is a track (ids start at 0), kept: dropped, the verifier would fail a service that
    serves it."""
    from musicrec.verify import _sorted_by_rank

    table = pa.table({"track_id": [5, 0, -1, 9], "rank": [3, 1, 2, 4]})
    assert _sorted_by_rank(table, "track_id") == [0, 5, 9]


def test_similar_of_is_the_top_k_by_rank_without_the_track_itself(tmp_path: Path) -> None:
    """What the verifier expects of /similar_tracks: each track's k best by rank (not one
    more: the real artifacts hold 20 a track, the checks ask for 10), never the track
    itself or the -1 padding; a track without similar tracks has empty lists."""
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    sim = pd.DataFrame(
        [(5, 7, 0.5, 2), (5, 6, 0.75, 1), (5, 5, 1.0, 3), (5, 9, 0.25, 4), (5, -1, 0.0, 5)]
        + [(8, 5, 0.5, 1), (8, 0, 0.25, 2)],
        columns=["track_id_1", "track_id_2", "score", "rank"],
    ).astype({"score": "float32"})
    write_parquet(sim, ArtifactPaths(root).similar)
    picks = pick_ids(make_settings(root, tmp_path))
    assert picks.seeds == [5, 8]
    assert picks.similar_of([5], 2) == {5: ([6, 7], [0.75, 0.5])}
    assert picks.similar_of([5, 8], 10) == {
        5: ([6, 7, 9], [0.75, 0.5, 0.25]),
        8: ([5, 0], [0.5, 0.25]),  # track 0 is a track
    }
    assert picks.similar_of([4], 3) == {4: ([], [])}
    assert picks.similar_of([], 3) == {}


def test_the_ids_below_the_smallest_stop_at_0(tmp_path: Path) -> None:
    """Reserved ids taken and the smallest user id 3: the picks are 2, 1 and 0; at 2
    there are not three ids below it, an `ArtifactError` (a pick of -1 would be a 422
    for every call with it)."""
    root = tmp_path / "art"
    write_fake_artifacts(root, n_users=10, n_tracks=100, seed=3)
    paths = ArtifactPaths(root)
    recs = pd.read_parquet(paths.recommendations)
    first, second = recs["user_id"].unique()[:2]
    for low, picked in ((3, (2, 1, 0)), (2, None)):
        ids = recs["user_id"].replace({first: low, second: RESERVED_COLD_USER})
        write_parquet(recs.assign(user_id=ids), paths.recommendations)
        if picked is None:
            with pytest.raises(ArtifactError, match="no free user id for a cold user"):
                pick_ids(make_settings(root, tmp_path))
        else:
            picks = pick_ids(make_settings(root, tmp_path))
            assert (picks.cold_user, picks.verify_user, picks.delete_user) == picked
