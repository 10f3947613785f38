"""Request coalescing: concurrent calls for one key go out together, each answered with its own result.

While a batch is in flight, calls that arrive wait; when it returns, everything waiting (up to
``max_items``) goes out as the next batch. One caller alone is sent at once, with no added delay;
many callers share requests, so a busy process sends a few large requests instead of many small ones.
:class:`Coalescer` serves asyncio callers, :class:`ThreadCoalescer` threads.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from mlplat.errors import ServingError

Send = Callable[[Hashable, list[Any]], Awaitable[list[Any]]]
SendNow = Callable[[Hashable, list[Any]], list[Any]]
INTERRUPTED = "The request went out with another caller's, whose thread was interrupted; send it again."


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


class _Call:
    """One :meth:`ThreadCoalescer.submit` call: its item, then its result, or the lead handed to it."""

    def __init__(self, item: Any):
        self.item = item
        self.woken = threading.Event()
        self.answered = False
        self.result: Any = None

    def answer(self, result: Any) -> None:
        self.result, self.answered = result, True
        self.woken.set()


class ThreadCoalescer:
    """:class:`Coalescer` for threads: merges concurrent :meth:`submit` calls per key into batches for
    ``send(key, items)``, a blocking call with the same contract.

    A call that finds no batch in flight for its key sends at once, in its own thread. Calls that arrive
    meanwhile wait; when the batch is back, the first of them sends everything waiting (up to ``max_items``),
    so no thread sends batches other than the one holding its own call.
    """

    def __init__(self, send: SendNow, max_items: int = 256):
        self._send = send
        self.max_items = max_items
        self._start()

    def _start(self) -> None:
        """No batch in flight: at creation, and in a forked child, whose parent's senders are not there."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # Per key with a batch in flight, the calls waiting for the next one (a key is here while one is in flight).
        self._waiting: dict[Hashable, list[_Call]] = {}

    def submit(self, key: Hashable, item: Any) -> Any:
        """``item``'s result, sent with whatever else waits for ``key``."""
        if self._pid != os.getpid():
            self._start()
        call = _Call(item)
        with self._lock:
            leads = key not in self._waiting
            self._waiting.setdefault(key, []).append(call)
        if not leads:
            call.woken.wait()
        if not call.answered:  # it leads: the batch it sends begins with its own call
            self._lead(key)
        if isinstance(call.result, BaseException):
            raise call.result
        return call.result

    def _lead(self, key: Hashable) -> None:
        with self._lock:
            waiting = self._waiting[key]
            batch, self._waiting[key] = waiting[:self.max_items], waiting[self.max_items:]
        results: list[Any] = []
        try:
            results = self._send(key, [call.item for call in batch])
        except Exception as exc:  # the whole batch failed: so did each of its calls
            results = [exc] * len(batch)
        finally:  # even when interrupted, every call is answered and the next batch has a sender
            unanswered = (ServingError(INTERRUPTED) for _ in range(len(batch) - len(results)))
            for call, result in zip(batch, [*results, *unanswered]):
                call.answer(result)
            with self._lock:
                if self._waiting[key]:
                    self._waiting[key][0].woken.set()
                else:
                    del self._waiting[key]

