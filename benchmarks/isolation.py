"""Benchmark what isolation costs on the serving path: the online store's ACL users against an open Redis.

    python benchmarks/isolation.py
    python benchmarks/isolation.py --calls 300   # smoke run

One mlplat home whose embedded Redis has ACL users (issue 16) and, beside it, a ``redis-server`` without
any (how every install ran before), holding the same materialised features. Taking turns call by call:

- an online read of 20 features for one entity: as the ``reader`` user (a workspace, ``p.predict``) against
  the open Redis (goal: p99 <= 1.05x);
- ``p.predict`` of one entity through the embedded Triton (whose model control needs the install's secret):
  features read as the reader and the prediction logged as the reader, against the same on the open Redis
  (goal: p50 and p99 <= 1.05x). Both sides call the same Triton; inference requests carry no secret, and
  Triton checks one only on the restricted protocols (model control, shared memory, trace, logging).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from feature_store import redis_server  # noqa: E402
from measure import interleaved_latencies, percentile  # noqa: E402

import mlplat  # noqa: E402
from mlplat import services  # noqa: E402
from mlplat.features.definitions import Entity, FeatureView, Field  # noqa: E402
from mlplat.serving.triton import TritonService, triton_installed  # noqa: E402

WIDTH, DRIVERS = 20, 5_000


def prepare(home: Path, open_url: str) -> tuple[mlplat.Platform, mlplat.Platform, mlplat.Platform]:
    """(admin, reader, open): the install itself, a reader of its ACL Redis, and the same home on the open Redis."""
    admin = mlplat.connect(home=str(home))
    driver = Entity("driver", join_keys=["driver_id"])
    view = FeatureView("stats", entities=[driver], ttl=timedelta(days=30),
                       schema=[Field(f"f{i}", "float32") for i in range(WIDTH)])
    rng = np.random.default_rng(7)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    rows = pd.DataFrame({"driver_id": np.arange(DRIVERS), "event_timestamp": now - pd.Timedelta(hours=1),
                         **{f"f{i}": rng.random(DRIVERS, dtype=np.float32) for i in range(WIDTH)}})
    admin.features.apply([driver, view])
    admin.features.ingest("stats", rows)
    admin.features.materialize(views=["stats"], progress=False)
    labels = pd.DataFrame({"driver_id": np.arange(2000), "y": (rows.f0[:2000] > 0.5).astype(int),
                           "event_timestamp": now})
    admin.train("sklearn.linear_model.LogisticRegression", features=[f"stats:f{i}" for i in range(WIDTH)],
                entity_df=labels, target="y", name="iso", split={"by": "random", "test_size": 0.2})
    opened = mlplat.connect(home=str(home), online_store=open_url)
    opened.features.materialize(views=["stats"], progress=False)
    return admin, mlplat.connect(home=str(home), online_user="reader"), opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    results: list[str] = []

    def row(name: str, isolated: list[float], before: list[float], q: int, goal: str) -> None:
        a, b = percentile(isolated, q) * 1000, percentile(before, q) * 1000
        results.append(f"| {name}, p{q} | {a:.3f} ms | {b:.3f} ms | {a / b:.2f}x | {goal} |")

    with tempfile.TemporaryDirectory(prefix="mlplat-bench-isolation-") as folder, \
            redis_server(Path(folder)) as port:
        home = Path(folder) / "home"
        admin, reader, opened = prepare(home, f"redis://127.0.0.1:{port}/0")
        try:
            refs = [f"stats:f{i}" for i in range(WIDTH)]

            def reads(p):
                return lambda i: p.features.get_online_features(refs, {"driver_id": [i % DRIVERS]})

            isolated, before = interleaved_latencies([reads(reader), reads(opened)], args.calls, 200)
            for q in (50, 99):
                row(f"online read, 1 entity x {WIDTH}", isolated, before, q, "<= 1.05x" if q == 99 else "")
            if triton_installed(admin.settings):
                admin.deploy("iso", admin.models.versions("iso")[0].version)

                def predicts(p):
                    return lambda i: p.predict("iso", [{"driver_id": i % DRIVERS}])

                isolated, before = interleaved_latencies([predicts(reader), predicts(opened)], args.calls, 200)
                for q in (50, 99):
                    row("p.predict, 1 entity", isolated, before, q, "<= 1.05x")
            else:
                results.append("| p.predict | no Triton: `make triton` installs it | | | |")
        finally:
            for p in (reader, opened, admin):
                p.close()
            TritonService(admin.settings).stop()
            services.down(admin.settings)
    print("| operation | ACL users (reader) | open Redis (before) | ratio | goal |")
    print("|---|---|---|---|---|")
    print("\n".join(results))


if __name__ == "__main__":
    main()
