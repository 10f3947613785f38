"""Benchmark p.predict under concurrent callers, one entity per call: threads sending a request per call (the peer),
threads calling p.predict and asyncio tasks calling p.apredict (both coalesced).

    python benchmarks/concurrency.py
    python benchmarks/concurrency.py --seconds 2   # smoke run

The demo's driver features in a fresh mlplat home (its embedded Redis and Triton) and an XGBoost model on them.
For 1, 4, 16 and 64 concurrent callers, each calling in a loop for ``--seconds``: predictions per second (all
callers together) and the p50/p99 latency of a call, for three sides taking turns: threads sharing one
platform's client that send a request per call (one gRPC channel; what ``p.predict`` did before it coalesced),
threads calling ``p.predict`` and asyncio tasks calling ``p.apredict`` (calls that arrive while a request is in
flight go out together as one request).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from feature_store import render  # noqa: E402
from measure import fresh_platform, percentile  # noqa: E402

import mlplat  # noqa: E402
from mlplat.demo import driver, driver_stats, make_dataset  # noqa: E402
from mlplat.serving.triton import triton_installed  # noqa: E402

CALLERS = (1, 4, 16, 64)
DRIVERS = 500
NAME = "concurrency_bench"


def prepare(home: Path) -> mlplat.Platform:
    stats, _, labels = make_dataset(drivers=DRIVERS, customers=10, days=3, trips=10_000, seed=1)
    p = mlplat.connect(home=str(home))
    p.features.apply([driver, driver_stats])
    p.features.ingest("driver_stats", stats)
    p.features.materialize()
    if not triton_installed(p.settings):
        sys.exit(f"no Triton in {p.settings.triton_env}: run `make triton` first")
    p.train("xgboost.XGBClassifier", features=["driver_stats:rating", "driver_stats:acceptance_rate",
                                               "driver_stats:trips_today"],
            entity_df=labels, target="completed", name=NAME, params={"n_estimators": 50})
    p.models.promote(NAME)
    p.deploy(NAME)
    return p


def alone(p: mlplat.Platform) -> Callable[[list[dict]], Any]:
    """One request per call: the platform's client sending each call as a batch of its own (no coalescing)."""
    client = p.serving

    def predict(rows: list[dict]) -> Any:
        info = client._version(NAME, None)
        [answer] = client._send((NAME, info["version"]), [(rows, None, "", time.perf_counter())])
        if isinstance(answer, Exception):
            raise answer
        return answer

    return predict


def threads(predict: Callable[[list[dict]], Any], callers: int, seconds: float) -> list[float]:
    """Latencies of every call made by ``callers`` threads calling ``predict`` for ``seconds``."""
    found: list[list[float]] = [[] for _ in range(callers)]
    stop = time.perf_counter() + seconds

    def caller(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            started = time.perf_counter()
            predict([{"driver_id": 1 + i % DRIVERS}])
            found[k].append(time.perf_counter() - started)
            i += callers

    pool = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return [t for times in found for t in times]


def tasks(p: mlplat.Platform, callers: int, seconds: float) -> list[float]:
    """Latencies of every call made by ``callers`` asyncio tasks calling p.apredict for ``seconds``."""

    async def caller(k: int, stop: float, found: list[float]) -> None:
        i = k
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await p.apredict(NAME, [{"driver_id": 1 + i % DRIVERS}])
            found.append(time.perf_counter() - started)
            i += callers

    async def run() -> list[float]:
        found: list[float] = []
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(caller(k, stop, found) for k in range(callers)))
        return found

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each setting runs")
    args = parser.parse_args()
    lines = [["callers", "a request per call (threads) /s", "p50 ms", "p99 ms", "p.predict (threads) /s", "p50 ms",
              "p99 ms", "p.apredict (tasks) /s", "p50 ms", "p99 ms", "p.predict / peer"]]
    with fresh_platform(prepare) as p:
        sides = [lambda n, s: threads(alone(p), n, s), lambda n, s: threads(lambda rows: p.predict(NAME, rows), n, s),
                 lambda n, s: tasks(p, n, s)]
        for side in sides:  # warm every path
            side(1, 1.0)
        for callers in CALLERS:
            found = [side(callers, args.seconds) for side in sides]
            rates = [len(times) / args.seconds for times in found]
            line = [str(callers)]
            for rate, times in zip(rates, found):
                line += [f"{rate:,.0f}", f"{percentile(times, 50) * 1e3:.2f}", f"{percentile(times, 99) * 1e3:.2f}"]
            lines.append([*line, f"{rates[1] / rates[0]:.2f}x"])
    print(render(lines))


if __name__ == "__main__":
    main()
