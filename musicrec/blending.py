"""Pure functions that turn candidate lists into the served lists.

Nothing here does I/O: the recommendation service and the verification script use the same
functions, and the unit tests pin the rules:

* `merge_by_score` - online candidates from several seed tracks, merged by their best score
  (max over sources), best first, without excluded (recently heard) tracks;
* `dedupe` / `top_up` - the clean-up steps;
* `blend` - the whole `/recommendations` rule: interleave online and offline, drop
  duplicates and recently heard tracks, cut to `k`, top up from the popular list.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from itertools import zip_longest

_MISSING = object()


def dedupe(items: Iterable[int]) -> list[int]:
    """Drop repeated ids, keeping the first occurrence (order preserved)."""
    return list(dict.fromkeys(items))


def top_up(
    items: Sequence[int], fill: Iterable[int], k: int, banned: Collection[int] = ()
) -> list[int]:
    """Cut `items` to `k` and append ids from `fill` (skipping those already present or
    banned) until there are `k`, or `fill` runs out. `items` must be duplicate-free."""
    out = list(items[:k])
    if len(out) >= k:
        return out
    seen = set(out)
    for item in fill:
        if item in seen or item in banned:
            continue
        out.append(item)
        seen.add(item)
        if len(out) >= k:
            break
    return out


def merge_by_score(
    sources: Iterable[tuple[Sequence[int], Sequence[float]]],
    k: int,
    banned: Collection[int] = (),
) -> list[int]:
    """Merge `(track_ids, scores)` lists from several seeds into one list, best first.

    A track found from several seeds keeps its best score (max over sources). Ties keep
    the order in which the tracks were first met (seed order, then rank), so the answer is
    deterministic. Tracks in `banned` (recently heard) are dropped before cutting to `k`.
    """
    best: dict[int, float] = {}
    for tracks, scores in sources:
        for track, score in zip(tracks, scores, strict=True):
            if track in banned:
                continue
            prev = best.get(track)
            if prev is None or score > prev:
                best[track] = score
    # `sorted` is stable also with reverse=True: ties keep the first-met order
    return sorted(best, key=best.__getitem__, reverse=True)[:k]


def blend(
    online: Sequence[int],
    offline: Sequence[int],
    k: int,
    exclude: Collection[int] = (),
    popular: Iterable[int] = (),
) -> list[int]:
    """The blended list of `/recommendations`.

    `[online[0], offline[0], online[1], offline[1], ...]`, duplicates removed keeping the
    first occurrence, tracks in `exclude` (the user's latest events) removed, cut to `k`,
    then topped up from `popular`
    so that exactly `k` ids come back whenever the candidates and the popular list together
    hold that many distinct unheard tracks.
    """
    if k <= 0:
        return []
    banned = exclude if isinstance(exclude, set | frozenset) else set(exclude)
    # one pass that stops at k: interleave, drop duplicates and banned ids, then top up
    out: list[int] = []
    seen: set[int] = set()
    for pair in zip_longest(online, offline, fillvalue=_MISSING):
        for item in pair:
            if item is _MISSING or item in seen or item in banned:
                continue
            seen.add(item)  # type: ignore[arg-type]
            out.append(item)  # type: ignore[arg-type]
            if len(out) >= k:
                return out
    return top_up(out, popular, k, banned)


def cold_start(popular: Sequence[int], k: int) -> list[int]:
    """The answer for a user the pipeline never saw: the `k` most popular tracks."""
    return list(popular[: max(k, 0)])
