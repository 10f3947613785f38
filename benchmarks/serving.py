"""Benchmark mlplat serving on Triton against in-process onnxruntime (the limit) and `mlflow models serve` (the peer).

    python benchmarks/serving.py
    python benchmarks/serving.py --calls 200 --trees 10   # smoke run

Generates a feature view (one row of float32 features per driver) and a
labelled entity_df, ingests and materialises it in a fresh mlplat home (MLflow
tracking in SQLite there, a throw-away redis-server online), trains a random
forest with ``p.train``, promotes and deploys it on the local Triton, starts
``mlflow models serve`` on the same registered version, then measures in the
same run: ``p.predict`` end to end, raw Triton gRPC, onnxruntime in process on
the deployed ``model.onnx`` and MLflow's HTTP server, at batch 1 (latency) and
batch 256 (rows/s), and prints one table with the issue's goals.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnxruntime
import pandas as pd
import requests
import sklearn
import tritonclient.grpc as grpcclient

import mlplat
from mlplat.features import Entity, FeatureView, Field
from mlplat.services import free_port
from mlplat.serving.triton import TritonService, triton_installed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from feature_store import number, redis_server, render  # noqa: E402
from measure import interleaved_latencies, latency_summary, machine_line, versions_line  # noqa: E402

VIEW, TTL, NAME = "driver_stats", timedelta(days=1), "serving_bench"
BY_ID = f"{NAME}_by_id"
TARGET, TIMESTAMP, SEED = "label", "event_timestamp", 0
FOREST = "sklearn.ensemble.RandomForestClassifier"
INPUT, OUTPUT = "input", "probabilities"
BATCH, DISTINCT_BATCHES = 256, 16
WARMUP = 50
TICKS = os.sysconf("SC_CLK_TCK")
PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output")
START_TIMEOUT_S = 180
MILLION = 1_000_000
# (protocol, batch, concurrency); HTTP sends binary tensors too (the KServe v2 binary data extension)
PERF_ANALYZER_RUNS = (("grpc", 1, 1), ("grpc", 1, 4), ("grpc", BATCH, 1), ("grpc", BATCH, 4), ("grpc", BATCH, 8),
                      ("http", BATCH, 4), ("http", BATCH, 8))
PERF_ANALYZER_TIMEOUT_S = 120
PERF_VENV = Path(__file__).resolve().parent.parent / ".venv-perf"  # made by benchmarks/setup_perf_analyzer.sh


@dataclass(frozen=True)
class Data:
    """The generated inputs: the feature file (ingested by mlplat) and the labelled entity rows."""

    features_path: Path
    entity_df: pd.DataFrame
    refs: list[str]
    columns: list[str]


def make_data(folder: Path, args: argparse.Namespace) -> Data:
    """One row per driver an hour or two old, and entity rows in the last half hour labelled from f0, f1, f2.

    Every value is present: scikit-learn forests and ONNX tree ensembles route missing values differently.
    Entity rows are later than every feature row, so training sees the very values served online.
    """
    rng = np.random.default_rng(SEED)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    columns = [f"f{i}" for i in range(args.features)]
    values = rng.standard_normal((args.entities, args.features), dtype=np.float32)
    features = pd.DataFrame({
        "driver_id": np.arange(1, args.entities + 1, dtype=np.int64),
        TIMESTAMP: (now - pd.Timedelta(hours=1) - pd.to_timedelta(rng.integers(0, 3600, args.entities), unit="s"))
        .as_unit("ns"),
    })
    features = pd.concat([features, pd.DataFrame(values, columns=columns)], axis=1)
    rows = 4 * args.entities
    drivers = rng.integers(1, args.entities + 1, rows, dtype=np.int64)
    seconds = rng.integers(60, 1800, rows)
    f0, f1, f2 = (values[drivers - 1, i].astype(np.float64) for i in range(3))
    entity_df = pd.DataFrame({
        "driver_id": drivers,
        TIMESTAMP: (now - pd.to_timedelta(seconds, unit="s")).as_unit("ns"),
        TARGET: (rng.random(rows) < 1 / (1 + np.exp(-(1.5 * f0 - f1 + f2 * f0)))).astype(np.int64),
    }).sort_values(TIMESTAMP, kind="stable", ignore_index=True)
    path = folder / "features.parquet"
    features.to_parquet(path, index=False)
    return Data(path, entity_df, [f"{VIEW}:{c}" for c in columns], columns)


def setup_mlplat(data: Data, home: Path, url: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """Connect, apply, ingest, materialise, train, promote; return the platform and the training result."""
    p = mlplat.connect(home=str(home), online_store=url)
    if not triton_installed(p.settings):
        sys.exit(f"no tritonserver in {p.settings.triton_env}: `make triton` creates it")
    driver = Entity("driver", join_keys=["driver_id"])
    view = FeatureView(VIEW, entities=[driver], ttl=TTL, source=str(data.features_path),
                       schema=[Field(c, "float32") for c in data.columns])
    p.features.apply([driver, view])
    p.features.ingest(VIEW)
    p.features.materialize(progress=False)
    trained = p.train(FOREST, features=data.refs, entity_df=data.entity_df, target=TARGET, name=NAME,
                      params={"n_estimators": args.trees, "max_depth": 8, "n_jobs": -1, "random_state": SEED},
                      validation={"metric": "roc_auc", "min": 0.5})
    trained.check()
    p.models.promote(NAME, trained.version)
    return p, trained


# -- the sides --------------------------------------------------------------------------------------
def triton_infer(client: grpcclient.InferenceServerClient, version: str) -> Callable[[np.ndarray], np.ndarray]:
    """One gRPC inference of a float32 matrix, built per call as a client would (binary tensor contents)."""
    output = [grpcclient.InferRequestedOutput(OUTPUT)]

    def infer(rows: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput(INPUT, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        return client.infer(NAME, [tensor], model_version=version, outputs=output).as_numpy(OUTPUT)

    return infer


def by_id_infer(client: grpcclient.InferenceServerClient) -> Callable[[np.ndarray], np.ndarray]:
    """One gRPC inference of ``<model>_by_id`` as any-language clients call it: entity ids (BYTES) in."""
    output = [grpcclient.InferRequestedOutput(OUTPUT)]

    def infer(ids: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput("driver_id", [len(ids), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([str(i).encode() for i in ids], dtype=object).reshape(-1, 1))
        return client.infer(BY_ID, [tensor], outputs=output).as_numpy(OUTPUT)

    return infer


def onnx_session(path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """In-process onnxruntime on ``model.onnx`` (``threads`` 0: its default, one per core).

    Spinning is off so that idle intra-op threads do not take CPU from the Triton calls taking turns with them.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda rows: session.run([OUTPUT], {INPUT: rows})[0]


