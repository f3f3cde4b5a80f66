"""The ids verify_service.py checks with: the verifier's events go to a reserved user id,
never to the next id a new user of sequentially numbered data would get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from musicrec.artifacts import ArtifactPaths
from musicrec.errors import ArtifactError
from musicrec.io import write_parquet
from musicrec.service_common import INT32_MAX
from musicrec.verify import RESERVED_COLD_USER, RESERVED_VERIFY_USER, pick_ids, run_verification

from .artifacts_fixture import write_fake_artifacts
from .conftest import make_settings


def test_the_verifier_writes_to_a_reserved_user(artifacts: dict[str, Any], tmp_path: Path) -> None:
    picks = pick_ids(make_settings(artifacts["root"], tmp_path))
    assert (picks.verify_user, picks.cold_user) == (INT32_MAX - 1, INT32_MAX - 2)
    assert (RESERVED_VERIFY_USER, RESERVED_COLD_USER) == (INT32_MAX - 1, INT32_MAX - 2)
    known = pd.read_parquet(ArtifactPaths(artifacts["root"]).recommendations)["user_id"]
    assert picks.verify_user not in set(known) and picks.cold_user not in set(known)
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
    assert (picks.cold_user, picks.verify_user) == (lo - 1, lo - 2)


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
