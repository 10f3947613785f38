"""What an install holds, read through the public API that release e4c9cd3 and today's mlplat share.

``tests/fixtures/make_old_install.py`` builds installs with e4c9cd3's own code and records these
readings beside them (``expected-*.json``); ``tests/test_db_upgrade.py`` upgrades copies of them with
today's ``mlplat db upgrade`` and checks that today's code reads back the same.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

FIXTURES = Path(__file__).parent / "fixtures" / "e4c9cd3"
MODEL = "churn"
EXPERIMENT = "bigger_forest"
STORED_VIEWS = ("driver_stats", "driver_daily")  # the views with offline rows and watermarks
# A few labelled moments to read point-in-time features for, and the rows to read online.
LABELS = pd.DataFrame({"driver_id": [1, 2, 3, 4],
                       "event_timestamp": pd.to_datetime(["2026-01-02 12:00", "2026-01-03 06:00", "2026-01-04 23:00",
                                                          "2026-01-05 01:00"], utc=True),
                       "distance_km": [1.0, 2.5, 5.0, 10.0]})
FEATURES = ["driver_stats:rating", "driver_stats:trips", "driver_stats:acceptance", "driver_daily:revenue",
            "trip_features:rating_per_km"]
ONLINE_ROWS = [{"driver_id": 1}, {"driver_id": 2}, {"driver_id": 9}]
REQUEST = {"distance_km": [2.0, 4.0, 8.0]}


def stored(p: Any) -> dict[str, Any]:
    """Everything the install's metadata database and MLflow hold, as plain JSON values."""
    return {
        "views": {f"{view.name}@{version}": _view(p.features.get_view(view.name, version))
                  for view in p.features.list_views() for version in range(1, view.version + 1)},
        "partitions": p.features.partitions("driver_daily")[["partition", "status", "rows"]].astype(object)
        .to_dict("records"),
        "watermarks": {name: _plain(p.features.freshness(name).materialized_until) for name in STORED_VIEWS},
        "models": [{"version": v.version, "aliases": sorted(v.aliases), "run_id": v.run_id, "features": v.features,
                    "archived": v.archived, "owner": v.owner} for v in p.models.versions(MODEL)],
        "jobs": [{"id": run.id, "notebook": Path(run.notebook).name, "parameters": run.parameters,
                  "status": run.status, "attempts": run.attempts, "owner": run.owner, "team": run.team,
                  "started_at": _plain(run.started_at), "failed": run.error is not None}
                 for run in p.jobs.history()],
        "schedules": [{"id": s.id, "notebook": Path(s.notebook).name, "cron": s.cron, "parameters": s.parameters,
                       "kernel": s.kernel, "enabled": s.enabled, "created_by": s.created_by,
                       "last_slot": _plain(s.last_slot), "last_status": s.last_status} for s in p.jobs.schedules()],
        "audit": [_plain(dataclasses.asdict(entry)) for entry in p.audit.entries()],
        "thresholds": dataclasses.asdict(p.monitor.thresholds(MODEL)),
        "alerts": [_plain(dataclasses.asdict(alert)) for alert in p.alerts()],
        "experiment": _plain(dataclasses.asdict(p.experiments.summary(EXPERIMENT))),
    }


def served(p: Any) -> dict[str, Any]:
    """Point-in-time and online features (the online ones once materialised)."""
    training = p.features.get_training_set(LABELS, FEATURES)
    online = p.features.get_online_features(["driver_stats:rating", "driver_daily:trips",
                                             "trip_features:rating_per_km"], ONLINE_ROWS, REQUEST)
    return {"training_set": _plain(training.astype(object).where(training.notna(), None).to_dict("records")),
            "online": _plain(online.to_dict())}


def _view(view: Any) -> dict[str, Any]:
    function = view.to_dict().get("function")  # an on-demand view's stored record of its function
    return {"kind": view.kind, "schema": [[f.name, f.dtype] for f in view.schema],
            "entities": [e.name for e in view.entities], "ttl": _plain(view.ttl), "owner": view.owner,
            "description": view.description, "sources": getattr(view, "sources", None),
            "transformation": getattr(view, "transformation", None),
            "function": function and function["source"]}


def _plain(value: Any) -> Any:
    """JSON's own values: times as ISO text, floats rounded past noise, containers walked."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, timedelta):  # pd.Timedelta too
        return str(pd.Timedelta(value))
    if isinstance(value, date):  # datetime and pd.Timestamp too
        return pd.Timestamp(value).isoformat()
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    return round(value, 9) if isinstance(value, float) else value
