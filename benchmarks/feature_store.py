"""Benchmark mlplat's feature store against Feast and the raw limits: same data, same run.

    python benchmarks/feature_store.py --feast-python .venv-feast/bin/python
    python benchmarks/feature_store.py --entities 500 --days 5 --entity-rows 2000   # smoke run

Generates one feature Parquet file (entities x days rows of float32 features)
and one entity_df, starts a throw-away redis-server (DB 0 for mlplat, DB 1 for
Feast), measures mlplat here, Feast in a subprocess with its own venv
(``feast_peer.py``), and the raw limits (redis-py GET/MGET, pandas
``merge_asof``), then prints one table with the issue's goals.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import hiredis
import numpy as np
import pandas as pd
import pyarrow
import redis

import mlplat
from mlplat.features import Entity, FeatureView, Field
from mlplat.services import free_port

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import (  # noqa: E402
    checksum,
    git_commit,
    interleaved_latencies,
    latency_summary,
    machine_line,
    median_time,
    timed_with_peak,
)

VIEW = "driver_stats"
TTL = timedelta(days=2)
VIEW_ALL, TTL_ALL = "driver_stats_all", timedelta(days=365)  # every row live: materialise all of them
CALLS, WARMUP, BATCH = 2000, 200, 100
PEER_TIMEOUT_S = 1800
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass(frozen=True)
class Data:
    """The generated inputs, on disk (shared with Feast) and in memory (for the raw limits)."""

    features_path: Path
    entity_path: Path
    features: pd.DataFrame
    entity_df: pd.DataFrame
    entities: int
    refs: list[str]


def make_data(folder: Path, args: argparse.Namespace) -> Data:
    """One row per entity per day ending a few hours ago, and an entity_df of random (id, time, label) rows."""
    rng = np.random.default_rng(0)
    end = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=3)
    days = np.repeat(np.arange(args.days - 1, -1, -1), args.entities)
    jitter = rng.integers(0, 3600, days.size)  # seconds into the day's last hour
    features = pd.DataFrame({
        "driver_id": np.tile(np.arange(1, args.entities + 1, dtype=np.int64), args.days),
        "event_timestamp": (end - pd.to_timedelta(days, unit="D") - pd.to_timedelta(jitter, unit="s")).as_unit("ns"),
    })
    values = rng.standard_normal((len(features), args.features), dtype=np.float32)
    features = pd.concat([features, pd.DataFrame(values, columns=[f"f{i}" for i in range(args.features)])], axis=1)
    features = features.sort_values("event_timestamp", ignore_index=True)
    first = features["event_timestamp"].iloc[0].value
    entity_df = pd.DataFrame({
        "driver_id": rng.integers(1, args.entities + 1, args.entity_rows, dtype=np.int64),
        "event_timestamp": pd.to_datetime(rng.integers(first, end.value, args.entity_rows), utc=True),
        "label": rng.integers(0, 2, args.entity_rows, dtype=np.int64),
    })
    paths = folder / "features.parquet", folder / "entity_df.parquet"
    features.to_parquet(paths[0], index=False)
    entity_df.to_parquet(paths[1], index=False)
    refs = [f"{VIEW}:f{i}" for i in range(args.features)]
    return Data(*paths, features, entity_df, args.entities, refs)


@contextmanager
def redis_server(folder: Path) -> Iterator[int]:
    """A redis-server without persistence on a free loopback port, stopped on exit."""
    port = free_port()
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{REDIS_SERVER} did not answer on port {port}")
        client.close()
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def random_batches(data: Data, size: int, count: int, seed: int) -> list[list[int]]:
    """``count`` lists of ``size`` random driver ids (plain ints)."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, data.entities + 1, (count, min(size, data.entities))).tolist()


# -- mlplat -----------------------------------------------------------------------------------------
def setup_mlplat(data: Data, home: Path, url: str, features: int) -> Any:
    """Connect, apply the entity and both views (TTL 2 and 365 days), ingest the Parquet file; return the platform."""
    p = mlplat.connect(home=str(home), online_store=url)
    driver = Entity("driver", join_keys=["driver_id"])
    schema = [Field(f"f{i}", "float32") for i in range(features)]
    views = [FeatureView(name, entities=[driver], ttl=ttl, source=str(data.features_path), schema=schema)
             for name, ttl in ((VIEW, TTL), (VIEW_ALL, TTL_ALL))]
    p.features.apply([driver, *views])
    for view in views:
        p.features.ingest(view.name)
    return p