@contextmanager
def mlflow_server(p: Any, version: str, folder: Path) -> Iterator[str]:
    """``mlflow models serve`` of the version on a free loopback port; its process group is stopped on exit."""
    port = free_port()
    log = (folder / "mlflow-serve.log").open("wb")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # it runs `uvicorn`
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": p.settings.tracking,
           "MLFLOW_REGISTRY_URI": p.settings.tracking}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/{version}", "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with suppress(requests.RequestException):
                if requests.get(f"{url}/ping", timeout=1).ok:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (folder / "mlflow-serve.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"mlflow models serve did not answer on {url}: {' | '.join(tail)}")
            time.sleep(0.2)
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def mlflow_invoke(session: requests.Session, url: str, columns: list[str]) -> Callable[[np.ndarray], list]:
    """One POST /invocations of ``{"dataframe_split": ...}`` JSON, encoded per call as a client would."""

    def invoke(rows: np.ndarray) -> list:
        body = json.dumps({"dataframe_split": {"columns": columns, "data": rows.tolist()}})
        answer = session.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        answer.raise_for_status()
        return answer.json()["predictions"]

    return invoke


def labels(predictions: list) -> np.ndarray:
    """Class labels from mlflow's predictions: labels as they are, or the argmax of per-class probabilities."""
    found = np.asarray(predictions)
    return np.argmax(found, axis=1) if found.ndim == 2 else found


# -- measures ---------------------------------------------------------------------------------------
def rows_per_second(call: Callable[[np.ndarray], Any], batches: list[np.ndarray], calls: int) -> float:
    """Rows/s of ``calls`` back-to-back calls, each on one of ``batches`` in turn."""
    start = time.perf_counter()
    for i in range(calls):
        call(batches[i % len(batches)])
    return calls * len(batches[0]) / (time.perf_counter() - start)


def concurrent_rows_per_second(make: Callable[[], tuple[Callable[[np.ndarray], Any], Callable[[], None]]],
                               batches: list[np.ndarray], calls: int, threads: int) -> float:
    """Rows/s of ``threads`` threads, each with its own connection (``make``: (call, close)), sharing ``calls``."""
    ready, errors = threading.Barrier(threads + 1), []

    def worker(k: int) -> None:
        call, close = make()
        try:
            call(batches[k % len(batches)])  # connect before the clock starts
            ready.wait()
            for i in range(k, calls, threads):
                call(batches[i % len(batches)])
        except BaseException as exc:  # re-raised after the join
            errors.append(exc)
            ready.abort()
        finally:
            close()

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for thread in workers:
        thread.start()
    with suppress(threading.BrokenBarrierError):
        ready.wait()
    start = time.perf_counter()
    for thread in workers:
        thread.join()
    if errors:
        raise errors[0]
    return calls * len(batches[0]) / (time.perf_counter() - start)


def server_stats(client: grpcclient.InferenceServerClient, model_name: str = NAME) -> dict[str, float]:
    """Triton's cumulative statistics of a model: requests, rows, executions, ns per phase (summed over requests)."""
    found = dict.fromkeys(("requests", "rows", "executions", *(f"{phase}_ns" for phase in PHASES)), 0.0)
    for model in client.get_inference_statistics(model_name, as_json=True)["model_stats"]:
        inference = model.get("inference_stats", {})
        found["requests"] += float(inference.get("success", {}).get("count", 0))
        found["rows"] += float(model.get("inference_count", 0))
        found["executions"] += float(model.get("execution_count", 0))
        for phase in PHASES:
            found[f"{phase}_ns"] += float(inference.get(phase, {}).get("ns", 0))
    return found


def cpu_seconds(pid: int) -> tuple[float, dict[int, float]]:
    """CPU seconds (user + system, in clock ticks) of process ``pid`` and of each of its children (``/proc``)."""

    def own(process: int) -> float:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    children = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with suppress(OSError):  # a stub that has just exited (a model unloaded in the background)
                children[int(child)] = own(int(child))
    return own(pid), children


def children_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the children alive at the end spent in between (those that exited meanwhile are left out)."""
    return sum(seconds - before.get(child, 0.0) for child, seconds in after.items())


def profile(client: grpcclient.InferenceServerClient, pid: int, run: Callable[[], Any], calls: int,
            model_name: str = NAME) -> dict[str, float]:
    """``run()`` (which makes ``calls`` calls) seen from Triton's statistics and from CPU time, per call.

    Returns Triton's mean ms per request in each phase, rows per model execution, the wall ms per call,
    and the CPU ms per call of this process (the client), tritonserver and its children (the backend stubs).
    """

    def snapshot() -> tuple[dict[str, float], float, dict[int, float], float, float]:
        return server_stats(client, model_name), *cpu_seconds(pid), time.process_time(), time.perf_counter()

    before = snapshot()
    run()
    after = snapshot()
    delta = {key: after[0][key] - before[0][key] for key in before[0]}
    server, client_cpu, wall = ((after[k] - before[k]) / calls * 1e3 for k in (1, 3, 4))
    stubs = children_delta(before[2], after[2]) / calls * 1e3
    served = max(delta["requests"], 1)
    out = {f"{phase}_ms": delta[f"{phase}_ns"] / served / 1e6 for phase in PHASES}
    return {**out, "rows_per_execution": delta["rows"] / max(delta["executions"], 1), "wall_ms": wall,
            "client_cpu_ms": client_cpu, "server_cpu_ms": server, "stub_cpu_ms": stubs}


def perf_analyzer_binary() -> str | None:
    """The ``perf_analyzer`` of ``.venv-perf`` (``benchmarks/setup_perf_analyzer.sh``), beside this interpreter or on
    ``PATH``."""
    for candidate in (PERF_VENV / "bin" / "perf_analyzer", Path(sys.executable).parent / "perf_analyzer"):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("perf_analyzer")


def perf_analyzer_env(binary: str) -> dict[str, str]:
    """The environment it runs in: CUDA's runtime library from its venv on the loader's path (it only loads it)."""
    env = dict(os.environ)
    libraries = sorted({str(found.parent) for found in
                        Path(binary).parent.parent.glob("lib/python*/site-packages/nvidia/*/lib/libcudart.so*")})
    if libraries:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libraries, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


def perf_analyzer_blocker(binary: str | None) -> str | None:
    """Why Triton's ``perf_analyzer`` cannot run here, or None when it can."""
    glibc = " ".join(os.confstr("CS_GNU_LIBC_VERSION").split()[1:]) if hasattr(os, "confstr") else "unknown"
    if binary is None:
        return ("not installed: `bash benchmarks/setup_perf_analyzer.sh` (which `make bench` runs) makes .venv-perf "
                f"with the one tritonclient[all] 2.41 bundles; the perf-analyzer wheels need glibc >= 2.38, this "
                f"machine has {glibc}")
    try:
        probe = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                               env=perf_analyzer_env(binary))
    except OSError as exc:
        return f"{binary} does not start: {exc}"
    if "GLIBC_" in probe.stderr:  # the dynamic loader names the symbol version it lacks
        needed = sorted(set(part.split("'")[0] for part in probe.stderr.split("GLIBC_")[1:]))[-1]
        return f"{binary} needs glibc {needed}, this machine has {glibc}"
    if "error while loading shared libraries" in probe.stderr:
        return f"{binary} does not start: {probe.stderr.strip()} (Debian's libb64-0d is one it needs)"
    return None


