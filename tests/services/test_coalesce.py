"""`Coalescer`: concurrent single-key lookups become batched calls, without added waiting,
and failures and cancellations stay with the lookups they concern."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from musicrec.coalesce import Coalescer, CoalescerClosed, MissingKey


class Upstream:
    """A fake batch endpoint that records its calls and answers `key * 10`."""

    def __init__(self, delay: float = 0.01, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.drop: set[int] = set()

    async def fetch(self, keys: list[int]) -> Mapping[int, int]:
        self.calls.append(list(keys))
        await asyncio.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in keys:
            raise RuntimeError(f"upstream failed on a batch with {self.fail_on}")
        return {k: k * 10 for k in keys if k not in self.drop}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_lone_lookup_is_sent_at_once_and_concurrent_ones_share_calls() -> None:
    async def main() -> None:
        up = Upstream()
        co: Coalescer[int, int] = Coalescer(up.fetch, max_batch=100)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await co.get(1) == 10
        assert up.calls == [[1]] and loop.time() - t0 < 0.5  # no batching delay
        # 30 lookups at once: the first tick's arrivals share one call
        got = await asyncio.gather(*(co.get(k) for k in range(30)))
        assert got == [k * 10 for k in range(30)]
        assert up.calls[1] == list(range(30))
        # lookups arriving while a call is in flight go together in the next one
        first = asyncio.ensure_future(co.get(100))
        await asyncio.sleep(0.002)
        later = [asyncio.ensure_future(co.get(k)) for k in range(101, 111)]
        await asyncio.sleep(0)
        later.append(asyncio.ensure_future(co.get(105)))  # a duplicate key: fetched once
        assert await first == 1000
        assert await asyncio.gather(*later) == [k * 10 for k in range(101, 111)] + [1050]
        assert up.calls[2:] == [[100], list(range(101, 111))]

    run(main())


def test_batches_are_capped_and_get_many_keeps_order() -> None:
    async def main() -> None:
        up = Upstream()
        co: Coalescer[int, int] = Coalescer(up.fetch, max_batch=4, max_in_flight=2)
        assert await co.get_many([9, 8, 7, 6, 5, 4, 3, 9]) == [90, 80, 70, 60, 50, 40, 30, 90]
        assert [len(c) for c in up.calls] == [4, 3]  # capped; the repeated 9 sent once
        assert sorted(sum(up.calls, [])) == [3, 4, 5, 6, 7, 8, 9]

    run(main())


def test_calls_in_flight_never_exceed_the_limit_and_one_key_batches_work() -> None:
    """`max_in_flight` bounds the concurrent upstream calls (one allowed: the keys go one
    call after the other, never two at once), and `max_batch=1` is a valid setting (only
    limits below 1 are refused)."""

    async def main() -> None:
        up = Upstream()
        active = peak = 0

        async def fetch(keys: list[int]) -> Mapping[int, int]:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                return await up.fetch(keys)
            finally:
                active -= 1

        co: Coalescer[int, int] = Coalescer(fetch, max_batch=1, max_in_flight=1)
        assert await co.get_many([1, 2, 3]) == [10, 20, 30]
        assert up.calls == [[1], [2], [3]] and peak == 1
        co2: Coalescer[int, int] = Coalescer(fetch, max_batch=1, max_in_flight=2)
        assert await co2.get_many([4, 5, 6, 7, 8]) == [40, 50, 60, 70, 80]
        assert peak == 2

    run(main())


def test_a_failed_call_fails_only_its_lookups() -> None:
    async def main() -> None:
        up = Upstream(fail_on=2)
        co: Coalescer[int, int] = Coalescer(up.fetch, max_batch=2)
        results = await asyncio.gather(*(co.get(k) for k in (1, 2, 3, 4)), return_exceptions=True)
        assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)
        assert results[2:] == [30, 40]
        up.drop = {5}
        with pytest.raises(MissingKey):
            await co.get(5)
        assert await co.get(6) == 60  # still working

    run(main())


def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    async def main() -> None:
        up = Upstream(delay=0.05)
        co: Coalescer[int, int] = Coalescer(up.fetch, max_batch=10)
        impatient = asyncio.ensure_future(asyncio.wait_for(co.get(1), 0.01))
        patient = asyncio.ensure_future(co.get(1))
        other = asyncio.ensure_future(co.get(2))
        with pytest.raises(TimeoutError):
            await impatient
        assert await patient == 10 and await other == 20
        assert up.calls == [[1, 2]]
        # every caller of a pending key gave up before its call started: not fetched
        busy = asyncio.ensure_future(co.get(3))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(co.get(4))
        await asyncio.sleep(0)
        gone.cancel()
        assert await busy == 30
        await asyncio.sleep(0.06)
        assert [4] not in up.calls

    run(main())


def test_close_cancels_calls_in_flight() -> None:
    async def main() -> None:
        up = Upstream(delay=10)
        co: Coalescer[int, int] = Coalescer(up.fetch, max_batch=10)
        waiting = asyncio.ensure_future(co.get(1))
        await asyncio.sleep(0.01)
        await co.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    run(main())


def test_close_starts_no_call_and_fails_the_lookups_waiting_behind_one() -> None:
    """A lookup queued behind the in-flight limit when `close()` runs is cancelled too; no
    call starts during or after `close()` (one did, for the queued key, and outlived it,
    after the HTTP pools were closed), and later lookups fail at once."""

    async def main() -> None:
        up = Upstream(delay=10)
        co: Coalescer[int, int] = Coalescer(up.fetch, max_batch=10, max_in_flight=1)
        in_flight = asyncio.ensure_future(co.get(1))
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(co.get(2))  # behind the limit of one call
        await asyncio.sleep(0.01)
        await co.close()
        await asyncio.sleep(0.05)
        assert up.calls == [[1]]
        for waiting in (in_flight, queued):
            with pytest.raises(asyncio.CancelledError):
                await waiting
        with pytest.raises(CoalescerClosed):
            await co.get(3)
        assert up.calls == [[1]]

    run(main())


def test_bad_limits_are_refused() -> None:
    async def fetch(keys: list[int]) -> Mapping[int, int]:
        return {}

    with pytest.raises(ValueError):
        Coalescer(fetch, max_batch=0)
    with pytest.raises(ValueError):
        Coalescer(fetch, max_batch=1, max_in_flight=0)
