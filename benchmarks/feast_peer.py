"""The Feast side of ``benchmarks/feature_store.py``, run with the Feast venv's python.

Feast needs pandas < 3, so it cannot share mlplat's environment; the parent
runs this script in a subprocess on the same Parquet files and its own Redis
database, and reads the JSON it writes to ``--out``::

    feast_peer.py prepare  --repo DIR --source F.parquet --redis HOST:PORT,db=1 ...  # apply, materialize, online
    feast_peer.py training --repo DIR --entity-df E.parquet ...                    # historical features

Each measure that fails is reported under ``errors`` instead of stopping the run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, Int64

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import checksum, latencies, latency_summary, timed_with_peak  # noqa: E402

VIEW = "driver_stats"
TTL = timedelta(days=2)
VIEW_ALL, TTL_ALL = "driver_stats_all", timedelta(days=365)  # every row live: materialise all of them
CALLS = {1: 2000, 100: 200}  # timed online calls per batch size (100-entity lookups are slow in Feast)


def write_repo(repo: Path, redis: str) -> None:
    """A feature repo folder with feature_store.yaml: local provider, file offline store, Redis online."""
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: bench\n"
        "provider: local\n"
        f"registry:\n  path: {repo / 'registry.db'}\n  cache_ttl_seconds: 0\n"
        "offline_store:\n  type: file\n"
        f"online_store:\n  type: redis\n  connection_string: '{redis}'\n"
        "entity_key_serialization_version: 3\n"
    )


def definitions(source: str, features: int) -> list[Entity | FeatureView]:
    """The driver entity and two views of ``features`` float32 columns over the Parquet file (TTL 2 and 365 days)."""
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    schema = [Field(name="driver_id", dtype=Int64)] + [Field(name=f"f{i}", dtype=Float32) for i in range(features)]
    views = [FeatureView(name=name, entities=[driver], ttl=ttl, schema=schema, online=True,
                         source=FileSource(path=source, timestamp_field="event_timestamp"))
             for name, ttl in ((VIEW, TTL), (VIEW_ALL, TTL_ALL))]
    return [driver, *views]


def refs(features: int) -> list[str]:
    """Feature references ``driver_stats:f0`` ... in schema order."""
    return [f"{VIEW}:f{i}" for i in range(features)]


def attempt(results: dict[str, Any], name: str, measure: Callable[[], dict[str, Any]]) -> None:
    """Run one measure, recording its numbers or its error under ``name``."""
    try:
        results.update(measure())
    except Exception as exc:  # any Feast failure becomes a line under the table, not a crash
        results["errors"][name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()


def apply(store: FeatureStore, source: str, features: int) -> dict[str, Any]:
    """Register the definitions (nothing to report but errors)."""
    store.apply(definitions(source, features))
    return {}


def materialize(store: FeatureStore) -> dict[str, float]:
    """Wall time of materialising every row of the 365-day view; then the 2-day view, untimed, for online reads."""
    end = datetime.now(UTC)
    start = time.perf_counter()
    store.materialize(end - TTL_ALL, end, feature_views=[VIEW_ALL])
    seconds = time.perf_counter() - start
    store.materialize(end - TTL, end, feature_views=[VIEW])
    return {"materialize_s": seconds}


def online(store: FeatureStore, features: int, entities: int, batch: int) -> dict[str, float]:
    """p50/p99 of ``get_online_features(...).to_dict()`` for ``batch`` random entities per call.

    Warm-up is a tenth of the timed calls, as on the mlplat side.
    """
    rng = random.Random(batch)
    calls, warmup = CALLS[batch], CALLS[batch] // 10
    rows = [[{"driver_id": rng.randrange(1, entities + 1)} for _ in range(min(batch, entities))]
            for _ in range(calls + warmup)]
    names = refs(features)
    samples = latencies(lambda i: store.get_online_features(names, rows[i]).to_dict(), calls, warmup)
    return latency_summary(samples, f"online{batch}")


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Create the repo, apply, materialise and measure online reads."""
    results: dict[str, Any] = {"errors": {}, "online_calls": CALLS}
    write_repo(args.repo, args.redis)
    store = FeatureStore(repo_path=str(args.repo))
    attempt(results, "apply", lambda: apply(store, args.source, args.features))
    attempt(results, "materialize", lambda: materialize(store))
    for batch in CALLS:
        attempt(results, f"online{batch}", lambda b=batch: online(store, args.features, args.entities, b))
    return results


def training(args: argparse.Namespace) -> dict[str, Any]:
    """Median time and peak memory of ``get_historical_features(...).to_df()`` in this fresh process."""
    results: dict[str, Any] = {"errors": {}}
    store = FeatureStore(repo_path=str(args.repo))
    entity_df = pd.read_parquet(args.entity_df)
    names = refs(args.features)

    def measure() -> dict[str, Any]:
        run = timed_with_peak(lambda: store.get_historical_features(entity_df, names).to_df(), args.repeats)
        return {"training_s": run["seconds"], "training_mib": run["peak_mib"],
                "training_total_mib": run["peak_total_mib"], "checksum": checksum(run["result"]["f0"])}

    attempt(results, "training", measure)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["prepare", "training"])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--features", type=int, required=True)
    parser.add_argument("--source", help="feature Parquet file (prepare)")
    parser.add_argument("--redis", help="Feast connection string, host:port,db=N (prepare)")
    parser.add_argument("--entities", type=int, help="driver ids are 1..entities (prepare)")
    parser.add_argument("--entity-df", help="entity_df Parquet file (training)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = prepare(args) if args.mode == "prepare" else training(args)
    args.out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