def perf_analyzer(endpoints: dict[str, str], version: str, rows: np.ndarray,
                  folder: Path) -> tuple[list[str], float | None]:
    """Triton's own load generator on the plain model over gRPC and HTTP (``endpoints``: protocol -> host:port),
    sending ``rows`` (real feature rows, in turn: its default random data is one row repeated, which a tree
    ensemble serves about twice as fast): one line per (protocol, batch, concurrency), or why it was skipped,
    and its best rows/s at batch 256 (None when it did not run)."""
    binary = perf_analyzer_binary()
    blocker = perf_analyzer_blocker(binary)
    if blocker:
        return [f"perf_analyzer skipped: {blocker}"], None
    data = folder / "perf-rows.json"
    data.write_text(json.dumps({"data": [{INPUT: row} for row in rows.tolist()]}))
    lines, best_rate = [], None
    for protocol, batch, concurrency in PERF_ANALYZER_RUNS:
        what = f"perf_analyzer {protocol} batch {batch}, concurrency {concurrency}"
        report = folder / f"perf-{protocol}-{batch}-{concurrency}.csv"
        run = subprocess.run(
            [binary, "-m", NAME, "-x", version, "-u", endpoints[protocol], "-i", protocol, "-b", str(batch),
             "--concurrency-range", str(concurrency), "--shape", f"{INPUT}:{rows.shape[1]}", "--input-data",
             str(data), "-f", str(report), "--measurement-interval", "3000"],
            capture_output=True, text=True, timeout=PERF_ANALYZER_TIMEOUT_S, env=perf_analyzer_env(binary))
        if run.returncode != 0 or not report.is_file():
            lines.append(f"{what} failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
            continue
        row = next(csv.DictReader(report.open()))
        rate = float(row["Inferences/Second"])
        lines.append(f"{what}: {rate:,.0f} rows/s, p99 {float(row['p99 latency']) / 1e3:.2f} ms")
        if batch == BATCH:
            best_rate = max(rate, best_rate or 0.0)
    return lines, best_rate


def throughput(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median rows/s of each side over ``repeats`` rounds in which the sides take turns."""
    runs: dict[str, list[float]] = {key: [] for key in sides}
    for _ in range(repeats):
        for key, run in sides.items():
            runs[key].append(run())
    return {key: statistics.median(values) for key, values in runs.items()}


def measure(p: Any, data: Data, trained: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every measure of the table, Triton first with one instance, then redeployed with two."""
    results: dict[str, Any] = {"roc_auc": trained.metrics["roc_auc"]}
    start = time.perf_counter()
    deployment = p.deploy(NAME)
    results["deploy_s"] = time.perf_counter() - start
    version = deployment.version
    model_path = TritonService(p.settings).models / NAME / version / "model.onnx"
    rng = np.random.default_rng(SEED + 1)
    ids = rng.integers(1, args.entities + 1, args.calls + WARMUP).tolist()
    online = p.features.get_online_features(data.refs, {"driver_id": list(range(1, args.entities + 1))}).to_dict()
    X = np.ascontiguousarray(np.array([online[c] for c in data.columns], dtype=np.float32).T)
    singles = [X[i - 1:i] for i in ids]
    lookups = [[{"driver_id": i}] for i in ids]
    drawn = [rng.integers(0, len(X), BATCH) for _ in range(DISTINCT_BATCHES)]
    batches = [np.ascontiguousarray(X[rows]) for rows in drawn]
    id_batches = [rows + 1 for rows in drawn]  # the same rows' drivers, for <model>_by_id
    results["batch_calls"] = calls = max(20, args.calls // 10)
    mlflow_calls = max(5, calls // 4)
    results["mlflow_single"] = mlflow_single = max(100, args.calls // 4)
    results["profile_calls"] = long = max(500, args.calls // 2)  # long enough for CPU time's 10 ms ticks

    def triton_pair() -> tuple[Callable[[np.ndarray], Any], Callable[[], None]]:
        own = grpcclient.InferenceServerClient(deployment.endpoint)
        return triton_infer(own, version), own.close

    def by_id_pair() -> tuple[Callable[[np.ndarray], Any], Callable[[], None]]:
        own = grpcclient.InferenceServerClient(deployment.endpoint)
        return by_id_infer(own), own.close

    def concurrent(make: Callable[[], Any], count: int, inputs: list[np.ndarray] = batches) -> Callable[[], float]:
        return lambda: concurrent_rows_per_second(make, inputs, count, args.concurrency)

    with mlflow_server(p, version, folder) as url:
        session = requests.Session()
        mlflow_call = mlflow_invoke(session, url, data.columns)

        def mlflow_pair() -> tuple[Callable[[np.ndarray], Any], Callable[[], None]]:
            own = requests.Session()
            return mlflow_invoke(own, url, data.columns), own.close

        client = grpcclient.InferenceServerClient(deployment.endpoint)
        triton, by_id = triton_infer(client, version), by_id_infer(client)
        ort, ort_one = onnx_session(model_path), onnx_session(model_path, threads=1)
        # batch 1: Triton's paths and onnxruntime take turns call by call; mlflow (20x slower) runs its own series
        # after them: in turn with the others, it doubled the p50 of the call that followed it
        samples = interleaved_latencies([
            lambda i: p.predict(NAME, lookups[i]),
            lambda i: p.features.get_online_features(data.refs, lookups[i]).to_dict(),
            lambda i: triton(singles[i]),
            lambda i: ort(singles[i]),
            lambda i: by_id([ids[i]]),
        ], args.calls, WARMUP)
        samples.append(interleaved_latencies([lambda i: mlflow_call(singles[i])], mlflow_single, WARMUP)[0])
        for key, times in zip(("predict", "lookup", "grpc", "ort", "by_id", "mlflow"), samples):
            results.update(latency_summary(times, key))
        # the same answers everywhere
        first = np.array(ids[:BATCH])
        results["max_diff"] = float(np.max(np.abs(triton(batches[0]) - ort(batches[0]))))
        results["predict_diff"] = float(np.max(np.abs(p.predict(NAME, {"driver_id": first.tolist()}).outputs
                                                      - ort(X[first - 1]))))
        results["by_id_diff"] = float(np.max(np.abs(by_id(id_batches[0]) - ort(batches[0]))))
        results["label_agreement"] = float(np.mean(labels(mlflow_call(batches[0]))
                                                   == np.argmax(ort(batches[0]), axis=1)))
        # batch 256: the sides take turns block by block
        results.update(throughput({
            "triton1_seq": lambda: rows_per_second(triton, batches, calls),
            "triton1_conc": concurrent(triton_pair, calls),
            "by_id1_seq": lambda: rows_per_second(by_id, id_batches, calls),
            "by_id1_conc": concurrent(by_id_pair, calls, id_batches),
            "ort": lambda: rows_per_second(ort, batches, calls * 4),
            "ort_one": lambda: rows_per_second(ort_one, batches, calls * 4),
            "mlflow_seq": lambda: rows_per_second(mlflow_call, batches, mlflow_calls),
            "mlflow_conc": concurrent(mlflow_pair, mlflow_calls),
        }, args.repeats))
        session.close()
        # where the time goes: Triton's statistics and CPU per call, one more block each (not in the table)
        pid = TritonService(p.settings).status().pid
        results["profile1_b1"] = profile(client, pid, lambda: rows_per_second(triton, singles, long), long)
        results["profile1_seq"] = profile(client, pid, lambda: rows_per_second(triton, batches, long), long)
        results["profile1_conc"] = profile(client, pid, concurrent(triton_pair, long), long)
        results["by_id_b1_conc"] = profile(client, pid, concurrent(by_id_pair, long, [[i] for i in ids]), long, BY_ID)
        results["by_id_conc"] = profile(client, pid, concurrent(by_id_pair, long, id_batches), long, BY_ID)
        client.close()

    start = time.perf_counter()
    p.deploy(NAME, instances=2)
    results["redeploy_s"] = time.perf_counter() - start
    client = grpcclient.InferenceServerClient(deployment.endpoint)
    triton, by_id = triton_infer(client, version), by_id_infer(client)
    triton(batches[0])
    by_id(id_batches[0])
    results.update(throughput({"triton2_seq": lambda: rows_per_second(triton, batches, calls),
                               "triton2_conc": concurrent(triton_pair, calls),
                               "by_id2_conc": concurrent(by_id_pair, calls, id_batches)}, args.repeats))
    results.update(latency_summary(interleaved_latencies([lambda i: triton(singles[i])], args.calls, WARMUP)[0],
                                   "grpc2"))
    results["profile2_conc"] = profile(client, pid, concurrent(triton_pair, long), long)
    results["profile2_b1_conc"] = profile(client, pid, concurrent(triton_pair, long, singles), long)
    client.close()
    results["perf_analyzer"], results["perf_best"] = perf_analyzer(
        {"grpc": deployment.endpoint, "http": deployment.http_endpoint}, version, np.concatenate(batches), folder)
    return results


# -- report -----------------------------------------------------------------------------------------
TRITON = {"triton1_seq": "1 instance, 1 client", "triton1_conc": "1 instance, {n} clients",
          "triton2_seq": "2 instances, 1 client", "triton2_conc": "2 instances, {n} clients"}
BY_ID_SIDES = {"by_id1_seq": "1 instance, 1 client", "by_id1_conc": "1 instance, {n} clients",
               "by_id2_conc": "2 instances, {n} clients"}
MLFLOW = {"mlflow_seq": "1 client", "mlflow_conc": "{n} clients"}
PROFILES = {1: ("profile1_b1", "profile2_b1_conc"), BATCH: ("profile1_seq", "profile1_conc", "profile2_conc")}
LOCAL = {"ort": "default threads", "ort_one": "1 thread"}


def best(results: dict[str, Any], labels: dict[str, str]) -> str:
    """The key of the highest rows/s among ``labels``."""
    return max(labels, key=lambda key: results[key])


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def pair(results: dict[str, Any], key: str) -> str:
    """``p50 / p99`` of ``key`` in milliseconds."""
    return f"{number(results[f'{key}_p50'] * 1e3)} / {number(results[f'{key}_p99'] * 1e3)}"


def table(results: dict[str, Any], args: argparse.Namespace) -> list[list[str]]:
    """The header and one line per measure: name, value, goal."""
    n = args.concurrency
    p99, by_id_p99 = results["predict_p99"] * 1e3, results["by_id_p99"] * 1e3
    top, peer, limit = best(results, TRITON), best(results, MLFLOW), best(results, LOCAL)
    lookup = best(results, BY_ID_SIDES)
    lines = [["measure", "value", "goal"],
             ["p.predict end to end, batch 1, p50 (ms)", number(results["predict_p50"] * 1e3), ""],
             ["p.predict end to end, batch 1, p99 (ms)", number(p99), f"<= 2.5 ms: {verdict(p99 <= 2.5)}"],
             ["  online lookup alone, batch 1, p50 / p99 (ms)", pair(results, "lookup"), ""],
             ["Triton gRPC, batch 1, p50 / p99 (ms)", pair(results, "grpc"), ""],
             [f"{BY_ID} gRPC (ids in), batch 1, p50 / p99 (ms)", pair(results, "by_id"),
              f"p99 <= 1.5x p.predict's: {by_id_p99 / p99:.2f}x, {verdict(by_id_p99 <= 1.5 * p99)}"],
             ["onnxruntime in process, batch 1, p50 / p99 (ms)", pair(results, "ort"), ""],
             ["mlflow models serve, batch 1, p50 / p99 (ms)", pair(results, "mlflow"), ""]]
    lines += [[f"Triton gRPC, batch {BATCH}, {label.format(n=n)} (rows/s)", number(results[key]), ""]
              for key, label in TRITON.items()]
    lines += [[f"{BY_ID} gRPC, batch {BATCH}, {label.format(n=n)} (rows/s)", number(results[key]), ""]
              for key, label in BY_ID_SIDES.items()]
    lines += [[f"onnxruntime in process, batch {BATCH}, {label} (rows/s)", number(results[key]), ""]
              for key, label in LOCAL.items()]
    lines += [[f"mlflow models serve, batch {BATCH}, {label.format(n=n)} (rows/s)", number(results[key]), ""]
              for key, label in MLFLOW.items()]
    lines += [
        [f"Triton best, batch {BATCH} (rows/s)", number(results[top]),
         f">= 500,000 rows/s: {verdict(results[top] >= 500_000)}"],
        ["  Triton best / onnxruntime in process best", f"{results[top] / results[limit]:.2f}x",
         f">= 0.7x: {verdict(results[top] >= 0.7 * results[limit])}"],
    ]
    if results["perf_best"]:  # Triton's own C++ load generator as the client, in the same run
        lines.append([f"  perf_analyzer (the same rows, gRPC or HTTP) best, batch {BATCH} / onnxruntime best",
                      f"{results['perf_best'] / results[limit]:.2f}x",
                      f">= 0.7x: {verdict(results['perf_best'] >= 0.7 * results[limit])}"])
    lines += [
        ["  Triton rows/s per core of server CPU / onnxruntime in process, 1 thread",
         f"{best_per_core(results, BATCH) / results['ort_one']:.2f}x", "(the clients left out)"],
        [f"  {BY_ID} best / Triton best", f"{results[lookup] / results[top]:.2f}x",
         f">= 0.5x: {verdict(results[lookup] >= 0.5 * results[top])}"],
        ["  Triton best / mlflow models serve best", f"{results[top] / results[peer]:.1f}x",
         f">= 5x: {verdict(results[top] >= 5 * results[peer])}"],
    ]
    return lines


def where(found: dict[str, float]) -> str:
    """One profiled block: Triton's phases per request, rows per execution, wall and CPU ms per call."""
    return (f"Triton {found['success_ms']:.3f} ms/request (queue {found['queue_ms']:.3f}, input "
            f"{found['compute_input_ms']:.3f}, infer {found['compute_infer_ms']:.3f}, output "
            f"{found['compute_output_ms']:.3f}), {found['rows_per_execution']:.0f} rows/execution; wall "
            f"{found['wall_ms']:.3f} ms/call; CPU ms/call: client {found['client_cpu_ms']:.2f}, tritonserver "
            f"{found['server_cpu_ms']:.2f}, backend stubs {found['stub_cpu_ms']:.2f}")


def cpu_ceiling(found: dict[str, float]) -> float:
    """Rows/s if every core of the machine did nothing but this block's work (CPU per call from ``found``)."""
    per_call = (found["client_cpu_ms"] + found["server_cpu_ms"] + found["stub_cpu_ms"]) / 1e3
    return (os.cpu_count() or 1) * BATCH / per_call if per_call > 0 else float("nan")


def per_core(found: dict[str, float], batch: int) -> float:
    """Rows per second of server CPU (tritonserver + backend stubs; the clients run elsewhere in production)."""
    server = (found["server_cpu_ms"] + found["stub_cpu_ms"]) / 1e3
    return batch / server if server > 0 else float("nan")


def best_per_core(results: dict[str, Any], batch: int) -> float:
    """The plain model's rows/s per core of server CPU at ``batch``, in its best profiled block."""
    return max(per_core(results[key], batch) for key in PROFILES[batch])


def capacity(results: dict[str, Any]) -> str:
    """Rows/s per server core at batch 1 and 256 (the best profiled block of each) and the replicas of this
    machine's size that 1M predictions/s needs."""
    cores = os.cpu_count() or 1
    rates = {batch: best_per_core(results, batch) for batch in PROFILES}

    def replicas(rate: float) -> str:
        return f"{math.ceil(MILLION / rate):,} cores = {math.ceil(MILLION / (rate * cores)):,} replicas of {cores} cores"

    return (f"capacity (plain model, server CPU only): {rates[1]:,.0f} rows/s per core at batch 1, "
            f"{rates[BATCH]:,.0f} at batch {BATCH}; 1M predictions/s needs {replicas(rates[BATCH])} at batch "
            f"{BATCH}, {replicas(rates[1])} at batch 1")


def notes(results: dict[str, Any], trained: Any, data: Data, args: argparse.Namespace) -> list[str]:
    """What the numbers cover, where Triton's time goes, and the cross-checks."""
    n = args.concurrency
    top, peer = best(results, TRITON), best(results, MLFLOW)
    return [
        f"data: {args.entities:,} drivers x {args.features} float32 features (all present), entity_df "
        f"{len(data.entity_df):,} rows, label mean {data.entity_df[TARGET].mean():.3f}; model: random forest "
        f"n_estimators={args.trees} max_depth=8, ROC AUC {results['roc_auc']:.4f}, registry version "
        f"{trained.version}; deploy {results['deploy_s']:.1f} s (export, parity check, load), redeploy with 2 "
        f"instances {results['redeploy_s']:.1f} s",
        f"batch 1: {args.calls:,} calls each after {WARMUP} untimed, the four rows above mlflow's taking turns call "
        f"by call on random drivers, then {results['mlflow_single']:,} mlflow calls on their own (taking turns with "
        "them doubled the p50 of the call after mlflow's in a smoke run); p.predict = online lookup (one MGET) + "
        "gRPC with the client p.predict keeps open; raw Triton gRPC = a kept-open tritonclient.grpc client on the "
        "deployment's endpoint, the InferInput built per call, features looked up beforehand; with 2 instances it "
        f"is {pair(results, 'grpc2')} ms (p50 / p99)",
        f"batch {BATCH}: rows/s of blocks of {results['batch_calls']} calls (onnxruntime 4x as many, mlflow 1/4) "
        f"over {DISTINCT_BATCHES} distinct batches of random drivers' features; medians of {args.repeats} rounds, "
        f"the rows taking turns block by block; '{n} clients' = {n} threads, each with its own connection; best "
        f"Triton: {TRITON[top].format(n=n)}; best mlflow: {MLFLOW[peer].format(n=n)}",
        f"where the time goes (one more block of {results['profile_calls']} calls each, 1 instance): batch 1: "
        f"{where(results['profile1_b1'])}",
        f"  batch {BATCH}, 1 client: {where(results['profile1_seq'])}",
        f"  batch {BATCH}, {n} clients: {where(results['profile1_conc'])}",
        f"  batch {BATCH}, {n} clients, 2 instances: {where(results['profile2_conc'])}",
        f"{BY_ID} (ids in, one Redis MGET and one model call per batch Triton forms), {n} clients, 1 instance: "
        f"batch 1: {where(results['by_id_b1_conc'])}",
        f"  batch {BATCH}: {where(results['by_id_conc'])}",
        f"  CPU ceiling at batch {BATCH} (all {os.cpu_count()} cores busy with client + tritonserver + stubs "
        f"only): {cpu_ceiling(results['profile1_conc']):,.0f} rows/s with 1 instance, "
        f"{cpu_ceiling(results['profile2_conc']):,.0f} with 2",
        "Triton: the CPU tritonserver of nvidia-pytriton with mlplat's python-based 'onnxruntime' backend (one "
        "onnxruntime thread per instance, one session.run per batch Triton forms), the config p.deploy writes "
        "(dynamic batching without queue delay); onnxruntime in process: the deployed model.onnx, spinning off; mlflow models "
        "serve: --env-manager local, 1 uvicorn worker (its default), JSON dataframe_split encoded per call, "
        "predictions = the pyfunc's predict (class labels, or probabilities whose argmax is taken)",
        f"same answers: max |Triton - onnxruntime| {results['max_diff']:.2g} on a batch, max |p.predict - "
        f"onnxruntime| {results['predict_diff']:.2g} on {BATCH} looked-up drivers, max |{BY_ID} - onnxruntime| "
        f"{results['by_id_diff']:.2g} on a batch, mlflow's labels = argmax of "
        f"onnxruntime on {results['label_agreement']:.1%} of a batch",
        "load average after the run " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f"; the client, Triton "
        f"and mlflow share the {os.cpu_count()} cores, so every rows/s here includes the client's own CPU",
    ]


def machine_and_versions() -> list[str]:
    """Cores, CPU model and load average (taken before the run), and every version involved."""
    return [machine_line(), versions_line(HERE, mlplat.__version__, {
        "mlflow": mlflow.__version__, "scikit-learn": sklearn.__version__, "onnxruntime": onnxruntime.__version__,
        "tritonclient": metadata.version("tritonclient"), "numpy": np.__version__,
    })]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=5_000, help=f"drivers (at least {BATCH})")
    parser.add_argument("--features", type=int, default=20, help="float32 features (at least 3)")
    parser.add_argument("--trees", type=int, default=50, help="random forest trees (max_depth 8)")
    parser.add_argument("--calls", type=int, default=2_000, help="timed calls per side at batch 1")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of batch 256 blocks (median)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads for the concurrent rows")
    args = parser.parse_args()
    if args.entities < BATCH or args.features < 3 or args.calls < 1 or args.repeats < 1 or args.concurrency < 1:
        parser.error(f"--entities must be at least {BATCH}, --features at least 3, the others at least 1")
    return args


def main() -> None:
    args = parse_args()
    # deploy's parity check gives the forest a bare array; it was fitted on named columns
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    header = machine_and_versions()
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-") as tmp:
        folder = Path(tmp)
        data = make_data(folder, args)
        with redis_server(folder) as port:
            p, trained = setup_mlplat(data, folder / "mlplat-home", f"redis://127.0.0.1:{port}/0", args)
            try:
                results = measure(p, data, trained, folder, args)
            finally:
                p.close()
                TritonService(p.settings).stop()
    print(f"mlplat serving benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print("\n".join(header), end="\n\n")
    print(render(table(results, args)), end="\n\n")
    print("\n".join(notes(results, trained, data, args)), end="\n\n")
    print("\n".join([*results["perf_analyzer"], capacity(results)]))


if __name__ == "__main__":
    main()
