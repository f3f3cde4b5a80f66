"""Small artifacts for the service tests.

`write_fake_artifacts(root, n_users, n_tracks, seed)` writes the files the services read
(`recommendations/recommendations.parquet`, `top_popular.parquet`, `similar.parquet`,
`personal_als.parquet`, and the heard index `recommendations/heard/`) under `root` with
the pipeline's columns, deliberately unsorted, with sparse non-contiguous ids, a user with
a short list, tracks without similar tracks, and histories that hold popular and similar
tracks but none of the user's own list (as the pipeline guarantees). It returns
`describe_artifacts(root)`, which derives everything the tests need from the files alone -
so a tiny real pipeline run can replace the fake writer: run the pipeline into `root`, then
call `describe_artifacts(root)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from musicrec.artifacts import ArtifactPaths
from musicrec.heard import HeardIndex
from musicrec.io import write_parquet


def write_fake_artifacts(
    root: Path, n_users: int = 40, n_tracks: int = 300, seed: int = 0
) -> dict[str, Any]:
    """Write fake artifacts under `root` (the artifacts dir) and describe them."""
    rng = np.random.default_rng(seed)
    paths = ArtifactPaths(Path(root))
    paths.ensure_dirs()
    tracks = rng.choice(np.arange(10, 50_000_000), size=n_tracks, replace=False)
    users = rng.choice(np.arange(0, 1_500_000), size=n_users, replace=False)

    # top popular: every track, by listeners
    listeners = np.sort(rng.integers(1, 100_000, size=n_tracks))[::-1]
    pop = pd.DataFrame(
        {
            "track_id": tracks,
            "rank": np.arange(1, n_tracks + 1),
            "listeners": listeners,
            "track_name": [f"track {t}" for t in tracks],
            "artist_names": [f"artist {t % 97}" for t in tracks],
        }
    ).sample(frac=1.0, random_state=seed)
    write_parquet(pop, paths.top_popular)

    # ranker's lists: 20..60 tracks each, one user with only 3
    frames = []
    for i, u in enumerate(users):
        n = 3 if i == 1 else int(rng.integers(20, 61))
        items = rng.choice(tracks, size=n, replace=False)
        scores = np.sort(rng.random(n))[::-1]
        frames.append(
            pd.DataFrame(
                {"user_id": u, "track_id": items, "score": scores, "rank": np.arange(1, n + 1)}
            )
        )
    recs = pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed)
    write_parquet(recs, paths.recommendations)
    write_parquet(recs, paths.personal_als)

    # similar: 10 per track for ~80% of the tracks, float32 scores
    rows = []
    for t in tracks[: int(n_tracks * 0.8)]:
        others = rng.choice(tracks[tracks != t], size=10, replace=False)
        sim_scores = np.sort(rng.random(10).astype(np.float32))[::-1]
        for r, (o, s) in enumerate(zip(others, sim_scores, strict=True), start=1):
            rows.append((int(t), int(o), float(s), r))
    sim = pd.DataFrame(rows, columns=["track_id_1", "track_id_2", "score", "rank"])
    sim["score"] = sim["score"].astype(np.float32)
    write_parquet(sim.sample(frac=1.0, random_state=seed), paths.similar)

    # what each user heard before the fit: 5..30 tracks outside the user's list, a third
    # of them among the 60 most popular (so that top-ups meet them); one user heard nothing
    by_user = recs.groupby("user_id")["track_id"].agg(set)
    popular_head = pop.sort_values("rank")["track_id"].to_numpy()[:60]
    heard_users, heard_tracks = [], []
    for i, u in enumerate(sorted(int(x) for x in users)):
        if i == 2:
            continue
        allowed = np.setdiff1d(tracks, list(by_user[u]))
        n = int(rng.integers(5, 31))
        head = np.intersect1d(popular_head, allowed)
        pick = np.union1d(
            rng.choice(head, size=min(n // 3, head.size), replace=False),
            rng.choice(allowed, size=n - n // 3, replace=False),
        )
        heard_users.append(np.full(pick.size, u))
        heard_tracks.append(pick)
    hu, ht = np.concatenate(heard_users), np.concatenate(heard_tracks)
    offsets = np.r_[0, np.cumsum([a.size for a in heard_users])].astype(np.int64)
    HeardIndex(np.unique(hu), offsets, ht.astype(np.int64)).save(paths.heard_dir)
    return describe_artifacts(root)


def describe_artifacts(root: Path) -> dict[str, Any]:
    """What the tests need to know, computed from the artifact files under `root`.

    Keys: `root`, `popular` (track ids by rank), `recs` (user -> ranked track ids),
    `warm_user` (the user with the longest list), `short_user` (the shortest list),
    `cold_user` (an id with no list), `similar` (track -> (ids, scores) best first),
    `similar_tracks` (tracks that have similar tracks, by id), `no_similar_track` (a
    catalogue track without any, or None), `heard` (user -> sorted tracks heard before the
    fit, from the heard index; empty when there is none).
    """
    paths = ArtifactPaths(Path(root))
    pop = pd.read_parquet(paths.top_popular).sort_values("rank", kind="stable")
    popular = [int(t) for t in pop["track_id"]]
    rec = pd.read_parquet(paths.recommendations).sort_values(["user_id", "rank"])
    recs = {int(cast(int, u)): [int(t) for t in g["track_id"]] for u, g in rec.groupby("user_id")}
    sim = pd.read_parquet(paths.similar).sort_values(["track_id_1", "rank"])
    similar = {
        int(cast(int, t)): ([int(x) for x in g["track_id_2"]], [float(s) for s in g["score"]])
        for t, g in sim.groupby("track_id_1")
    }
    heard: dict[int, list[int]] = {}
    if paths.heard_dir.exists():
        index = HeardIndex.load(paths.heard_dir, mmap=False)
        for i, u in enumerate(index.users.tolist()):
            heard[int(u)] = index.tracks[index.offsets[i] : index.offsets[i + 1]].tolist()
    by_len = sorted(recs, key=lambda u: (len(recs[u]), u))
    no_similar = [t for t in popular if t not in similar]
    return {
        "root": Path(root),
        "popular": popular,
        "recs": recs,
        "warm_user": by_len[-1],
        "short_user": by_len[0],
        "cold_user": max(recs) + 1,
        "similar": similar,
        "similar_tracks": sorted(similar),
        "no_similar_track": no_similar[0] if no_similar else None,
        "heard": heard,
    }
