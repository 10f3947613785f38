"""The vectorised as-of search, against a brute-force scan, in each of its code paths."""

import zlib

import numpy as np
import pytest

from mlplat.features.pit import latest_at, latest_per_key

NS = 1_000_000_000


def brute_force(query_codes, query_ts, data_codes, data_ts, data_created, ttl_ns):
    expected = []
    created = np.zeros(len(data_ts), dtype=np.int64) if data_created is None else data_created
    for code, at in zip(query_codes, query_ts):
        rows = [i for i in range(len(data_ts)) if data_codes[i] == code and data_ts[i] <= at
                and (ttl_ns is None or at - data_ts[i] <= ttl_ns)]
        expected.append(max(rows, key=lambda i: (data_ts[i], created[i], i)) if rows else -1)
    return np.array(expected)


@pytest.mark.parametrize("regime", ["whole seconds", "data in seconds, queries in nanoseconds",
                                    "random nanoseconds over centuries", "many exact ties"])
@pytest.mark.parametrize("with_created", [False, True])
def test_latest_at_matches_a_brute_force_scan(regime, with_created):
    rng = np.random.default_rng(zlib.crc32(regime.encode()))
    n_data, n_query, codes = 600, 400, 25
    if regime == "whole seconds":
        data_ts = rng.integers(1_700_000_000, 1_700_100_000, n_data) * NS
        query_ts = rng.integers(1_700_000_000, 1_700_120_000, n_query) * NS
    elif regime == "data in seconds, queries in nanoseconds":  # queries are floored to whole seconds
        data_ts = rng.integers(1_700_000_000, 1_700_000_300, n_data) * NS
        query_ts = np.concatenate([rng.integers(1_699_999_990 * NS, 1_700_000_400 * NS, n_query - 100),
                                   rng.choice(data_ts, 50), rng.choice(data_ts, 50) - 1])
    elif regime == "random nanoseconds over centuries":  # too wide to pack beside the code: ranks are used
        data_ts = rng.integers(-2**62, 2**62, n_data)
        query_ts = np.concatenate([rng.integers(-2**62, 2**62, n_query - 50), rng.choice(data_ts, 50)])
    else:
        data_ts = rng.integers(0, 12, n_data) * 3600 * NS
        query_ts = rng.integers(-1, 14, n_query) * 3600 * NS
    data_codes = rng.integers(0, codes, n_data)
    query_codes = rng.integers(0, codes + 3, n_query)  # some codes never have data
    created = rng.integers(0, 5, n_data) if with_created else None
    ttl = None if regime == "random nanoseconds over centuries" else 5 * 3600 * NS
    got = latest_at(query_codes, query_ts, data_codes, data_ts, created, ttl)
    np.testing.assert_array_equal(got, brute_force(query_codes, query_ts, data_codes, data_ts, created, ttl))


def test_no_data_means_no_match():
    got = latest_at(np.array([0, 1]), np.array([5, 6]), np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert got.tolist() == [-1, -1]


def test_latest_per_key_prefers_time_then_created_then_ingest():
    codes = np.array([0, 0, 0, 1, 1, 0])
    ts = np.array([5, 9, 9, 1, 1, 9])
    created = np.array([0, 3, 1, 0, 0, 3])
    assert sorted(latest_per_key(codes, ts, created).tolist()) == [4, 5]
    assert sorted(latest_per_key(codes, ts).tolist()) == [4, 5]
