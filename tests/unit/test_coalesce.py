"""The coalescer sends concurrent calls together and answers each with its own result."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplat.serving.coalesce import Coalescer


class Recorder:
    """A send that answers each item with item * 10 (or its error), recording the batches it was given."""

    def __init__(self, pause: float = 0.01):
        self.batches: list[list] = []
        self.pause = pause

    async def __call__(self, key, items):
        self.batches.append(list(items))
        await asyncio.sleep(self.pause)
        if "fail batch" in items:
            raise RuntimeError("the batch failed")
        return [ValueError(f"bad {item}") if isinstance(item, str) else (key, item * 10) for item in items]


def test_a_lone_call_goes_at_once_and_later_calls_wait_for_the_one_in_flight():
    send = Recorder()

    async def scenario():
        coalescer = Coalescer(send)
        first = asyncio.ensure_future(coalescer.submit("m", 1))
        await asyncio.sleep(0.001)  # the first is in flight now
        rest = [coalescer.submit("m", i) for i in (2, 3, 4)]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(scenario())
    assert first == ("m", 10) and rest == [("m", 20), ("m", 30), ("m", 40)]
    assert send.batches == [[1], [2, 3, 4]]


def test_a_refused_item_fails_its_caller_alone_and_a_failed_batch_fails_only_its_callers():
    send = Recorder()

    async def scenario():
        coalescer = Coalescer(send)
        first = await asyncio.gather(coalescer.submit("m", 1), coalescer.submit("m", "x"),
                                     coalescer.submit("m", 2), return_exceptions=True)
        second = await asyncio.gather(coalescer.submit("m", "fail batch"), coalescer.submit("m", 3),
                                      return_exceptions=True)
        third = await coalescer.submit("m", 4)
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first[0] == ("m", 10) and first[2] == ("m", 20) and str(first[1]) == "bad x"
    assert all(isinstance(e, RuntimeError) for e in second)
    assert third == ("m", 40)


def test_keys_never_share_a_batch_and_batches_keep_to_their_size():
    send = Recorder()

    async def scenario():
        coalescer = Coalescer(send, max_items=3)
        return await asyncio.gather(*(coalescer.submit(key, i) for i in range(7) for key in ("a", "b")))

    answers = asyncio.run(scenario())
    assert sorted(answers) == sorted((key, i * 10) for i in range(7) for key in ("a", "b"))
    assert all(len(batch) <= 3 for batch in send.batches)
    assert sum(len(batch) for batch in send.batches) == 14


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 1000), st.floats(0, 0.003)), min_size=1,
                max_size=40))
def test_every_caller_gets_its_own_answer_whatever_the_timing(calls):
    send = Recorder(pause=0.001)

    async def one(coalescer, key, item, delay):
        await asyncio.sleep(delay)
        return await coalescer.submit(key, item)

    async def scenario():
        coalescer = Coalescer(send, max_items=5)
        return await asyncio.gather(*(one(coalescer, key, item, delay) for key, item, delay in calls))

    assert asyncio.run(scenario()) == [(key, item * 10) for key, item, _ in calls]


def test_a_cancelled_caller_leaves_the_others_answered():
    send = Recorder(pause=0.02)

    async def scenario():
        coalescer = Coalescer(send)
        first = asyncio.ensure_future(coalescer.submit("m", 1))
        await asyncio.sleep(0.001)
        doomed = asyncio.ensure_future(coalescer.submit("m", 2))
        kept = asyncio.ensure_future(coalescer.submit("m", 3))
        await asyncio.sleep(0.001)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await first, await kept

    assert asyncio.run(scenario()) == (("m", 10), ("m", 30))
