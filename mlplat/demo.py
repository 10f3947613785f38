"""The main job, end to end on embedded defaults: ``python -m mlplat.demo``.

Generates a ride-hailing dataset (driver and customer features, trip labels),
defines the features, ingests them, builds a point-in-time training set,
materialises, reads online, pushes a fresh value, then trains, gates, registers
and promotes a model, serves it from Triton over gRPC, and prints a summary
with the model's lineage.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import pandas as pd

import mlplat
from mlplat.features import Entity, FeatureView, Field
from mlplat.features.compute import BatchFeatureView
from mlplat.streaming import Aggregation, StreamFeatureView

driver = Entity("driver", join_keys=["driver_id"], description="A driver on the platform.")
customer = Entity("customer", join_keys=["customer_id"], description="A rider.")
driver_stats = FeatureView(
    "driver_stats", entities=[driver], ttl=timedelta(days=2), owner="marketplace-team",
    description="Daily driver performance.", tags={"tier": "gold"},
    schema=[Field("rating", "float32"), Field("trips_today", "int64"), Field("acceptance_rate", "float32"),
            Field("avg_speed_kmh", "float32")],
)
customer_profile = FeatureView(
    "customer_profile", entities=[customer], ttl=timedelta(days=30), owner="growth-team",
    description="Customer history and membership.", created_timestamp_field="created",
    schema=[Field("lifetime_trips", "int64"), Field("avg_fare", "float64"), Field("membership", "string"),
            Field("is_verified", "bool")],
)

driver_daily = BatchFeatureView(
    "driver_daily", entities=[driver], ttl=timedelta(days=2), owner="marketplace-team",
    description="Trips and revenue per driver per day, computed from the raw trip log.",
    schema=[Field("trips", "int64"), Field("revenue", "float64")],
    transformation="""
        SELECT driver_id, $end - INTERVAL 1 MICROSECOND AS event_timestamp, count(*) AS trips, sum(fare) AS revenue
        FROM trips WHERE event_timestamp >= $start AND event_timestamp < $end GROUP BY driver_id""",
)
driver_live = StreamFeatureView(
    "driver_live", entities=[driver], owner="marketplace-team", slide="5min", watermark="2min",
    description="Trips, revenue and distinct riders per driver over the last hour, fresh from the trip stream.",
    aggregations=[Aggregation("fare", "count", "1h"), Aggregation("fare", "sum", "1h"),
                  Aggregation("customer_id", "approx_count_distinct", "1h")],
)


def trip_log(labels: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """The raw event log of the labelled trips: who drove whom, when, for what fare."""
    rng = np.random.default_rng(seed)
    return labels[["driver_id", "customer_id", "event_timestamp"]].assign(fare=rng.gamma(4, 4, len(labels)).round(2))


def make_dataset(drivers: int = 1000, customers: int = 2000, days: int = 14, trips: int = 20000, seed: int = 7):
    """Driver stats (daily), customer profiles (weekly) and labelled trips ending now."""
    rng = np.random.default_rng(seed)
    end = pd.Timestamp.now(tz="UTC").floor("h")
    day_starts = pd.date_range(end=end - pd.Timedelta(hours=1), periods=days, freq="D")
    ids = np.repeat(np.arange(1, drivers + 1), days)
    when = day_starts[np.tile(np.arange(days), drivers)] + pd.to_timedelta(rng.integers(0, 3600, len(ids)), unit="s")
    skill = rng.normal(0, 1, drivers)[ids - 1]
    stats = pd.DataFrame({
        "driver_id": ids, "event_timestamp": when,
        "rating": np.clip(4.5 + 0.3 * skill + rng.normal(0, 0.1, len(ids)), 1, 5).astype("float32"),
        "trips_today": rng.poisson(12 + 3 * np.clip(skill, -2, 2)),
        "acceptance_rate": rng.beta(8 + 2 * np.clip(skill, -3, 3), 2).astype("float32"),
        "avg_speed_kmh": rng.normal(32, 5, len(ids)).astype("float32"),
    })
    weeks = pd.date_range(end=end - pd.Timedelta(hours=2), periods=max(1, days // 7 + 1), freq="7D")
    cids = np.repeat(np.arange(1, customers + 1), len(weeks))
    profiles = pd.DataFrame({
        "customer_id": cids, "event_timestamp": np.tile(weeks, customers),
        "lifetime_trips": rng.poisson(40, len(cids)), "avg_fare": rng.gamma(4, 4, len(cids)).round(2),
        "membership": rng.choice(["basic", "plus", "premium"], len(cids), p=[0.7, 0.2, 0.1]),
        "is_verified": rng.random(len(cids)) < 0.8,
    })
    profiles["created"] = profiles["event_timestamp"] + pd.Timedelta(minutes=5)
    trip_driver = rng.integers(1, drivers + 1, trips)
    trip_time = end - pd.to_timedelta(rng.integers(0, days * 86400, trips), unit="s")
    p_complete = 1 / (1 + np.exp(-(1.5 + skill_of(stats, trip_driver))))
    labels = pd.DataFrame({
        "trip_id": np.arange(trips), "driver_id": trip_driver,
        "customer_id": rng.integers(1, customers + 1, trips), "event_timestamp": trip_time,
        "completed": (rng.random(trips) < p_complete).astype("int8"),
    })
    return stats, profiles, labels.sort_values("event_timestamp", ignore_index=True)


def skill_of(stats: pd.DataFrame, driver_ids: np.ndarray) -> np.ndarray:
    """Mean rating of each driver, centred: the signal the label depends on."""
    mean_rating = stats.groupby("driver_id")["rating"].mean()
    return (mean_rating.reindex(driver_ids).to_numpy() - 4.5) * 3


@contextmanager
def step(title: str) -> Iterator[None]:
    start = time.perf_counter()
    print(f"- {title} ...", end="", flush=True)
    yield
    print(f" {time.perf_counter() - start:.2f} s")


def run(fresh: bool = False, keep_services: bool = False) -> None:
    """Run the demo against ``mlplat.connect()``'s platform (and stop its services, unless kept)."""
    if fresh:
        from mlplat import services
        from mlplat.config import load_settings

        settings = load_settings()
        services.down(settings)
        shutil.rmtree(settings.home, ignore_errors=True)
    with step("start embedded services"):
        p = mlplat.connect()
    print(f"  home {p.settings.home}")
    with step("generate a ride-hailing dataset"):
        stats, profiles, labels = make_dataset()
    with step("register entities and feature views"):
        p.features.apply([driver, customer, driver_stats, customer_profile, driver_daily, driver_live])
    with step(f"ingest {len(stats):,} driver rows and {len(profiles):,} customer rows"):
        p.features.ingest("driver_stats", stats)
        p.features.ingest("customer_profile", profiles)
    features = ["driver_stats:*", "customer_profile:avg_fare", "customer_profile:membership"]
    with step(f"point-in-time training set for {len(labels):,} trips"):
        train = p.features.get_training_set(labels, features)
    with step("materialise the latest values to Redis"):
        results = p.features.materialize(progress=False)
    trips = trip_log(labels)
    days = pd.Timestamp.now(tz="UTC").floor("D") - trips["event_timestamp"].min().floor("D")
    with step(f"compute driver_daily from the raw log of {len(trips):,} trips ({days.days} daily partitions, SQL)"):
        computed = p.features.compute("driver_daily", trips["event_timestamp"].min().floor("D"),
                                      pd.Timestamp.now(tz="UTC").floor("D"), sources={"trips": trips},
                                      materialize=True, progress=False)
    recent = trips[trips["event_timestamp"] >= pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)]
    with step(f"stream the last hour's {len(recent)} trips through driver_live (Redis Stream, consumer group)"):
        p.streams.send("driver_live", recent)
        p.streams.process()
    rows = [{"driver_id": i} for i in (1, 2, 3)]
    with step("online lookup of 3 drivers"):
        online = p.features.get_online_features(["driver_stats:rating", "driver_stats:trips_today"], rows)
    fresh_value = pd.DataFrame({"driver_id": [1], "event_timestamp": [pd.Timestamp.now(tz="UTC")],
                                "rating": [4.99], "trips_today": [30], "acceptance_rate": [0.97],
                                "avg_speed_kmh": [35.0]})
    with step("push a fresh value for driver 1"):
        p.features.push("driver_stats", fresh_value)
    after = p.features.get_online_features(["driver_stats:rating"], [{"driver_id": 1}]).to_dict()
    model_features = ["driver_stats:*", "customer_profile:avg_fare", "customer_profile:membership"]  # a string
    with step("train, track and gate an XGBoost model (MLflow)"):
        trained = p.train("xgboost.XGBClassifier", features=model_features, entity_df=labels, target="completed",
                          name="trip_completion", params={"n_estimators": 100, "max_depth": 4},
                          validation={"metric": "roc_auc", "min": 0.6})
    served = []
    if trained.version:
        with step(f"promote version {trained.version} to champion"):
            p.models.promote("trip_completion", trained.version, reason="demo")
        with step("deploy the champion to Triton (ONNX, parity-checked)"):
            deployment = p.deploy("trip_completion")
        trips = labels.tail(3)[["driver_id", "customer_id"]].to_dict("records")
        p.predict("trip_completion", trips)  # the first call opens the gRPC channel
        served = [(trip, p.predict("trip_completion", [trip])) for trip in trips]
        traffic = labels.tail(2000)[["driver_id", "customer_id"]].to_dict("list")
        with step("serve 2,000 more trips in batches of 100, logged for monitoring"):
            for start in range(0, 2000, 100):
                p.predict("trip_completion", {k: v[start:start + 100] for k, v in traffic.items()})
            p.serving.log.flush()
            p.monitor.flush()
        with step("check drift, latency and errors against the thresholds"):
            check = p.monitor.check("trip_completion")

    print("\nSummary")
    print(f"  training set: {train.shape[0]:,} rows x {train.shape[1]} columns, "
          f"{train['rating'].notna().mean():.1%} with driver features, "
          f"label rate {train['completed'].mean():.1%}")
    print(train.sample(5, random_state=1).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for result in results:
        print(f"  materialised {result.view} v{result.version}: {result.entities:,} entities from {result.rows_read:,} rows")
    print("  online:", {k: [round(v, 3) if isinstance(v, float) else v for v in vs] for k, vs in online.to_dict().items()})
    print(f"  after push, driver 1 rating: {after['rating'][0]:.2f}")
    print(f"  {computed}")
    busiest = recent["driver_id"].value_counts().index[:3].tolist()
    live = p.features.get_online_features(["driver_daily:trips", "driver_daily:revenue", "driver_live:*"],
                                          {"driver_id": busiest}).to_df()
    print("  computed and live features of the busiest drivers of the last hour:")
    print(live.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in trained.metrics.items())
    print(f"  model trip_completion: {metrics} on the latest 20% of trips; "
          + (f"registered as version {trained.version}" if trained.version else f"not registered: {trained.rejected}"))
    if served:
        print(f"\nServing: {deployment.triton_model} v{deployment.version} {deployment.status} on Triton gRPC "
              f"{deployment.endpoint}")
        for trip, prediction in served:
            print(f"  {trip} -> P(completed) {prediction.outputs[0, 1]:.3f}  "
                  f"(v{prediction.version}, {prediction.latency_ms:.2f} ms incl. online feature lookup)")
        print(f"\nMonitoring: {check}")
        print(f"  alerts: {p.alerts()}; metrics for Prometheus: `mlplat monitor scrape-config`, "
              "a Grafana dashboard: `mlplat monitor dashboard trip_completion`")
    if trained.version:
        print("\nLineage")
        print(p.lineage(endpoint="trip_completion") if served else p.lineage(model="trip_completion"))
    trail = p.audit.entries()
    print(f"\nAudit trail: {len(trail)} actions by {', '.join(sorted({e.who for e in trail}))} "
          "(p.audit.entries(), `mlplat audit`):")
    done = Counter(f"{e.kind} {e.action}" for e in trail)
    print("  " + ", ".join(f"{action}{f' x{n}' if n > 1 else ''}" for action, n in done.items()))
    p.close()
    if not keep_services:
        from mlplat import services

        services.down(p.settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fresh", action="store_true", help="Stop services and clear $MLPLAT_HOME first.")
    parser.add_argument("--keep-services", action="store_true", help="Leave the services running (for workspaces).")
    args = parser.parse_args()
    run(args.fresh, args.keep_services)


if __name__ == "__main__":
    main()
