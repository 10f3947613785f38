"""The coalescers (asyncio and threads) send concurrent calls together and answer each with its own result."""

import asyncio
import os
import signal
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplat.errors import ServingError
from mlplat.serving.coalesce import Coalescer, ThreadCoalescer


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


# -- threads --------------------------------------------------------------------------------------------------
class BlockingRecorder:
    """Recorder's blocking twin for ThreadCoalescer: the first batch waits until ``release`` is set."""

    def __init__(self, pause: float = 0.0):
        self.batches: list[list] = []
        self.pause = pause
        self.in_flight, self.release = threading.Event(), threading.Event()

    def __call__(self, key, items):
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.in_flight.set()
            assert self.release.wait(10)
        time.sleep(self.pause)
        if "fail batch" in items:
            raise RuntimeError("the batch failed")
        if "interrupt" in items:
            raise Interrupt()
        return [ValueError(f"bad {item}") if isinstance(item, str) else (key, item * 10) for item in items]


class Interrupt(BaseException):
    """Stands for a KeyboardInterrupt in the thread sending a batch."""


def in_threads(coalescer, calls):
    """Submit each (key, item) from a thread of its own, in order; each one's answer or exception."""
    answers = [None] * len(calls)

    def one(index, key, item):
        try:
            answers[index] = coalescer.submit(key, item)
        except BaseException as exc:
            answers[index] = exc

    threads = [threading.Thread(target=one, args=(i, *call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    return threads, answers


def joined(threads):
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "a caller never got its answer"


def test_threads_a_lone_call_goes_at_once_in_its_own_thread_and_later_calls_go_together():
    send = BlockingRecorder()
    coalescer = ThreadCoalescer(send)
    first, first_answer = in_threads(coalescer, [("m", 1)])
    assert send.in_flight.wait(10)
    rest, answers = in_threads(coalescer, [("m", 2), ("m", 3), ("m", 4)])
    time.sleep(0.05)  # they are all waiting now
    send.release.set()
    joined(first + rest)
    assert first_answer == [("m", 10)] and answers == [("m", 20), ("m", 30), ("m", 40)]
    assert send.batches[0] == [1] and sorted(send.batches[1]) == [2, 3, 4]
    assert coalescer.submit("m", 5) == ("m", 50)  # alone again: sent at once from this thread


def test_threads_a_refused_item_fails_its_caller_alone_and_a_failed_batch_fails_only_its_callers():
    send = BlockingRecorder()
    send.release.set()
    coalescer = ThreadCoalescer(send)
    threads, answers = in_threads(coalescer, [("m", 1), ("m", "x"), ("m", 2)])
    joined(threads)
    assert answers[0] == ("m", 10) and answers[2] == ("m", 20) and str(answers[1]) == "bad x"
    with pytest.raises(RuntimeError, match="the batch failed"):
        coalescer.submit("m", "fail batch")
    assert coalescer.submit("m", 3) == ("m", 30)


def test_threads_an_interrupted_sender_fails_its_batch_clearly_and_the_next_batch_still_goes():
    send = BlockingRecorder()
    coalescer = ThreadCoalescer(send)
    first, first_answer = in_threads(coalescer, [("m", "interrupt")])
    assert send.in_flight.wait(10)
    rest, answers = in_threads(coalescer, [("m", 2), ("m", 3)])
    time.sleep(0.05)
    send.release.set()
    joined(first + rest)
    assert isinstance(first_answer[0], Interrupt)  # the sender's own thread sees its interrupt
    assert answers == [("m", 20), ("m", 30)]  # waiting calls went out in the next batch
    with_it, its_answers = in_threads(coalescer, [("m", 4)])
    joined(with_it)
    assert its_answers == [("m", 40)]


def test_threads_interrupted_with_calls_in_its_batch_answers_them_with_an_mlplat_error():
    send = BlockingRecorder()
    coalescer = ThreadCoalescer(send)
    first, _ = in_threads(coalescer, [("m", 1)])
    assert send.in_flight.wait(10)
    rest, answers = in_threads(coalescer, [("m", "interrupt"), ("m", 3)])
    time.sleep(0.05)
    send.release.set()
    joined(first + rest)
    interrupted = [a for a in answers if not isinstance(a, tuple)]
    assert len(interrupted) == 2 and sum(isinstance(a, Interrupt) for a in interrupted) == 1
    assert any(isinstance(a, ServingError) and "send it again" in str(a) for a in interrupted)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 1000)), min_size=1, max_size=30))
def test_threads_every_caller_gets_its_own_answer_whatever_the_timing(calls):
    send = BlockingRecorder(pause=0.001)
    send.release.set()
    coalescer = ThreadCoalescer(send, max_items=4)
    threads, answers = in_threads(coalescer, calls)
    joined(threads)
    assert answers == [(key, item * 10) for key, item in calls]
    assert all(len(batch) <= 4 for batch in send.batches)
    assert sorted(item for batch in send.batches for item in batch) == sorted(item for _, item in calls)


def test_threads_a_forked_child_sends_its_own_calls_though_its_parent_had_one_in_flight():
    send = BlockingRecorder()
    coalescer = ThreadCoalescer(send)
    first, answer = in_threads(coalescer, [("m", 1)])
    assert send.in_flight.wait(10)  # the parent's batch is in flight, its sender a thread the child will not have
    child = os.fork()
    if child == 0:  # the child: its call goes out at once instead of waiting for a sender that is not there
        os._exit(0 if coalescer.submit("m", 5) == ("m", 50) else 1)
    deadline = time.monotonic() + 10
    while (found := os.waitpid(child, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    if found == (0, 0):
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    send.release.set()
    joined(first)
    assert answer == [("m", 10)]
    assert found[0] == child and os.waitstatus_to_exitcode(found[1]) == 0, "the forked child's call never returned"
