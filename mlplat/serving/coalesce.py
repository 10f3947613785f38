"""Request coalescing: concurrent calls for one key go out together, each answered with its own result.

While a batch is in flight, calls that arrive wait; when it returns, everything waiting (up to
``max_items``) goes out as the next batch. One caller alone is sent at once, with no added delay;
many callers share requests, so a busy process sends a few large requests instead of many small ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

Send = Callable[[Hashable, list[Any]], Awaitable[list[Any]]]


class Coalescer:
    """Merges concurrent :meth:`submit` calls per key into batches for ``send(key, items)``.

    ``send`` answers one result per item, in order; an item's result that is an exception is raised to
    that item's caller alone. If ``send`` itself raises, every caller of that batch gets the error.
    """

    def __init__(self, send: Send, max_items: int = 256):
        self._send = send
        self.max_items = max_items
        self._waiting: dict[Hashable, list[tuple[Any, asyncio.Future]]] = {}
        self._draining: set[Hashable] = set()

    async def submit(self, key: Hashable, item: Any) -> Any:
        """``item``'s result, sent with whatever else waits for ``key``."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((item, future))
        if key not in self._draining:
            self._draining.add(key)
            asyncio.get_running_loop().create_task(self._drain(key))
        return await future

    async def _drain(self, key: Hashable) -> None:
        batch: list[tuple[Any, asyncio.Future]] = []
        try:
            while self._waiting.get(key):
                waiting = self._waiting[key]
                batch, self._waiting[key] = waiting[:self.max_items], waiting[self.max_items:]
                try:
                    results = await self._send(key, [item for item, _ in batch])
                except Exception as exc:  # the whole batch failed: so did each of its calls
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:  # normally nothing is left; if this task was cancelled, no call is left waiting for ever
            self._draining.discard(key)
            for _, future in [*batch, *self._waiting.pop(key, [])]:
                if not future.done():
                    future.cancel()
