"""Request coalescing: concurrent lookups of single keys become batched upstream calls.

Every `/recommendations` request needs the latest events of its user (event service) and
the similar tracks of a few seed tracks (similarity service). Sent one by one, each lookup
costs a full HTTP exchange on both sides, and at a few thousand requests/s on 2 cores the
HTTP and framework overhead of these hops is most of the CPU (see docs/benchmarks.md). A
`Coalescer` sends lookups that arrive while a call is in flight together in the next call
("natural batching", as in DataLoader or a Redis pipeline):

* no added wait: a lookup on an idle coalescer is sent in the same event-loop tick (the
  lookups arriving in that tick join it), so a lone request costs one call as before;
* under load, batches grow with the upstream's latency and the per-lookup cost falls;
* at most `max_in_flight` calls are outstanding; each carries at most `max_batch` keys;
* a key asked for twice while pending is fetched once;
* a failed call fails exactly the lookups it carried (each caller degrades on its own);
  a caller that gives up (its own timeout, cancellation) leaves the call running for the
  others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class MissingKey(LookupError):
    """The upstream answer did not include a key that was asked for."""


class CoalescerClosed(RuntimeError):
    """A lookup on a closed coalescer."""


class Coalescer(Generic[K, V]):
    """`await coalescer.get(key)` -> value, fetched by `fetch(keys) -> {key: value}` in
    batches. Use from one event loop."""

    def __init__(
        self,
        fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]],
        *,
        max_batch: int,
        max_in_flight: int = 1,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be >= 1")
        self._fetch = fetch
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._pending: dict[K, list[asyncio.Future[V]]] = {}
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def get(self, key: K) -> V:
        """The value of `key`; raises what the batched call raised (or `MissingKey`)."""
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Sequence[K]) -> list[V]:
        """The values of `keys`, in order (they travel in the same call when they fit);
        `CoalescerClosed` after `close()`."""
        if self._closed:
            raise CoalescerClosed("the coalescer was closed")
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[V]] = []
        for key in keys:
            fut: asyncio.Future[V] = loop.create_future()
            waiters = self._pending.get(key)
            if waiters is None:
                self._pending[key] = [fut]
            else:
                waiters.append(fut)
            futs.append(fut)
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            loop.call_soon(self._launch)
        try:
            return [await fut for fut in futs]
        except BaseException:
            for fut in futs:  # nobody will read the others: drop them quietly
                fut.cancel()
            raise

    async def close(self) -> None:
        """Cancel the calls in flight and the lookups waiting for one (their callers get
        `CancelledError`); no call starts after this, later lookups fail at once."""
        self._closed = True
        for waiters in self._pending.values():
            for fut in waiters:
                fut.cancel()
        self._pending.clear()
        while self._tasks:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _launch(self) -> None:
        """Start calls for the pending keys while the in-flight limit allows."""
        self._scheduled = False
        while not self._closed and self._pending and self._in_flight < self.max_in_flight:
            batch: dict[K, list[asyncio.Future[V]]] = {}
            for key in list(self._pending)[: self.max_batch]:
                futs = [f for f in self._pending.pop(key) if not f.done()]
                if futs:  # every caller of this key gave up: not worth fetching
                    batch[key] = futs
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: dict[K, list[asyncio.Future[V]]]) -> None:
        try:
            values = await self._fetch(list(batch))
        except asyncio.CancelledError:
            for futs in batch.values():
                for f in futs:
                    f.cancel()
            raise
        except Exception as exc:
            for futs in batch.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(exc)
        else:
            for key, futs in batch.items():
                for f in futs:
                    if f.done():
                        continue
                    if key in values:
                        f.set_result(values[key])
                    else:
                        f.set_exception(MissingKey(f"the answer lacks {key!r}"))
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled and not self._closed:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._launch)
