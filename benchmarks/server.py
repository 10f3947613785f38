"""Benchmark server mode against embedded mode on the same machine, in one run.

    python benchmarks/server.py
    python benchmarks/server.py --repeats 2 --ingest-rows 100000   # smoke run

One mlplat home, one throw-away ``redis-server``; the embedded side calls the library in this process, the
server side is the same library behind ``mlplat server`` (a separate process, fixed tokens) called through
the SDK in server mode, as a workspace does. Taking turns call by call, it times:

- ``apply`` (a changed description), ``promote`` (a forced promotion) and ``deploy`` (when Triton is
  installed): what the server adds per call;
- a training set of 100k entity rows x 50 features (goal: server <= 1.5x embedded);
- an ingest of 1M rows (goal: <= 1.5x);
- an online read of 50 features for one entity, p99 (goal: unchanged, <= 1.1x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from feature_store import redis_server  # noqa: E402
from measure import interleaved_latencies, percentile  # noqa: E402

import mlplat  # noqa: E402
from mlplat.features.definitions import Entity, FeatureView, Field  # noqa: E402
from mlplat.remote.platform import ServerModePlatform  # noqa: E402
from mlplat.services import free_port  # noqa: E402

TOKEN = "bench-token"


def views(width: int) -> tuple[Entity, FeatureView, FeatureView]:
    user = Entity("user", join_keys=["user_id"])
    wide = FeatureView("wide", entities=[user], ttl=timedelta(days=30),
                       schema=[Field(f"f{i}", "float32") for i in range(width)])
    narrow = FeatureView("narrow", entities=[user], ttl=timedelta(days=30),
                         schema=[Field(f"n{i}", "float32") for i in range(10)])
    return user, wide, narrow


def frame(rows: int, users: int, columns: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    data = {"user_id": rng.integers(0, users, rows),
            "event_timestamp": now - pd.to_timedelta(rng.integers(3600, 20 * 86400, rows), unit="s")}
    data.update({c: rng.random(rows, dtype=np.float32) for c in columns})
    return pd.DataFrame(data)


def start_server(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    tokens = root / "tokens.yaml"
    tokens.write_text(f"{TOKEN}: {{name: bench, roles: {{bench: owner}}, admin: true}}\n")
    tokens.chmod(0o600)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlplat.cli", "server", "--port", str(port), "--tokens",
                               str(tokens)], env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/api/v1/health").status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("mlplat server did not start")


def timed_pair(embedded, server, repeats: int) -> tuple[float, float]:
    """Median seconds of each, taking turns."""
    e, s = interleaved_latencies([embedded, server], repeats, 1)
    return statistics.median(e), statistics.median(s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--entity-rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--ingest-rows", type=int, default=1_000_000)
    parser.add_argument("--online-calls", type=int, default=3000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlplat-bench-server-") as folder, redis_server(Path(folder)) as port:
        root = Path(folder)
        env = {"MLPLAT_HOME": str(root / "home"), "MLPLAT_ONLINE_STORE": f"redis://127.0.0.1:{port}/0"}
        os.environ.update(env)
        server = None
        try:
            local = mlplat.connect()
            user, wide, narrow = views(args.features)
            columns = [f.name for f in wide.schema]
            local.features.apply([user, wide, narrow])
            local.features.ingest("wide", frame(200_000, 20_000, columns, 1))
            local.features.materialize(views=["wide"])
            server, url = start_server(root, env)
            remote = ServerModePlatform.open(token=TOKEN, server_url=url)
            print("\n".join(table(local, remote, args, wide, columns)))
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
            subprocess.run([sys.executable, "-m", "mlplat.cli", "down"], env={**os.environ, **env},
                           capture_output=True)


def table(local, remote, args, wide, columns) -> list[str]:
    results = []

    def row(name: str, embedded: float, server: float, unit: str, goal: str = "") -> None:
        scale = 1000.0 if unit == "ms" else 1.0
        results.append(f"| {name} | {embedded * scale:.3g} {unit} | {server * scale:.3g} {unit} | "
                       f"{server / embedded:.2f}x | {goal} |")

    def applies(p):
        return lambda i: p.features.apply([_described(wide, f"{id(p)}-{i}")])

    row("apply (changed description), per call", *timed_pair(applies(local), applies(remote), args.repeats * 4), "ms")

    labels = pd.DataFrame({"user_id": np.arange(2000) % 20_000, "y": np.arange(2000) % 2,
                           "event_timestamp": pd.Timestamp.now(tz="UTC").floor("s")})
    refs = [f"wide:f{i}" for i in range(5)]
    for _ in range(2):
        local.train("sklearn.linear_model.LogisticRegression", features=refs, entity_df=labels, target="y",
                    name="bench", split={"by": "random", "test_size": 0.2})
    versions = [v.version for v in local.models.versions("bench")]

    def promotes(p):
        return lambda i: p.models.promote("bench", versions[i % 2], force=True, reason="benchmark")

    row("promote (forced), per call", *timed_pair(promotes(local), promotes(remote), args.repeats * 2), "ms")

    from mlplat.serving.triton import TritonService, triton_installed

    if triton_installed(local.settings):
        def deploys(p):
            return lambda i: p.deploy("bench", versions[i % 2])

        row("deploy, per call", *timed_pair(deploys(local), deploys(remote), max(2, args.repeats // 2)), "ms")
        TritonService(local.settings).stop()

    entity_df = pd.DataFrame({"user_id": np.random.default_rng(2).integers(0, 20_000, args.entity_rows),
                              "event_timestamp": pd.Timestamp.now(tz="UTC").floor("s")})
    features = [f"wide:{c}" for c in columns]

    def training_sets(p):
        return lambda i: p.features.get_training_set(entity_df, features)

    row(f"training set {args.entity_rows // 1000}k x {len(columns)}", *timed_pair(
        training_sets(local), training_sets(remote), args.repeats), "s", "<= 1.5x")

    batch = frame(args.ingest_rows, 50_000, [f"n{i}" for i in range(10)], 3)

    def ingests(p):
        return lambda i: p.features.ingest("narrow", batch)

    row(f"ingest {args.ingest_rows // 1000}k rows x 10", *timed_pair(ingests(local), ingests(remote),
                                                                      max(2, args.repeats // 2)), "s", "<= 1.5x")

    def reads(p):
        return lambda i: p.features.get_online_features(features, {"user_id": [i % 20_000]})

    e, s = interleaved_latencies([reads(local), reads(remote)], args.online_calls, 200)
    for q in (50, 99):
        row(f"online read, 1 entity x {len(columns)}, p{q}", percentile(e, q), percentile(s, q), "ms",
            "<= 1.1x" if q == 99 else "")
    return ["| operation | embedded | server mode | server/embedded | goal |", "|---|---|---|---|---|", *results]


def _described(view: FeatureView, text: str) -> FeatureView:
    from dataclasses import replace

    return replace(view, description=f"benchmark {text}")


if __name__ == "__main__":
    main()