def bench_materialize(p: Any) -> dict[str, Any]:
    """Wall time of materialising every row of the 365-day view; then the 2-day view, untimed, for online reads."""
    start = time.perf_counter()
    (result,) = p.features.materialize(views=[VIEW_ALL], progress=False)
    seconds = time.perf_counter() - start
    p.features.materialize(views=[VIEW], progress=False)
    return {"materialize_s": seconds, "materialized": result}


def bench_online(p: Any, data: Data, url: str) -> tuple[dict[str, float], dict[str, Any]]:
    """mlplat ``get_online_features(...).to_dict()`` and raw redis-py GET / MGET of the same stored values.

    The two take turns call by call, so a change in machine load hits both alike.
    Returns (mlplat, raw) p50/p99 for 1 and BATCH entities.
    """
    key_prefix = p.features.online.key_prefix(p.features.get_view(VIEW))
    client = redis.Redis.from_url(url)
    ours: dict[str, float] = {}
    raw: dict[str, Any] = {"value_bytes": len(client.get(f"{key_prefix}1"))}
    for size, command in ((1, lambda keys: client.get(keys[0])), (BATCH, client.mget)):
        ids = random_batches(data, size, CALLS + WARMUP, size)
        rows = [[{"driver_id": i} for i in batch] for batch in ids]
        keys = [[f"{key_prefix}{i}" for i in batch] for batch in ids]
        mine, theirs = interleaved_latencies(
            [lambda i, r=rows: p.features.get_online_features(data.refs, r[i]).to_dict(),
             lambda i, k=keys, c=command: c(k[i])], CALLS, WARMUP)
        ours.update(latency_summary(mine, f"online{size}"))
        raw.update(latency_summary(theirs, f"online{size}"))
    client.close()
    return ours, raw


def training_child(home: str, url: str, entity_path: str, refs: list[str], repeats: int) -> dict[str, Any]:
    """In a fresh process: median time and peak memory of get_training_set."""
    p = mlplat.connect(home=home, online_store=url)
    store = p.features
    entity_df = pd.read_parquet(entity_path)
    run = timed_with_peak(lambda: store.get_training_set(entity_df, refs), repeats)
    return {"training_s": run["seconds"], "training_mib": run["peak_mib"],
            "training_total_mib": run["peak_total_mib"], "checksum": checksum(run["result"]["f0"])}


def bench_training(data: Data, home: Path, url: str, repeats: int) -> dict[str, Any]:
    """Run :func:`training_child` in a fresh (spawned) process, so its peak memory is its own."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(training_child, str(home), url, str(data.entity_path), data.refs, repeats).result()


# -- raw limits -------------------------------------------------------------------------------------
def bench_merge_asof(data: Data, repeats: int) -> dict[str, Any]:
    """Median times of pandas sort + ``merge_asof``: from the same Parquet file, and of frames already in memory."""

    def asof(features: pd.DataFrame) -> pd.DataFrame:
        left = data.entity_df.sort_values("event_timestamp")
        return pd.merge_asof(left, features, on="event_timestamp", by="driver_id",
                             direction="backward", tolerance=pd.Timedelta(TTL))

    from_file, joined = median_time(lambda: asof(pd.read_parquet(data.features_path)), repeats)
    in_memory, _ = median_time(lambda: asof(data.features), repeats)
    return {"training_s": from_file, "training_memory_s": in_memory, "checksum": checksum(joined["f0"])}


# -- Feast ------------------------------------------------------------------------------------------
def feast_version(python: str | None) -> tuple[str | None, str]:
    """("<Feast version> (pandas <version>)", "") when ``python`` can import feast, else (None, why not)."""
    if not python:
        return None, "no --feast-python given"
    probe = "import feast, pandas; print(f'{feast.__version__} (pandas {pandas.__version__})')"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except OSError as exc:
        return None, f"{python}: {exc.strerror}"
    if found.returncode:
        return None, f"{python} cannot import feast: {(found.stderr.strip().splitlines() or ['?'])[-1]}"
    return found.stdout.strip(), ""


def run_peer(python: str, mode: str, options: list[str], folder: Path) -> dict[str, Any]:
    """Run ``feast_peer.py mode`` and return its JSON, or an error naming the log's last line."""
    out, log = folder / f"feast-{mode}.json", folder / f"feast-{mode}.log"
    with log.open("w") as sink:
        try:
            done = subprocess.run([python, str(HERE / "feast_peer.py"), mode, *options, "--out", str(out)],
                                  stdout=sink, stderr=subprocess.STDOUT, timeout=PEER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"errors": {mode: f"timed out after {PEER_TIMEOUT_S} s"}}
    if done.returncode or not out.exists():
        last = (log.read_text().strip().splitlines() or ["no output"])[-1]
        return {"errors": {mode: f"exit {done.returncode}: {last}"}}
    return json.loads(out.read_text())


