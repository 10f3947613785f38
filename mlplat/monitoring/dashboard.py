"""A Grafana dashboard per model, over the platform's metrics and Triton's own.

Import the JSON in Grafana (Dashboards > New > Import) with a Prometheus data
source that scrapes ``mlplat monitor serve`` and Triton (``p.monitor.scrape_config()``).
"""

from __future__ import annotations

from typing import Any

from mlplat.monitoring import metrics

_RATE = "5m"


def dashboard(model: str, views: list[str], thresholds: Any) -> dict[str, Any]:
    """The dashboard's JSON model: requests, latency, errors, drift, feature age, alerts and Triton panels."""
    m = f'model="{model}"'
    latency = f'sum by (le) (rate({metrics.LATENCY}_bucket{{{m}}}[{_RATE}]))'
    requests = f'sum(rate({metrics.REQUESTS}_total{{{m}}}[{_RATE}]))'
    errors = f'sum(rate({metrics.ERRORS}_total{{{m}}}[{_RATE}]))'
    panels = [
        _panel("Requests per second", [(f"sum by (version) (rate({metrics.REQUESTS}_total{{{m}}}[{_RATE}]))",
                                        "v{{version}}")], "reqps"),
        _panel("Latency (client side)", [(f"histogram_quantile(0.5, {latency})", "p50"),
                                         (f"histogram_quantile(0.99, {latency})", "p99")], "s",
               None if thresholds.p99_ms is None else thresholds.p99_ms / 1000),
        _panel("Error rate", [(f"{errors} / ({requests} + {errors})", "errors")], "percentunit",
               thresholds.error_rate),
        _panel("Drift: PSI per column", [(f"{metrics.DRIFT_PSI}{{{m}}}", "{{column}}")], "none", thresholds.psi),
        _panel("Drift: Kolmogorov-Smirnov statistic", [(f"{metrics.DRIFT_KS}{{{m}}}", "{{column}}")], "none"),
        _panel("Online feature age", [(f'{metrics.FRESHNESS}{{view=~"{"|".join(views) or "none"}"}}', "{{view}}")],
               "s", thresholds.max_age_s),
        _panel("Alerts firing", [(f"{metrics.ALERTS}{{{m}}}", "{{rule}}")], "none"),
        _panel("Triton: inferences per second",
               [(f'sum by (version) (rate(nv_inference_count{{{m}}}[{_RATE}]))', "v{{version}}")], "ops"),
        _panel("Triton: queue and compute time per request",
               [(f'sum(rate(nv_inference_queue_duration_us{{{m}}}[{_RATE}])) / '
                 f'sum(rate(nv_inference_request_success{{{m}}}[{_RATE}]))', "queue"),
                (f'sum(rate(nv_inference_compute_infer_duration_us{{{m}}}[{_RATE}])) / '
                 f'sum(rate(nv_inference_request_success{{{m}}}[{_RATE}]))', "compute")], "µs"),
    ]
    for i, panel in enumerate(panels):
        panel["id"] = i + 1
        panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)}
    return {
        "title": f"mlplat: {model}",
        "uid": f"mlplat-{model}"[:40],
        "tags": ["mlplat"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


def _panel(title: str, queries: list[tuple[str, str]], unit: str, threshold: float | None = None) -> dict[str, Any]:
    steps = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
    return {
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(queries)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                     "custom": {"thresholdsStyle": {"mode": "line" if threshold is not None
                                                                    else "off"}}}, "overrides": []},
    }
