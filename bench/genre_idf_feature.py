"""A genre-profile cosine with rare genres weighted up, tried on the label windows before
it enters the package (issue #3 experiment, after `user_genre_cosine` was adopted).

    python bench/quality.py --only lastfm                          # the artifacts this reads
    python bench/genre_idf_feature.py --windows 0 1 2 --seeds 42 43

`user_genre_idf_cosine` of (user u, candidate c), from the history before the row's window
only: with P[g] u's listens in genre g (every genre of every track heard, as for
`user_genre_cosine`) and w_g = -ln(share of the history's (listen, genre) pairs that are in
g), the cosine of the weighted profile P o w with c's weighted 0/1 genre vector,
    sum over c's genres of P[g] w_g^2 / (|P o w| * sqrt(sum over c's genres of w_g^2)),
0 when either side has no genre, and 0 (hidden) when c has at most
`ranker.genre_min_listeners` listeners, as the package's genre features. Plain cosine
lets the few genres most users listen to dominate every profile; the weights let a shared
rare genre count more.

It is added to the dumped training rows (`bench/ranker_dump.py`) of every label window; then,
as `ranker_rolling.py` does, each of `--windows` is scored by the config's ranker fit on the
older windows, with and without the feature (never the test window). Printed: the feature's
within-user AUC per window, each window's and the pooled paired differences from the ALS
score, and the pooled paired difference with - without.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from ranker_dump import context, load_dump  # noqa: E402
from ranker_rolling import feature_gain, feature_parser  # noqa: E402

from musicrec.columns import Columns as C  # noqa: E402
from musicrec.metrics import summarize, within_user_auc  # noqa: E402
from musicrec.pipeline import label_windows  # noqa: E402
from musicrec.ranker import TARGET, WINDOW  # noqa: E402

NAME = "user_genre_idf_cosine"
METRICS = ("ndcg@10", "recall@5")


def track_genres(items: pd.DataFrame) -> pd.DataFrame:
    """(track_id, genre) pairs, each genre of a track once."""
    g = items[[C.Item, C.GenreIds]].explode(C.GenreIds).dropna()
    g[C.GenreIds] = g[C.GenreIds].astype(np.int64)
    return g.drop_duplicates().reset_index(drop=True)


def genre_idf_cosine(
    history: pd.DataFrame,
    genres: pd.DataFrame,
    rows: pd.DataFrame,
    min_listeners: int,
    idf: bool = True,
) -> np.ndarray:
    """`user_genre_idf_cosine` (module docstring) of each (user, track) row of `rows`;
    with `idf=False` every weight is 1: the package's `user_genre_cosine` (a check)."""
    pairs = history[[C.User, C.Item]].merge(genres, on=C.Item)  # (listen, genre) pairs
    share = pairs[C.GenreIds].value_counts(normalize=True)
    weight = pd.Series(-np.log(share.to_numpy()) if idf else 1.0, index=share.index)
    prof = pairs.groupby([C.User, C.GenreIds]).size().rename("p").reset_index()
    prof["pw2"] = prof["p"] * prof[C.GenreIds].map(weight) ** 2  # P[g] w_g^2
    norm = np.sqrt((prof["p"] * prof[C.GenreIds].map(weight)).pow(2).groupby(prof[C.User]).sum())
    r = pd.DataFrame({"row": np.arange(len(rows)), C.User: rows[C.User].to_numpy()})
    r[C.Item] = rows[C.Item].to_numpy()
    rg = r.merge(genres, on=C.Item)  # (row, genre of its track)
    rg["w2"] = rg[C.GenreIds].map(weight).fillna(0.0) ** 2  # a genre unheard: weight 0
    rg = rg.merge(prof[[C.User, C.GenreIds, "pw2"]], on=[C.User, C.GenreIds], how="left")
    num = rg["pw2"].fillna(0.0).groupby(rg["row"]).sum()
    gnorm = np.sqrt(rg["w2"].groupby(rg["row"]).sum())
    unorm = rg.groupby("row")[C.User].first().map(norm)
    denom = (gnorm * unorm).to_numpy()
    out = np.zeros(len(rows), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.where(denom > 0, num.to_numpy() / denom, 0.0)
    out[num.index.to_numpy()] = np.nan_to_num(vals)
    out[rows["item_listeners"].to_numpy() <= min_listeners] = 0.0
    return out


def main() -> None:
    args = feature_parser(__doc__).parse_args()
    ctx = context(args)
    train, _ = load_dump(ctx, args.work)
    genres = track_genres(ctx.prepared.items)
    min_listeners = ctx.cfg.ranker.genre_min_listeners
    train[NAME] = np.float32(0)
    for w, split in enumerate(label_windows(ctx)):
        rows = (train[WINDOW] == w).to_numpy()
        train.loc[rows, NAME] = genre_idf_cosine(split.history, genres, train[rows], min_listeners)
        part = train[rows]
        plain = genre_idf_cosine(split.history, genres, part, min_listeners, idf=False)
        gap = np.abs(plain - part["user_genre_cosine"].to_numpy()).max()
        assert gap < 1e-4, f"window {w}: unweighted version off user_genre_cosine by {gap}"
        aucs = [
            summarize(within_user_auc(part[C.User], part[f], part[TARGET]))["mean"]
            for f in (NAME, "user_genre_cosine")
        ]
        print(
            f"window {w} (from {split.start.date()}): within-user AUC of {NAME} {aucs[0]:.3f},"
            f" user_genre_cosine {aucs[1]:.3f}",
            flush=True,
        )
    base = ctx.cfg.ranker.model_copy(update={"thread_count": args.threads, "bag_size": 1})
    feature_gain(train, NAME, base, args.windows, args.seeds, ctx.cfg.top_k, METRICS)


if __name__ == "__main__":
    main()
