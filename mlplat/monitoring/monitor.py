"""``p.monitor``: a deployed model's logged predictions checked against its training, its latency, errors and
feature freshness against per-model thresholds; breaches become alerts.

>>> p.monitor.set_thresholds("churn", psi=0.25, p99_ms=20, window="1h")
>>> p.monitor.check("churn")           # drift, p99, error rate, stale features -> alerts
>>> p.monitor.drift("churn", window="1h", windows=24)   # PSI per column, hour by hour, as a plot
>>> p.monitor.schedule("churn", cron="*/15 * * * *")   # the check as a scheduled notebook job

Monitoring sits below the model registry, serving and jobs: what it needs of them (a version's
features and drift, the deployed version, Triton's metrics endpoint, a scheduler of notebook
templates) is handed to :class:`Monitor` when the platform builds it.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any, Protocol

import numpy as np
import pandas as pd
import sqlalchemy as sa
from redis import Redis

from mlplat.audit import Audit
from mlplat.clock import SYSTEM_CLOCK, Clock
from mlplat.config import Settings
from mlplat.db import metadata
from mlplat.durations import parse_duration
from mlplat.errors import InvalidArgument
from mlplat.monitoring import metrics
from mlplat.monitoring.alerts import AlertList, Alerts, Finding
from mlplat.monitoring.drift import DriftReport
from mlplat.monitoring.predlog import Flusher, PredictionStore, in_window, metrics_key, unflushed
from mlplat.scheduling import TemplateScheduler
from mlplat.times import timestamp

thresholds_table = sa.Table(
    "monitor_thresholds", metadata,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("settings", sa.Text, nullable=False),  # JSON of the Thresholds fields that were set
)
CHECK_NOTEBOOK = "monitor_check.ipynb"
LOG_COLUMNS = ("log_id", "at", "model", "version", "arm", "latency_ms")  # beside the features and the prediction


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When a model's check raises alerts. ``None`` turns a rule off."""

    psi: float = 0.2  # drift: population stability index of a column above this
    p_value: float = 0.01  # drift: or its Kolmogorov-Smirnov p-value below this ...
    ks: float = 0.1  # ... with the KS statistic (largest CDF gap) above this
    p99_ms: float | None = None  # latency SLO: p99 of the window's requests above this
    error_rate: float | None = 0.05  # share of failed requests since the previous check above this
    max_age_s: float | None = None  # stale features: online values older than this (seconds)
    window_s: float = 3600.0  # the rows a check looks at: the last window_s seconds
    min_rows: int = 200  # fewer logged rows than this: no drift verdict


@dataclasses.dataclass(frozen=True)
class Check:
    """What one check measured and which alerts it fired."""

    model: str
    version: str
    start: datetime
    end: datetime
    rows: int
    drift: DriftReport | None  # None: fewer than min_rows logged rows
    p99_ms: float | None
    error_rate: float | None
    feature_age_s: dict[str, float]
    findings: list[Finding]
    fired: AlertList

    @property
    def breached(self) -> list[Finding]:
        return [f for f in self.findings if f.breached]

    def __str__(self) -> str:
        lines = [f"{self.model} v{self.version}: {self.rows} rows from {self.start:%Y-%m-%d %H:%M} to "
                 f"{self.end:%H:%M} UTC; p99 {_ms(self.p99_ms)}; error rate {_pct(self.error_rate)}"]
        lines += [f"  BREACHED {f.rule} {f.subject}: {f.message}" for f in self.breached]
        lines += [f"  alert fired: {a.message}" for a in self.fired]
        return "\n".join(lines if self.breached else [*lines, "  all rules pass"])

    def _repr_html_(self) -> str:
        rules = "".join(f"<li style='color:#cf222e'>{escape(f.rule)} {escape(f.subject)}: {escape(f.message)}</li>"
                        for f in self.breached) or "<li style='color:#1a7f37'>all rules pass</li>"
        return (f"<div><h4>{escape(self.model)} v{self.version}: {self.rows} rows, p99 {_ms(self.p99_ms)}, "
                f"error rate {_pct(self.error_rate)}</h4><ul>{rules}</ul>"
                f"{self.drift._repr_html_() if self.drift is not None else ''}</div>")


