"""Benchmark the embedded services against the size of the online store: ``/metrics`` scrapes and ``mlplat up``.

    python benchmarks/services.py
    python benchmarks/services.py --keys 0 100000   # smoke run

For each count of online keys (default 0, 100,000 and 1,000,000) it makes a fresh
mlplat home, starts its Redis, writes that many online records (packed values of a
50-feature view, as materialisation stores them) plus the monitoring state of ten
deployed models (request counters, drift scores, newest event times), and measures:

- the collector behind ``/metrics``, in process, ``--scrapes`` times per home, the homes
  taking turns scrape by scrape; and in the same run the collector as it was before this
  change: the same plus the ``SCAN`` of the whole keyspace it did for drift keys (p50 of 3).
  Over 1 s, the monitor failed its health check and ``mlplat up`` stopped before the stream service;
- ``mlplat up`` (the command, in its own process) with Redis already running: it starts every
  other embedded service and waits until each is healthy (the monitor's health includes a
  ``/metrics`` scrape answered within 1 s); then ``/metrics`` of that monitor over HTTP (p50 of 20);
- Redis's own restart (its append-only file loads), which does grow with the data it holds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np

from mlplat import services
from mlplat.config import load_settings
from mlplat.features.online import newest_events_key
from mlplat.features.redis_service import RedisService, online_store_url
from mlplat.monitoring.metrics import drift_index, drift_key, exposition
from mlplat.monitoring.monitor_service import MonitorService
from mlplat.monitoring.predlog import metrics_index, metrics_key

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from feature_store import render  # noqa: E402
from measure import interleaved_latencies, machine_line, median_time, versions_line  # noqa: E402

PREFIX = "mlp"  # the default online prefix, which `mlplat up` uses
MODELS = 10
FILL = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SET', KEYS[1] .. i, ARGV[3]) end
return 0"""


def fill(client, keys: int) -> None:
    """``keys`` online records of one 50-feature view (float32), and what ten watched models leave in Redis."""
    record = np.zeros(1, [("event_ns", "<i8"), ("created_ns", "<i8"), ("valid", "u1", (50,)),
                          ("float32", "<f4", (50,))]).tobytes()
    script = client.register_script(FILL)
    for first in range(1, keys + 1, 100_000):  # server-side, in chunks: Redis stays responsive between them
        script(keys=[f"{PREFIX}:driver_stats:1:"], args=[first, min(first + 99_999, keys), record])
    pipe = client.pipeline(transaction=False)
    for m in range(MODELS):
        pipe.sadd(metrics_index(PREFIX), f"model{m}\t1")
        pipe.hset(metrics_key(PREFIX, f"model{m}", "1"), mapping={"b3": 100, "sum": 0.4, "count": 100,
                                                                  "errors": 2, "error:ServingError": 2})
        pipe.hset(drift_key(PREFIX, f"model{m}"), mapping={f"{kind}:f{c}": 0.01 for kind in ("psi", "ks")
                                                           for c in range(50)})
        pipe.sadd(drift_index(PREFIX), f"model{m}")
    pipe.zadd(newest_events_key(PREFIX), {"driver_stats": time.time_ns()})
    pipe.execute()


def scrape_before(client) -> str:
    """The exposition as the collector made it before this change: it also SCANned every key for drift scores."""
    text = exposition(client, PREFIX)
    for key in sorted(client.scan_iter(match=drift_key(PREFIX, "*"))):
        client.hgetall(key)
    return text


def http_p50(url: str, scrapes: int) -> float:
    times = []
    for _ in range(scrapes):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed_up(settings) -> tuple[float, float]:
    """Seconds ``mlplat up`` takes with Redis running (its second run: the first prepares MLflow's store and
    Triton's backends), and the p50 of 20 scrapes of the monitor it started; then all but Redis stop again."""
    env = {**os.environ, "MLPLAT_HOME": str(settings.home)}
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        up = subprocess.run([sys.executable, "-m", "mlplat.cli", "up"], env=env, capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        if up.returncode:
            sys.exit(f"mlplat up failed:\n{up.stdout}{up.stderr}")
        scrape = http_p50(MonitorService(settings).status().url, 20)
        for service in services.embedded_services(settings):
            if service.name != "redis":
                service.stop()
    return seconds[-1], scrape


def redis_restart(settings) -> float:
    """Seconds to stop Redis and start it again: loading its append-only file."""
    service = RedisService(settings)
    service.stop()
    started = time.perf_counter()
    service.ensure()
    return time.perf_counter() - started


def main() -> None:
    import redis

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[0, 100_000, 1_000_000], help="online key counts")
    parser.add_argument("--scrapes", type=int, default=50, help="in-process scrapes per key count")
    args = parser.parse_args()
    print(machine_line())
    server = subprocess.run([RedisService(load_settings()).binary(), "--version"], capture_output=True,
                            text=True).stdout.split()
    print(versions_line(HERE.parent, metadata.version("mlplat"), {
        "redis-py": metadata.version("redis"), "prometheus_client": metadata.version("prometheus_client"),
        "redis-server": server[2].removeprefix("v=") if len(server) > 2 else "?"}))
    with contextlib.ExitStack() as stack:
        homes = [load_settings(home=stack.enter_context(tempfile.TemporaryDirectory(prefix="mlplat-bench-services-")))
                 for _ in args.keys]
        for settings in homes:
            stack.callback(services.down, settings)
        clients = [redis.Redis.from_url(online_store_url(settings)) for settings in homes]
        for client, keys in zip(clients, args.keys):
            fill(client, keys)
        # The homes take turns scrape by scrape, so a change in the machine's load hits every key count alike.
        scrapes = interleaved_latencies([lambda i, c=c: exposition(c, PREFIX) for c in clients], args.scrapes, 5)
        before = [median_time(lambda c=c: scrape_before(c), 3)[0] for c in clients]
        ups = [timed_up(settings) for settings in homes]
        restarts = [redis_restart(settings) for settings in homes]
    table = [["online keys", "scrape p50", "before (SCAN)", "monitor starts?", "mlplat up", "/metrics HTTP p50",
              "redis restart"]]
    for keys, times, old, (up, http), restart in zip(args.keys, scrapes, before, ups, restarts):
        table.append([f"{keys:,}", f"{statistics.median(times) * 1e3:.1f} ms", f"{old * 1e3:,.0f} ms",
                      "yes" if old < 1 else "no: > 1 s health check", f"{up:.1f} s", f"{http * 1e3:.1f} ms",
                      f"{restart:.2f} s"])
    print(render(table))
    print(f"scrape: the collector in process (what /metrics runs), {args.scrapes} times per home, homes taking turns; "
          f"before: the same plus the SCAN for drift keys the collector did until this change (p50 of 3), which "
          f"made the monitor fail its 1 s health check (then `mlplat up` stopped before the stream service). Each "
          f"home holds {MODELS} models' counters and drift scores besides its online keys. `mlplat up`: the "
          f"command, with Redis running, starting every other embedded service (MLflow, Triton, the scheduler, "
          f"the monitor, the stream service) until each is healthy; its second run, the first having prepared "
          f"MLflow's store. `redis restart`: its append-only file loads, growing with the data by nature.")


if __name__ == "__main__":
    main()
