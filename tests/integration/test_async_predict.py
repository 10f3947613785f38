"""p.apredict: the asyncio client answers what p.predict answers; concurrent callers (asyncio tasks, or threads
calling p.predict) share requests without ever getting each other's rows."""

import asyncio
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from platforms import serving_platform
from triton_calls import executions

from mlplat.errors import MlplatError, ServingError

ROWS = [{"driver_id": d} for d in range(1, 41)]


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    with serving_platform(tmp_path_factory.mktemp("apredict"), "coalesced", ROWS, redis_url) as found:
        yield found


def served_requests(p):
    """How many requests of the model Triton has served so far."""
    client = grpcclient.InferenceServerClient(p.serving_target.ensure().grpc)
    try:
        return executions(client, "coalesced")[0]
    finally:
        client.close()


def test_the_async_client_returns_what_the_sync_client_returns(served):
    p, outputs = served
    found = asyncio.run(p.apredict("coalesced", ROWS))
    np.testing.assert_array_equal(found.outputs, outputs)
    assert found.version == p.predict("coalesced", ROWS).version
    matrix = np.array([[4.5, 0.9], [3.9, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(asyncio.run(p.apredict("coalesced", features=matrix)).outputs,
                                  p.predict("coalesced", features=matrix).outputs)


def test_concurrent_callers_share_requests_and_each_gets_its_own_rows(served):
    p, outputs = served
    before = served_requests(p)

    async def callers():
        # Forty callers at once, one entity each, in a shuffled order; a forty-first sends rows of the wrong width.
        order = np.random.default_rng(0).permutation(len(ROWS))
        calls = [p.apredict("coalesced", [ROWS[i]]) for i in order]
        calls.append(p.apredict("coalesced", features=np.zeros((1, 5), dtype=np.float32)))
        return order, await asyncio.gather(*calls, return_exceptions=True)

    order, answers = asyncio.run(callers())
    *found, refused = answers
    assert isinstance(refused, ServingError) and "rows of 2 features" in str(refused)
    for i, answer in zip(order, found):
        np.testing.assert_array_equal(answer.outputs, outputs[i:i + 1])  # its own row, nobody else's
    requests = served_requests(p) - before
    assert 1 <= requests < len(ROWS)  # fewer requests reached Triton than calls were made: they were shared


def test_concurrent_threads_share_requests_and_each_gets_its_own_rows(served):
    p, outputs = served
    before = served_requests(p)
    order = np.random.default_rng(1).permutation(len(ROWS)).tolist()
    start = threading.Barrier(len(order) + 1)
    answers = {}

    def caller(i):
        start.wait()
        try:
            answers[i] = p.predict("coalesced", [ROWS[i]]) if i >= 0 else \
                p.predict("coalesced", features=np.zeros((1, 5), dtype=np.float32))
        except Exception as exc:
            answers[i] = exc

    threads = [threading.Thread(target=caller, args=(i,)) for i in [*order, -1]]  # -1: rows of the wrong width
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert isinstance(answers.pop(-1), ServingError)
    for i, answer in answers.items():
        np.testing.assert_array_equal(answer.outputs, outputs[i:i + 1])  # its own row, nobody else's
    assert sorted(answers) == list(range(len(ROWS)))
    requests = served_requests(p) - before
    assert 1 <= requests < len(ROWS)  # fewer requests reached Triton than calls were made: they were shared


BAD_ROWS = [[{"driver": 1}], [{"driver_id": "1.5"}], "driver 1", [{"driver_id": 2}, 3]]


def test_a_callers_bad_entity_rows_fail_that_caller_alone(served):
    """Calls that share a lookup: one caller's malformed rows (a missing key, a key of the wrong kind, not rows
    at all) fail that caller with its own error; the others in the batch are answered from their own rows."""
    p, outputs = served

    async def tasks():
        good = [p.apredict("coalesced", [ROWS[i]]) for i in range(6)]
        calls = [*good[:3], *(p.apredict("coalesced", rows) for rows in BAD_ROWS), *good[3:]]
        return await asyncio.gather(*calls, return_exceptions=True)

    found = asyncio.run(tasks())
    by_thread = {}  # the same calls from threads, through p.predict

    def call(rows):
        try:
            by_thread[repr(rows)] = p.predict("coalesced", rows)
        except Exception as exc:
            by_thread[repr(rows)] = exc

    threads = [threading.Thread(target=call, args=(rows,)) for rows in [*BAD_ROWS, *([ROWS[i]] for i in range(6))]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for index, answer in enumerate([*found[:3], *found[-3:]]):
        np.testing.assert_array_equal(answer.outputs, outputs[index:index + 1])
        np.testing.assert_array_equal(by_thread[repr([ROWS[index]])].outputs, outputs[index:index + 1])
    for rows, error in zip(BAD_ROWS, found[3:-3]):
        assert isinstance(error, MlplatError) and isinstance(by_thread[repr(rows)], type(error)), (rows, error)