def bench_feast(python: str, data: Data, folder: Path, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Apply, materialise and serve in one Feast process, then the training set in a fresh one."""
    common = ["--repo", str(folder / "feast-repo"), "--features", str(args.features)]
    results = run_peer(python, "prepare", [*common, "--source", str(data.features_path),
                                           "--redis", f"127.0.0.1:{port},db=1", "--entities", str(data.entities)], folder)
    training = run_peer(python, "training", [*common, "--entity-df", str(data.entity_path),
                                             "--repeats", str(args.repeats)], folder)
    errors = {**results.pop("errors"), **training.pop("errors")}
    return {**results, **training, "errors": errors}


# -- report -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One table row: its result key, the factor to its display unit, and its goals.

    Each goal is (text, check); check(mlplat, Feast, raw) says met, missed, or None when it cannot tell.
    """

    label: str
    key: str
    scale: float
    goals: tuple[tuple[str, Callable[[float, float | None, float | None], bool | None]], ...] = ()
    raw_key: str | None = None  # where the raw limit's value is, when not under ``key``


def _needs(*values: float | None) -> bool:
    """True when every value was measured."""
    return all(v is not None for v in values)


ROWS = [
    Row("online 1 entity p50 (ms)", "online1_p50", 1e3),
    Row("online 1 entity p99 (ms)", "online1_p99", 1e3,
        (("<= 2x raw GET", lambda m, f, r: m <= 2 * r),)),
    Row(f"online {BATCH} entities p50 (ms)", f"online{BATCH}_p50", 1e3),
    Row(f"online {BATCH} entities p99 (ms)", f"online{BATCH}_p99", 1e3,
        (("<= 2x raw MGET", lambda m, f, r: m <= 2 * r),)),
    Row("training set time (s)", "training_s", 1,
        (("<= 1.5x read_parquet + merge_asof", lambda m, f, r: m <= 1.5 * r),
         (">= 10x faster than Feast", lambda m, f, r: f >= 10 * m if _needs(f) else None))),
    Row("  same, raw = merge_asof in memory", "training_s", 1,
        (("<= 1.5x in-memory merge_asof", lambda m, f, r: m <= 1.5 * r),), raw_key="training_memory_s"),
    Row("training set peak memory (MiB)", "training_mib", 1,
        (("<= 1/2 of Feast", lambda m, f, r: 2 * m <= f if _needs(f) else None),)),
    Row("materialize time (s)", "materialize_s", 1,
        (("<= 1 s", lambda m, f, r: m <= 1),
         (">= 5x faster than Feast", lambda m, f, r: f >= 5 * m if _needs(f) else None))),
]


def number(value: float) -> str:
    """Three significant digits or so, without exponents."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def cell(side: dict[str, Any] | None, row: Row, absent: str) -> tuple[str, float | None]:
    """Display text and raw value of one side's measure ("not run", "error" or "-" when there is none)."""
    if side is None:
        return absent, None
    if row.key in side:
        return number(side[row.key] * row.scale), side[row.key]
    return ("error" if side.get("errors") else "-"), None


def goal_text(row: Row, m: float | None, f: float | None, r: float | None) -> str:
    """Each goal of ``row`` with met / MISSED / n/a."""
    verdicts = []
    for name, check in row.goals:
        met = None if m is None else check(m, f, r)
        verdicts.append(f"{name}: {'n/a' if met is None else 'met' if met else 'MISSED'}")
    return "; ".join(verdicts)


def table(ours: dict[str, Any], feast: dict[str, Any] | None, raw: dict[str, Any]) -> list[list[str]]:
    """The header and one line of cells per row of ROWS."""
    lines = [["measure", "mlplat", "Feast", "raw limit", "mlplat/raw", "Feast/mlplat", "goal"]]
    for row in ROWS:
        raw_row = replace(row, key=row.raw_key or row.key)
        (m_text, m), (f_text, f), (r_text, r) = (cell(s, r_, "not run") for s, r_ in
                                                 ((ours, row), (feast, row), (raw, raw_row)))
        ratio_raw = f"{m / r:.1f}x" if _needs(m, r) else "-"
        ratio_feast = f"{f / m:.1f}x" if _needs(m, f) else "-"
        lines.append([row.label, m_text, f_text, r_text, ratio_raw, ratio_feast, goal_text(row, m, f, r)])
    return lines


def render(lines: list[list[str]]) -> str:
    """Aligned plain text: text columns left, numbers right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def fit(i: int, text: str) -> str:
        return text.ljust(widths[i]) if i in (0, len(widths) - 1) else text.rjust(widths[i])

    out = ["  ".join(fit(i, t) for i, t in enumerate(line)).rstrip() for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def machine_and_versions(feast: str | None) -> list[str]:
    """Cores, CPU model and load average (taken before the run), and every version involved."""
    server = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.split()
    return [
        machine_line(),
        f"versions: python {platform.python_version()}, mlplat {mlplat.__version__} (git {git_commit(HERE)}), "
        f"pandas {pd.__version__}, pyarrow {pyarrow.__version__}, numpy {np.__version__}, redis-py {redis.__version__}, "
        f"hiredis {hiredis.__version__}, redis-server {server[2].removeprefix('v=') if len(server) > 2 else '?'}, "
        f"Feast {feast or '-'}",
    ]


def notes(ours: dict[str, Any], feast: dict[str, Any] | None, raw: dict[str, Any], data: Data, repeats: int,
          feast_missing: str) -> list[str]:
    """What the numbers mean, the join cross-check, and every Feast error."""
    mat = ours["materialized"]
    feast_calls = " / ".join(map(str, (feast or {}).get("online_calls", {}).values()))
    lines = [
        f"data: {len(data.features):,} feature rows ({data.entities:,} entities), {len(data.refs)} float32 features, "
        f"entity_df {len(data.entity_df):,} rows",
        f"raw limits: redis-py GET / MGET of {BATCH} of the {raw['value_bytes']}-byte values mlplat stores; "
        "pandas read_parquet of the same file + sort + merge_asof (tolerance = TTL); the row below compares "
        "with merge_asof of frames already in memory (no reading at all)",
        f"materialize: a {TTL_ALL.days}-day-TTL view of the same file, so every row is live; mlplat read "
        f"{mat.rows_read:,} rows and wrote {mat.written:,} entities; Feast materialize(now - {TTL_ALL.days} days, now)",
        "training peak memory: peak RSS above the fresh process's RSS just before the call; absolute peaks: "
        f"mlplat {ours.get('training_total_mib', 0):,.0f} MiB, "
        + (f"Feast {feast['training_total_mib']:,.0f} MiB" if feast and "training_total_mib" in feast else "Feast -"),
        f"online percentiles over {CALLS} calls after {WARMUP} warm-up calls, mlplat and raw taking turns"
        + (f" (Feast: {feast_calls} calls for 1 / {BATCH} entities, a tenth as many warm-up)" if feast_calls else "")
        + f"; training times are medians of {repeats} run(s), materialize is one run",
    ]
    sums = {"mlplat": ours.get("checksum"), "merge_asof": raw.get("checksum"), "Feast": (feast or {}).get("checksum")}
    found = {k: v for k, v in sums.items() if v}
    agree = len({(v["count"], round(v["sum"], 1)) for v in found.values()}) == 1
    lines.append("join check (f0 rows with a value / sum): "
                 + ", ".join(f"{k} {v['count']:,} / {v['sum']:.2f}" for k, v in found.items())
                 + (" -> agree" if agree else " -> DIFFER"))
    if feast is None:
        lines.append(f"Feast not run: {feast_missing}")
    for name, error in (feast or {}).get("errors", {}).items():
        lines.append(f"Feast error in {name}: {error}")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--entity-rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs per training-set measure (median)")
    parser.add_argument("--feast-python", help="python of a venv with feast[redis]; Feast is skipped without it")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    feast_ver, feast_missing = feast_version(args.feast_python)
    header = machine_and_versions(feast_ver)
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-") as tmp:
        folder = Path(tmp)
        data = make_data(folder, args)
        with redis_server(folder) as port:
            url = f"redis://127.0.0.1:{port}/0"
            p = setup_mlplat(data, folder / "mlplat-home", url, args.features)
            ours = bench_materialize(p)
            online, raw = bench_online(p, data, url)
            p.close()
            ours.update(online)
            ours.update(bench_training(data, folder / "mlplat-home", url, args.repeats))
            raw.update(bench_merge_asof(data, args.repeats))
            feast = bench_feast(args.feast_python, data, folder, port, args) if feast_ver else None
    print(f"mlplat feature store benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print("\n".join(header), end="\n\n")
    print(render(table(ours, feast, raw)), end="\n\n")
    print("\n".join(notes(ours, feast, raw, data, args.repeats, feast_missing)))


if __name__ == "__main__":
    main()