@dataclasses.dataclass(frozen=True)
class DriftTimeline:
    """Drift per window: ``psi`` and ``ks`` tables (rows: window start, columns: feature or prediction)."""

    model: str
    version: str
    reports: dict[pd.Timestamp, DriftReport | None]  # None: too few rows in that window
    rows: dict[pd.Timestamp, int]
    psi_threshold: float

    def _table(self, statistic: str) -> pd.DataFrame:
        found = {start: report.table[statistic] for start, report in self.reports.items() if report is not None}
        return pd.DataFrame(found).T.reindex(list(self.reports)) if found else pd.DataFrame(index=list(self.reports))

    @property
    def psi(self) -> pd.DataFrame:
        return self._table("psi")

    @property
    def ks(self) -> pd.DataFrame:
        return self._table("ks")

    @property
    def latest(self) -> DriftReport | None:
        return next((r for r in reversed(self.reports.values()) if r is not None), None)

    def plot(self) -> Any:
        """A matplotlib figure: PSI of each column over the windows, with the threshold."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots(figsize=(8, 3.2))
        psi = self.psi
        for column in psi.columns:
            ax.plot(psi.index, psi[column], marker="o", markersize=3, label=column)
        ax.axhline(self.psi_threshold, color="#cf222e", linestyle="--", linewidth=1, label="threshold")
        ax.set(title=f"{self.model} v{self.version}: PSI per window", ylabel="PSI")
        ax.legend(fontsize=7, ncol=2, loc="upper left")
        figure.autofmt_xdate()
        figure.tight_layout()
        return figure

    def _repr_html_(self) -> str:
        import matplotlib.pyplot as plt

        figure = self.plot()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        plt.close(figure)
        image = base64.b64encode(buffer.getvalue()).decode()
        latest = self.latest
        return (f"<div><img alt='PSI per window' src='data:image/png;base64,{image}'>"
                f"{latest._repr_html_() if latest is not None else '<p>too few rows in every window</p>'}</div>")


class TrainedVersion(Protocol):
    """A registered model version, as monitoring reads it."""

    @property
    def features(self) -> list[str]: ...  # pinned: view@version:feature


class ModelVersions(Protocol):
    """What monitoring asks the model registry (:class:`mlplat.registry.models.ModelRegistry` is one)."""

    def get(self, name: str, version: str | int | None = None, alias: str | None = None) -> TrainedVersion: ...

    def drift(self, name: str, current: pd.DataFrame, version: str | int | None = None, alias: str | None = None,
              psi_threshold: float = 0.2, p_threshold: float = 0.01, ks_threshold: float = 0.1) -> DriftReport: ...


class Monitor:
    """Thresholds, checks, drift timelines, dashboards and alerts of deployed models.

    Thresholds, alerts and the ``audit`` trail live in the metadata database behind ``engine``; the
    prediction log and the scores the exporter publishes in ``redis`` (under the settings' online prefix)
    and the offline store. ``models`` gives each version's features and drift, ``deployed_version``
    the version a deployed model serves by default, ``serving_metrics_url`` Triton's own Prometheus
    endpoint (None while it is down), and ``scheduler`` runs checks as notebook jobs. ``clock`` says when
    now is, for the windows a check or a drift timeline ends at by default.
    """

    def __init__(self, settings: Settings, engine: sa.Engine, audit: Audit, redis: Redis,
                 models: ModelVersions, scheduler: TemplateScheduler, deployed_version: Callable[[str], str],
                 serving_metrics_url: Callable[[], str | None], clock: Clock = SYSTEM_CLOCK):
        self.settings = settings
        self.engine = engine
        self.audit = audit
        self.redis = redis
        self.models = models
        self.scheduler = scheduler
        self.deployed_version = deployed_version
        self.serving_metrics_url = serving_metrics_url
        self.clock = clock
        self.prefix = settings.online_prefix
        self.store = PredictionStore(settings.offline_store)
        self.alerts = Alerts(self.engine, settings.alert_webhook)

    def thresholds(self, model: str) -> Thresholds:
        """A model's thresholds (defaults where none were set)."""
        with self.engine.connect() as conn:
            saved = conn.execute(sa.select(thresholds_table.c.settings).where(thresholds_table.c.model == model)
                                 ).scalar()
        return Thresholds(**json.loads(saved or "{}"))

    def set_thresholds(self, model: str, **changes: Any) -> Thresholds:
        """Change some of a model's thresholds: ``psi``, ``p_value``, ``p99_ms``, ``error_rate``,
        ``ks``, ``max_age`` (or ``max_age_s``), ``window`` (or ``window_s``; "1h", "30min"), ``min_rows``."""
        known = {f.name for f in dataclasses.fields(Thresholds)}
        for alias in ("window", "max_age"):
            if alias in changes:
                value = changes.pop(alias)
                changes[f"{alias}_s"] = None if value is None else \
                    parse_duration(value, alias, seconds=True).total_seconds()
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidArgument(f"Unknown threshold(s) {unknown}; thresholds: {sorted(known)} (and window, max_age).")
        for name, value in changes.items():
            optional = name in ("p99_ms", "error_rate", "max_age_s")
            if value is None and optional:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or (
                    name in ("p_value", "error_rate", "ks") and value > 1) or (name in ("window_s", "min_rows") and
                                                                         value <= 0):
                raise InvalidArgument(f"{name}={value!r} is not a valid threshold; give a non-negative number"
                                      f"{' up to 1' if name in ('p_value', 'error_rate', 'ks') else ''}"
                                      f"{' or None to turn the rule off' if optional else ''}.")
        merged = dataclasses.replace(self.thresholds(model), **changes)
        settings = {k: v for k, v in dataclasses.asdict(merged).items() if v != getattr(Thresholds(), k)}
        with self.engine.begin() as conn:
            conn.execute(thresholds_table.delete().where(thresholds_table.c.model == model))
            conn.execute(thresholds_table.insert().values(model=model, settings=json.dumps(settings)))
            self.audit.write(conn, "monitor", model, "thresholds_set", **changes)
        return merged

    def predictions(self, model: str, start: datetime | str | None = None, end: datetime | str | None = None
                    ) -> pd.DataFrame:
        """Logged rows of ``model`` with ``start <= at < end``: flushed ones and those still in the stream."""
        start, end = (None if t is None else timestamp(t, name) for t, name in ((start, "start"), (end, "end")))
        stored = self.store.read(model, start, end)
        recent = unflushed(self.redis, self.prefix, model)
        recent = in_window(recent, start, end) if len(recent) else recent
        parts = [part for part in (stored, recent) if len(part)]
        if not parts:
            return pd.DataFrame(columns=[*LOG_COLUMNS, "prediction"])
        rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return rows.drop_duplicates("log_id").sort_values("at", kind="stable").reset_index(drop=True)

    def flusher(self, batch: int = 5000) -> Flusher:
        """A flusher of this platform's prediction log (``mlplat monitor serve`` runs one in the background)."""
        return Flusher(self.redis, self.prefix, self.settings.offline_store, batch)

    def flush(self) -> int:
        """Move every logged prediction from the stream to Parquet now; return the requests moved."""
        return self.flusher().flush_all()

    def drift(self, model: str, window: str | timedelta | None = None, windows: int = 1,
              end: datetime | None = None, version: str | None = None) -> DriftTimeline:
        """PSI and KS of the logged rows against training, over ``windows`` consecutive windows ending at ``end``."""
        limits = self.thresholds(model)
        version = version or self.deployed_version(model)
        size = parse_duration(window, "window", seconds=True) if window is not None else \
            timedelta(seconds=limits.window_s)
        end = timestamp(end or self._now(), "end")
        return self._timeline(model, version, self.predictions(model, end - size * windows, end), end, size, windows,
                              limits)

    def _timeline(self, model: str, version: str, rows: pd.DataFrame, end: pd.Timestamp, size: timedelta,
                  windows: int, limits: Thresholds) -> DriftTimeline:
        rows = rows[rows["version"] == version] if len(rows) else rows
        reports: dict[pd.Timestamp, DriftReport | None] = {}
        counts = {}
        for start in (end - size * (windows - i) for i in range(windows)):
            part = in_window(rows, start, start + size) if len(rows) else rows
            counts[start] = len(part)
            reports[start] = self.models.drift(
                model, part.drop(columns=list(LOG_COLUMNS)), version=version, psi_threshold=limits.psi,
                p_threshold=limits.p_value, ks_threshold=limits.ks) if len(part) >= limits.min_rows else None
        return DriftTimeline(model, version, reports, counts, limits.psi)

    def check(self, model: str, version: str | None = None, now: datetime | None = None) -> Check:
        """Check the latest window against the thresholds, publish the scores as metrics, raise alerts."""
        limits = self.thresholds(model)
        version = version or self.deployed_version(model)
        end = timestamp(now or self._now(), "now")
        start = end - timedelta(seconds=limits.window_s)
        rows = self.predictions(model, start, end)
        timeline = self._timeline(model, version, rows, end, timedelta(seconds=limits.window_s), 1, limits)
        report = timeline.latest
        findings = [] if report is None else [
            Finding("drift", model, column, float(r.psi), limits.psi, bool(r.drifted),
                    f"{column} drifted from training: PSI {r.psi:.3f} (threshold {limits.psi}), KS {r.ks:.3f} "
                    f"(threshold {limits.ks}, p={r.p_value:.2g})")
            for column, r in report.table.iterrows()]
        requests = rows[(rows["version"] == version) & rows["log_id"].str.endswith("/0")] if len(rows) else rows
        p99 = float(np.percentile(requests["latency_ms"], 99)) if len(requests) else None
        if p99 is not None and limits.p99_ms is not None:
            findings.append(Finding("latency_p99", model, "requests", p99, limits.p99_ms, p99 > limits.p99_ms,
                                    f"p99 latency {p99:.1f} ms over the SLO of {limits.p99_ms} ms"))
        error_rate = self._error_rate(model, version)
        if error_rate is not None and limits.error_rate is not None:
            findings.append(Finding("error_rate", model, "requests", error_rate, limits.error_rate,
                                    error_rate > limits.error_rate,
                                    f"{error_rate:.1%} of requests failed (threshold {limits.error_rate:.1%})"))
        ages = self._feature_ages(model, version, end)
        if limits.max_age_s is not None:
            findings += [Finding("stale_features", model, view, age, limits.max_age_s, age > limits.max_age_s,
                                 f"online features of {view} are {timedelta(seconds=round(age))} old "
                                 f"(threshold {timedelta(seconds=round(limits.max_age_s))})")
                         for view, age in ages.items()]
        fired = self.alerts.observe(findings)
        self._publish(model, report)
        return Check(model, version, start.to_pydatetime(), end.to_pydatetime(), timeline.rows[start], report, p99,
                     error_rate, ages, findings, fired)

    def dashboard(self, model: str) -> dict[str, Any]:
        """A Grafana dashboard (JSON model) of one model: traffic, latency, errors, drift, features, Triton."""
        from mlplat.monitoring.dashboard import dashboard

        views = sorted(self._feature_views(model, self.deployed_version(model)))
        return dashboard(model, views, self.thresholds(model))

    def scrape_config(self) -> str:
        """A ``prometheus.yml`` scraping the platform's exporter and Triton's own metrics endpoint."""
        from mlplat.monitoring.monitor_service import MonitorService

        targets = {"mlplat": MonitorService(self.settings).ensure().url.split("//")[1].split("/")[0]}
        triton = self.serving_metrics_url()
        if triton:
            targets["triton"] = triton.split("//")[1].split("/")[0]
        return metrics.scrape_config(targets)

    def schedule(self, model: str, cron: str = "*/15 * * * *") -> int:
        """Run :meth:`check` on a schedule, as a notebook job (its report is the executed notebook)."""
        return self.scheduler.schedule_template(CHECK_NOTEBOOK, cron, {"model": model})

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), UTC)

    def _error_rate(self, model: str, version: str) -> float | None:
        """Failed share of the requests counted since the previous check (None when there were none)."""
        key = metrics_key(self.prefix, model, version)
        checkpoint = f"{self.prefix}:checked:{model}:{version}"
        now, before = (self.redis.hmget(k, "count", "errors") for k in (key, checkpoint))
        served, failed = (int(a or 0) - int(b or 0) for a, b in zip(now, before, strict=True))
        self.redis.hset(checkpoint, mapping={"count": int(now[0] or 0), "errors": int(now[1] or 0)})
        return failed / (served + failed) if served + failed > 0 else None

    def _feature_views(self, model: str, version: str) -> set[str]:
        return {ref.split(":")[0].split("@")[0] for ref in self.models.get(model, version).features}

    def _feature_ages(self, model: str, version: str, now: pd.Timestamp) -> dict[str, float]:
        """Seconds since the newest event served online (materialised, pushed or streamed), per view of the version."""
        return metrics.feature_ages(self.redis, self.prefix, sorted(self._feature_views(model, version)),
                                    now.timestamp())

    def _publish(self, model: str, report: DriftReport | None) -> None:
        """Scores and counts of this check, for the Prometheus exporter."""
        pipe = self.redis.pipeline()
        if report is not None:
            pipe.delete(metrics.drift_key(self.prefix, model))
            pipe.hset(metrics.drift_key(self.prefix, model), mapping={
                **{f"psi:{c}": float(v) for c, v in report.table["psi"].items()},
                **{f"ks:{c}": float(v) for c, v in report.table["ks"].items()}})
            pipe.sadd(metrics.drift_index(self.prefix), model)
        pipe.delete(metrics.alerts_key(self.prefix))
        firing = self.alerts.firing_counts()
        if firing:
            pipe.hset(metrics.alerts_key(self.prefix), mapping={f"{r}\t{m}": n for (r, m), n in firing.items()})
        pipe.execute()




def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"
