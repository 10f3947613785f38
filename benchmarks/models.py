"""Benchmark the serving paths of models logged with ``p.models.log``: a PyTorch MLP (its ONNX export on Triton)
against in-process onnxruntime on the same export, and the pyfunc fallback (a worker process behind Triton)
against the same pyfunc in process.

    python benchmarks/models.py
    python benchmarks/models.py --calls 200   # smoke run

Builds the demo's features in a fresh mlplat home (a throw-away redis-server online), trains a small MLP on three
features with a plain PyTorch loop and a ``log1p`` + logistic-regression pipeline (which ONNX cannot express),
logs, promotes and deploys both on the local Triton, then measures in the same run ``p.predict`` on a feature
matrix at batch 1 (p50/p99 latency) and batch 256 (rows/s), and each model's in-process peer, and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnxruntime
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

import mlplat
from mlplat.demo import customer, customer_profile, driver, driver_stats, make_dataset
from mlplat.serving.triton import TritonService, triton_installed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from feature_store import number, redis_server, render  # noqa: E402
from measure import interleaved_latencies, latency_summary, machine_line, versions_line  # noqa: E402

FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate", "customer_profile:avg_fare"]
COLUMNS = ["rating", "acceptance_rate", "avg_fare"]
BATCH, WARMUP = 256, 30


class MLP(torch.nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.scale = torch.nn.BatchNorm1d(len(COLUMNS))
        self.layers = torch.nn.Sequential(torch.nn.Linear(len(COLUMNS), hidden), torch.nn.ReLU(),
                                          torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.scale(x))


def setup(home: Path, url: str) -> tuple[Any, Any, np.ndarray]:
    """A demo platform, the rows whose features are all known, and their feature matrix."""
    stats, customers, labels = make_dataset(drivers=200, customers=100, days=5, trips=4000, seed=11)
    p = mlplat.connect(home=str(home), online_store=url)
    if not triton_installed(p.settings):
        sys.exit(f"no tritonserver in {p.settings.triton_env}: `make triton` creates it")
    p.features.apply([driver, driver_stats, customer, customer_profile])
    p.features.ingest("driver_stats", stats)
    p.features.ingest("customer_profile", customers)
    p.features.materialize(progress=False)
    frame = p.features.get_training_set(labels, FEATURES)
    keep = frame[COLUMNS].notna().all(axis=1).to_numpy()
    return p, labels[keep].reset_index(drop=True), frame[keep].reset_index(drop=True)


def train_mlp(frame: Any) -> MLP:
    torch.manual_seed(0)
    module = MLP()
    X = torch.tensor(frame[COLUMNS].to_numpy(np.float32))
    y = torch.tensor(frame["completed"].to_numpy(np.int64))
    optimiser = torch.optim.Adam(module.parameters(), lr=0.01)
    for _ in range(100):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(module(X), y).backward()
        optimiser.step()
    return module.eval()


def rows_per_second(call: Any, batches: list[np.ndarray], calls: int) -> float:
    for batch in batches[:3]:
        call(batch)
    started = time.perf_counter()
    for i in range(calls):
        call(batches[i % len(batches)])
    return calls * BATCH / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="timed batch-1 calls per side")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    machine = machine_line()
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-models-") as folder, redis_server(Path(folder)) as port:
        p, entity_df, frame = setup(Path(folder) / "home", f"redis://127.0.0.1:{port}/0")
        try:
            module = train_mlp(frame)
            p.models.log(module, "bench_torch", features=FEATURES, entity_df=entity_df, target="completed")
            pipeline = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression())
            pipeline.fit(frame[COLUMNS], frame["completed"])
            fallback = p.models.log(pipeline, "bench_pyfunc", features=FEATURES, entity_df=entity_df,
                                    target="completed")
            for name in ("bench_torch", "bench_pyfunc"):
                p.models.promote(name)
                p.deploy(name)
            table = measure(p, frame, fallback.model_uri, args.calls)
        finally:
            p.close()
            TritonService(p.settings).stop()
    print(machine)
    print(versions_line(HERE.parent, mlplat.__version__, {"torch": torch.__version__,
                                                          "onnxruntime": onnxruntime.__version__,
                                                          "mlflow": mlflow.__version__}))
    print(render(table))


def measure(p: Any, frame: Any, pyfunc_uri: str, calls: int) -> list[list[str]]:
    X = np.ascontiguousarray(frame[COLUMNS].to_numpy(np.float32))
    rng = np.random.default_rng(1)
    singles = [X[i:i + 1] for i in rng.integers(0, len(X), calls + WARMUP)]
    batches = [np.ascontiguousarray(X[rng.integers(0, len(X), BATCH)]) for _ in range(8)]
    onnx_path = TritonService(p.settings).models / "bench_torch" / "1" / "model.onnx"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    with mlflow_session(p):
        pyfunc = mlflow.pyfunc.load_model(pyfunc_uri)
    import pandas as pd

    sides = {
        "MLP: p.predict (Triton, ONNX)": lambda rows: p.predict("bench_torch", features=rows).outputs,
        "MLP: onnxruntime in process (same export)": lambda rows: session.run(["probabilities"], {"input": rows})[0],
        "log1p pipeline: p.predict (Triton, pyfunc worker)": lambda rows: p.predict("bench_pyfunc",
                                                                                    features=rows).outputs,
        "log1p pipeline: pyfunc in process": lambda rows: pyfunc.predict(pd.DataFrame(rows, columns=COLUMNS)),
    }
    lines = [["side", "batch 1 p50 ms", "batch 1 p99 ms", f"batch {BATCH} rows/s", "serving"]]
    timed = interleaved_latencies([lambda i, f=f: f(singles[i]) for f in sides.values()], calls, WARMUP)
    for (label, call), samples in zip(sides.items(), timed):
        summary = latency_summary(samples, "l")
        lines.append([label, number(summary["l_p50"] * 1e3), number(summary["l_p99"] * 1e3),
                      number(rows_per_second(call, batches, max(20, calls // 10))),
                      "pyfunc (slower)" if "pyfunc worker" in label else "onnx" if "Triton" in label else "-"])
    return lines


def mlflow_session(p: Any) -> Any:
    from mlplat.registry.tracking import session

    return session(p.settings)


if __name__ == "__main__":
    main()
