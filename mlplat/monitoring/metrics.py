"""Prometheus metrics of the platform, read from Redis at each scrape.

Predicting processes count into Redis (:mod:`mlplat.monitoring.predlog`), drift
checks store their scores there, and every online write raises its view's newest
event time there, so one exporter (``mlplat monitor serve``) reports every
process's requests. A scrape reads only index keys and the keys they list (no
``SCAN``): its cost grows with models and views, never with the online keys.
Triton keeps its own ``/metrics`` endpoint (queue and compute time per model);
:func:`scrape_config` lists both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from mlplat.features.online import newest_events_key
from mlplat.monitoring.predlog import (
    ERROR_FIELD,
    LATENCY_BUCKETS,
    MISSING_FIELD,
    MISSING_ROWS,
    dropped_key,
    metrics_index,
    metrics_key,
    stream_key,
)

LATENCY = "mlplat_predict_latency_seconds"
REQUESTS = "mlplat_predict_requests"  # exposed as ..._total
ERRORS = "mlplat_predict_errors"
MISSING_ROWS_METRIC = "mlplat_predict_rows_missing_features"  # rows that lacked any feature (see serving.missing)
MISSING = "mlplat_predict_missing_features"  # rows that lacked each feature
DRIFT_PSI = "mlplat_drift_psi"
DRIFT_KS = "mlplat_drift_ks"
FRESHNESS = "mlplat_feature_age_seconds"
ALERTS = "mlplat_alerts_firing"


def drift_key(prefix: str, model: str) -> str:
    """Redis hash of a model's latest drift scores: ``psi:<column>`` and ``ks:<column>``."""
    return f"{prefix}:drift:{model}"


def drift_index(prefix: str) -> str:
    """Redis set of the models that have drift scores."""
    return f"{prefix}:drift"


def feature_ages(client: Any, prefix: str, views: list[str] | None = None, now: float | None = None
                 ) -> dict[str, float]:
    """Seconds from the newest event served online to ``now`` (epoch seconds, default: now), per feature view
    (``views``, or every view written online)."""
    key, now = newest_events_key(prefix), time.time() if now is None else now
    if views is None:
        newest = {view.decode(): ns for view, ns in client.zrange(key, 0, -1, withscores=True)}
    else:
        newest = {view: ns for view, ns in zip(views, client.zmscore(key, views) if views else []) if ns is not None}
    return {view: now - ns / 1e9 for view, ns in newest.items()}


def alerts_key(prefix: str) -> str:
    """Redis hash: ``rule\\tmodel`` -> alerts firing, at the latest check."""
    return f"{prefix}:alerts"


class PlatformCollector(Collector):
    """Yields the platform's metric families from Redis on every ``collect()``."""

    def __init__(self, client: Any, prefix: str):
        self.client, self.prefix = client, prefix

    def collect(self) -> Iterator[Any]:
        latency = HistogramMetricFamily(LATENCY, "Prediction latency seen by clients (online lookup and gRPC).",
                                        labels=["model", "version"])
        requests = CounterMetricFamily(REQUESTS, "Predict requests served.", labels=["model", "version"])
        errors = CounterMetricFamily(ERRORS, "Predict calls that failed, by error class.",
                                     labels=["model", "version", "error"])
        missing_rows = CounterMetricFamily(MISSING_ROWS_METRIC, "Rows served that lacked feature values.",
                                           labels=["model", "version"])
        missing = CounterMetricFamily(MISSING, "Rows served that lacked a feature's value.",
                                      labels=["model", "version", "feature"])
        pairs = sorted(p.decode() for p in self.client.smembers(metrics_index(self.prefix)))
        pipe = self.client.pipeline(transaction=False)
        for pair in pairs:
            pipe.hgetall(metrics_key(self.prefix, *pair.split("\t")))
        for pair, values in zip(pairs, pipe.execute(), strict=True):
            labels = pair.split("\t")
            counts = [int(values.get(f"b{i}".encode(), 0)) for i in range(len(LATENCY_BUCKETS) + 1)]
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(labels, buckets, float(values.get(b"sum", 0)))
            requests.add_metric(labels, int(values.get(b"count", 0)))
            for field, count in sorted(values.items()):
                if field.startswith(ERROR_FIELD.encode()):
                    errors.add_metric([*labels, field.decode()[len(ERROR_FIELD):]], int(count))
                elif field.startswith(MISSING_FIELD.encode()):
                    feature = field.decode()[len(MISSING_FIELD):]
                    if feature == MISSING_ROWS:
                        missing_rows.add_metric(labels, int(count))
                    else:
                        missing.add_metric([*labels, feature], int(count))
        yield from (latency, requests, errors, missing_rows, missing)
        yield CounterMetricFamily("mlplat_prediction_log_dropped", "Requests never logged (buffer full, Redis away).",
                                  value=int(self.client.get(dropped_key(self.prefix)) or 0))
        yield GaugeMetricFamily("mlplat_prediction_log_unflushed", "Logged requests not yet flushed to Parquet.",
                                value=self.client.xlen(stream_key(self.prefix)))
        yield from self._drift()
        ages = GaugeMetricFamily(FRESHNESS, "Seconds since the newest event served online, per feature view.",
                                 labels=["view"])
        for view, age in sorted(feature_ages(self.client, self.prefix).items()):
            ages.add_metric([view], age)
        yield ages
        alerts = GaugeMetricFamily(ALERTS, "Alerts firing, by rule and model.", labels=["rule", "model"])
        for field, value in sorted(self.client.hgetall(alerts_key(self.prefix)).items()):
            alerts.add_metric(field.decode().split("\t"), float(value))
        yield alerts

    def _drift(self) -> Iterator[Any]:
        psi = GaugeMetricFamily(DRIFT_PSI, "Population stability index of a column, latest window.",
                                labels=["model", "column"])
        ks = GaugeMetricFamily(DRIFT_KS, "Kolmogorov-Smirnov statistic of a column, latest window.",
                               labels=["model", "column"])
        models = sorted(m.decode() for m in self.client.smembers(drift_index(self.prefix)))
        pipe = self.client.pipeline(transaction=False)
        for model in models:
            pipe.hgetall(drift_key(self.prefix, model))
        for model, scores in zip(models, pipe.execute(), strict=True):
            for field, value in sorted(scores.items()):
                kind, column = field.decode().split(":", 1)
                (psi if kind == "psi" else ks).add_metric([model, column], float(value))
        yield from (psi, ks)


def registry(client: Any, prefix: str) -> Any:
    """A Prometheus registry holding only the platform's collector."""
    from prometheus_client import CollectorRegistry

    found = CollectorRegistry(auto_describe=False)
    found.register(PlatformCollector(client, prefix))
    return found


def exposition(client: Any, prefix: str) -> str:
    """The metrics in Prometheus text format (what ``/metrics`` serves)."""
    from prometheus_client import generate_latest

    return generate_latest(registry(client, prefix)).decode()


def scrape_config(targets: dict[str, str]) -> str:
    """A ``prometheus.yml`` scraping each ``job name -> host:port`` every 15 s."""
    import yaml

    jobs = [{"job_name": job, "scrape_interval": "15s", "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()]
    return yaml.safe_dump({"scrape_configs": jobs}, sort_keys=False)
