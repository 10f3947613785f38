"""Benchmark serving models beyond numeric tables: ``p.predict`` on Triton against in-process onnxruntime.

    python benchmarks/categorical.py
    python benchmarks/categorical.py --calls 200   # smoke run

The demo's features (a fresh mlplat home, its embedded Redis and Triton), and for each model, in the same run,
taking turns call by call: ``p.predict`` of one row of features (batch 1: p50 and p99) and of 256 rows
(rows/s), against onnxruntime in this process on the very ``model.onnx`` Triton serves (the limit). Models:

- ``categorical pipeline``: a scikit-learn Pipeline, one-hot ``membership`` (a string) and median-imputed
  numbers, then a logistic regression: two input tensors, FP32 and STRING;
- ``lightgbm categorical``: LightGBM with ``membership`` as a native categorical (the export looks strings up).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from feature_store import render  # noqa: E402
from measure import fresh_platform, interleaved_latencies, percentile  # noqa: E402

import mlplat  # noqa: E402
from mlplat.demo import customer, customer_profile, driver, driver_stats, make_dataset  # noqa: E402
from mlplat.serving.onnx_export import Inputs  # noqa: E402
from mlplat.serving.triton import triton_installed  # noqa: E402

FEATURES = ["driver_stats:rating", "customer_profile:membership", "customer_profile:avg_fare"]
COLUMNS = ["rating", "membership", "avg_fare"]
NUMBERS = ["driver_stats:rating", "customer_profile:avg_fare"]  # the baseline: the same model without the string
BATCH = 256


def one_hot_pipeline() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = ColumnTransformer([("membership", OneHotEncoder(handle_unknown="ignore"), ["membership"]),
                                ("numbers", SimpleImputer(strategy="median"), ["rating", "avg_fare"])])
    return Pipeline([("encode", encode), ("model", LogisticRegression(max_iter=500))])


MODELS: dict[str, Callable[[], tuple[Any, dict, list[str]]]] = {
    "categorical pipeline": lambda: (one_hot_pipeline(), {}, FEATURES),
    "lightgbm categorical": lambda: ("lightgbm.LGBMClassifier", {"n_estimators": 100}, FEATURES),
    "lightgbm, numbers only": lambda: ("lightgbm.LGBMClassifier", {"n_estimators": 100}, NUMBERS),
}


def prepare(home: Path) -> mlplat.Platform:
    stats, profiles, labels = make_dataset(drivers=500, customers=300, days=8, trips=20_000, seed=1)
    p = mlplat.connect(home=str(home))
    p.features.apply([driver, driver_stats, customer, customer_profile])
    p.features.ingest("driver_stats", stats)
    p.features.ingest("customer_profile", profiles)
    p.features.materialize()
    p.labels = labels
    return p


def rows(count: int, seed: int) -> list[list[Any]]:
    rng = np.random.default_rng(seed)
    kinds = np.array(["basic", "plus", "premium", "platinum", ""], dtype=object)  # an unseen one, a missing one
    return [[float(r), str(m), float(f)] for r, m, f in
            zip(rng.normal(4.5, 0.3, count), kinds[rng.integers(0, 5, count)], rng.gamma(4, 4, count))]


def measure(p: mlplat.Platform, name: str, features: list[str], calls: int) -> dict[str, float]:
    onnx = p.serving_target.models / name / p.deployments()[0].version / "model.onnx"
    info = p.serving_target.serving_info(name)["versions"]
    details = next(iter(info.values()))
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    columns = [c for c in COLUMNS if any(f.endswith(f":{c}") for f in features)]
    inputs = Inputs.of(columns, [columns[i] for i in details.get("texts", [])])
    wanted = [COLUMNS.index(c) for c in columns]
    singles = [[row[i] for i in wanted] for row in rows(64, 1)]
    batches = [[[row[i] for i in wanted] for row in rows(BATCH, 10 + k)] for k in range(8)]
    # The limit: the export in process on tensors made beforehand (p.predict makes its own from the rows).
    single_feeds = [inputs.feeds(pd.DataFrame([row], columns=columns)) for row in singles]
    batch_feeds = [inputs.feeds(pd.DataFrame(batch, columns=columns)) for batch in batches]

    def native(feeds: dict[str, np.ndarray]) -> Any:
        return session.run([details["output"]], feeds)

    one = interleaved_latencies([lambda i: p.predict(name, features=[singles[i % 64]]),
                                 lambda i: native(single_feeds[i % 64])], calls, 50)
    many = interleaved_latencies([lambda i: p.predict(name, features=batches[i % 8]),
                                  lambda i: native(batch_feeds[i % 8])], max(20, calls // 10), 5)
    return {"p50": percentile(one[0], 50), "p99": percentile(one[0], 99), "ort_p50": percentile(one[1], 50),
            "ort_p99": percentile(one[1], 99), "rows_s": BATCH / percentile(many[0], 50),
            "ort_rows_s": BATCH / percentile(many[1], 50)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed batch-1 calls per side")
    args = parser.parse_args()
    with fresh_platform(prepare) as p:
        if not triton_installed(p.settings):
            sys.exit(f"no Triton in {p.settings.triton_env}: run `make triton` first")
        lines = [["model", "p.predict p50 ms", "p99 ms", "onnxruntime p50 ms", "p99 ms", "p.predict rows/s @256",
                  "onnxruntime rows/s @256", "ratio"]]
        for name, make in MODELS.items():
            estimator, params, features = make()
            model = "".join(c for c in name if c.isalnum() or c == " ").replace(" ", "_")
            started = time.perf_counter()
            p.train(estimator, features=features, entity_df=p.labels, target="completed", name=model,
                    params=params)
            p.models.promote(model)
            p.deploy(model)
            for other in [d.name for d in p.deployments() if d.name != model]:
                p.undeploy(other)
            print(f"{name}: trained and deployed in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            m = measure(p, model, features, args.calls)
            lines.append([name, f"{m['p50'] * 1e3:.3f}", f"{m['p99'] * 1e3:.3f}", f"{m['ort_p50'] * 1e3:.3f}",
                          f"{m['ort_p99'] * 1e3:.3f}", f"{m['rows_s']:,.0f}", f"{m['ort_rows_s']:,.0f}",
                          f"{m['rows_s'] / m['ort_rows_s']:.2f}x"])
    print(render(lines))


if __name__ == "__main__":
    main()
