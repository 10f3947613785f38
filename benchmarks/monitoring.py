"""Benchmark monitoring: what prediction logging adds to ``predict``, and drift checks over many logged rows.

    python benchmarks/monitoring.py
    python benchmarks/monitoring.py --calls 300 --rows 100000   # smoke run

In a fresh mlplat home (a throw-away ``redis-server`` online, Triton from
``.venv-triton``) it trains and deploys a small XGBoost model, then measures in
the same run:

- ``p.predict`` at batch 1 (online lookup + gRPC) with every request logged and
  with logging off (``prediction_sample_rate`` 1 and 0), the two clients taking
  turns call by call; the issue's goal is a p99 at most 10% above logging off;
- the logging call itself (what the request path pays), and the flusher's
  throughput from the Redis stream to Parquet;
- a drift check over ``--rows`` logged rows x ``--features`` features written
  as the flusher writes them (files of 5,000 rows): reading them back, PSI and
  KS for every column, against the raw limit of ``scipy.stats.ks_2samp`` per
  column on the same rows and a 50,000-row reference sample.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

import mlplat
from mlplat.config import load_settings
from mlplat.demo import customer, customer_profile, driver, driver_stats, make_dataset
from mlplat.monitoring.drift import drift, reference
from mlplat.monitoring.predlog import Flusher, PredictionLogger, PredictionStore
from mlplat.serving.triton import TritonService, triton_installed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from feature_store import number, redis_server, render  # noqa: E402
from measure import interleaved_latencies, machine_line, median_time, percentile, versions_line  # noqa: E402

FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate", "customer_profile:avg_fare"]
BATCH_ROWS = 5000  # rows per Parquet file, as the flusher writes them


def predict_overhead(home: str, redis_url: str, calls: int) -> dict[str, float]:
    """p99 of p.predict with and without the prediction log, taking turns call by call."""
    logged = mlplat.connect(home=home, online_store=redis_url, prediction_sample_rate=1.0)
    unlogged = mlplat.connect(home=home, online_store=redis_url, prediction_sample_rate=0.0)
    stats, profiles, labels = make_dataset(drivers=200, customers=100, days=5, trips=5000, seed=3)
    logged.features.apply([driver, customer, driver_stats, customer_profile])
    logged.features.ingest("driver_stats", stats)
    logged.features.ingest("customer_profile", profiles)
    logged.features.materialize()
    logged.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed", name="bench",
                 params={"n_estimators": 50})
    logged.models.promote("bench")
    logged.deploy("bench")
    rows = [[{"driver_id": int(d), "customer_id": int(c)}] for d, c in
            labels[["driver_id", "customer_id"]].sample(256, random_state=0).to_numpy()]
    on, off = interleaved_latencies([lambda i: logged.predict("bench", rows[i % 256]),
                                     lambda i: unlogged.predict("bench", rows[i % 256])], calls, warmup=100)
    logger = logged.serving.log
    features, outputs = np.ones((1, 3), np.float32), np.ones((1, 2), np.float32)
    log_call, _ = median_time(lambda: [logger.log("bench", "1", ["a", "b", "c"], features, outputs, 1.0)
                                       for _ in range(10_000)], 3)
    logger.flush()
    logged.close()
    unlogged.close()
    return {"on_p50": percentile(on, 50), "on_p99": percentile(on, 99), "off_p50": percentile(off, 50),
            "off_p99": percentile(off, 99), "log_call": log_call / 10_000}


def flush_throughput(home: str, redis_url: str, requests: int) -> float:
    """Requests per second moved from the stream to Parquet by the flusher."""
    import redis

    client = redis.Redis.from_url(redis_url)
    logger = PredictionLogger(client, "flushbench", buffer=requests)
    features, outputs = np.random.default_rng(0).random((1, 20), dtype=np.float32), np.ones((1, 2), np.float32)
    columns = [f"f{i}" for i in range(20)]
    for _ in range(requests):
        logger.log("flushbench", "1", columns, features, outputs, 1.0)
    logger.close()
    flusher = Flusher(client, "flushbench", Path(home, "flush").as_uri())
    started = time.perf_counter()
    flusher.flush_all()
    return requests / (time.perf_counter() - started)


def drift_check(folder: Path, rows: int, features: int) -> dict[str, float]:
    """Read ``rows`` logged rows back from Parquet and compare every column with the reference."""
    rng = np.random.default_rng(1)
    columns = [f"f{i}" for i in range(features)]
    training = pd.DataFrame(rng.normal(size=(200_000, features)).astype(np.float32), columns=columns)
    ref = reference(training.sample(50_000, random_state=0))
    store = PredictionStore(folder.as_uri())
    start = pd.Timestamp("2026-01-01", tz="UTC")
    for first in range(0, rows, BATCH_ROWS):
        n = min(BATCH_ROWS, rows - first)
        shift = np.where(np.arange(features) % 2 == 0, 0.5, 0.0)  # half the columns drift by half a sd
        part = pd.DataFrame((rng.normal(size=(n, features)) + shift).astype(np.float32), columns=columns)
        part.insert(0, "log_id", [f"{first + i}-0/0" for i in range(n)])
        part.insert(1, "at", start + pd.to_timedelta(np.arange(first, first + n), unit="ms"))
        part.insert(2, "model", "drift")
        part["prediction"] = rng.random(n).astype(np.float32)
        store.write(f"{first:012d}", part)
    read_seconds, logged = median_time(lambda: store.read("drift"), 3)
    check_seconds, report = median_time(lambda: drift(ref, logged, columns=columns), 3)
    from scipy.stats import ks_2samp

    sample = training.sample(50_000, random_state=0)
    scipy_seconds, _ = median_time(lambda: [ks_2samp(sample[c], logged[c]) for c in columns], 1)
    return {"rows": len(logged), "read": read_seconds, "check": check_seconds, "scipy": scipy_seconds,
            "drifted": len(report.drifted)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="predict calls per side")
    parser.add_argument("--rows", type=int, default=1_000_000, help="logged rows in the drift check")
    parser.add_argument("--features", type=int, default=50, help="features per logged row")
    parser.add_argument("--flush-requests", type=int, default=50_000, help="requests through the flusher")
    args = parser.parse_args()
    print(machine_line())
    print(versions_line(HERE.parent, metadata.version("mlplat"), {"redis-py": metadata.version("redis"),
                                                                   "pyarrow": metadata.version("pyarrow")}))
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-monitoring-") as tmp, redis_server(Path(tmp)) as port:
        redis_url = f"redis://127.0.0.1:{port}/0"
        home = str(Path(tmp, "home"))
        if not triton_installed(load_settings(home=home)):
            sys.exit("no Triton: `make triton` creates .venv-triton")
        try:
            served = predict_overhead(home, redis_url, args.calls)
        finally:
            TritonService(load_settings(home=home)).stop()
        flushed = flush_throughput(tmp, redis_url, args.flush_requests)
        checked = drift_check(Path(tmp, "drift"), args.rows, args.features)
    overhead = served["on_p99"] / served["off_p99"] - 1
    total = checked["read"] + checked["check"]
    table = [["measure", "mlplat", "baseline", "ratio", "goal"],
        ["predict batch 1 p50, logged / not", f"{served['on_p50'] * 1e3:.3f} ms", f"{served['off_p50'] * 1e3:.3f} ms",
         f"{served['on_p50'] / served['off_p50']:.2f}x", ""],
        ["predict batch 1 p99, logged / not", f"{served['on_p99'] * 1e3:.3f} ms", f"{served['off_p99'] * 1e3:.3f} ms",
         f"{served['on_p99'] / served['off_p99']:.2f}x", f"<= +10%: {'met' if overhead <= 0.10 else 'MISSED'}"],
        ["logging call on the request path", f"{served['log_call'] * 1e6:.1f} us", "", "", ""],
        ["flusher, stream -> Parquet", f"{number(flushed)} req/s", "", "", ""],
        [f"drift check {number(checked['rows'])} rows x {args.features}: read + PSI/KS", f"{total:.2f} s",
         f"{checked['scipy']:.2f} s", f"{total / checked['scipy']:.2f}x", "in seconds: "
         f"{'met' if total < 10 else 'MISSED'}"],
    ]
    print(render(table))
    print(f"baseline: predict with prediction_sample_rate=0 (counters only); drift: scipy.stats.ks_2samp per column "
          f"(KS only) on the same rows. Drift check: read {checked['read']:.2f} s, PSI+KS {checked['check']:.2f} s, "
          f"{checked['drifted']} of {args.features} columns flagged (every other one was shifted by 0.5 sd). "
          f"p99 over {args.calls} calls per side: {overhead:+.1%}; medians of 3 for the drift check.")


if __name__ == "__main__":
    main()
