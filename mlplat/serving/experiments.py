"""A/B tests, canaries and shadow tests between two registered versions of a model.

Each unit (a user, a driver, a session) is assigned to an arm by a stable hash
of the experiment's salt and the unit id, so it always sees the same version,
in every process and across restarts. ``traffic`` is the challenger's share in
percent (a canary is an A/B test with a small share). In shadow mode every
request is served by the champion and also scored by the challenger, whose
predictions are logged, never returned. Outcomes are logged per unit;
``summary`` compares the arms (two-proportion z-test for 0/1 outcomes, Welch's
t-test otherwise) and ``conclude`` promotes the winner or rolls back.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from mlplat.db import metadata
from mlplat.errors import InvalidArgument, ServingError

if TYPE_CHECKING:
    from mlplat.audit import Audit
    from mlplat.registry.models import ModelRegistry
    from mlplat.serving.client import Client
    from mlplat.serving.deploy import Deployment

experiments_table = sa.Table(
    "serving_experiments", metadata,  # not "experiments": MLflow's table, when both share a PostgreSQL database
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("champion", sa.String(40), nullable=False),
    sa.Column("challenger", sa.String(40), nullable=False),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("traffic", sa.Float, nullable=False),
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("result", sa.Text),
)
events_table = sa.Table(
    "serving_experiment_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment", sa.String(200), nullable=False, index=True),
    sa.Column("unit", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # "served", "shadow" or "outcome"
    sa.Column("arm", sa.String(20)),
    sa.Column("version", sa.String(40)),
    sa.Column("value", sa.Float),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
MODES = ("ab", "shadow")


def assign(salt: str, unit: Any, traffic: float) -> str:
    """``"challenger"`` for ``traffic`` percent of units, else ``"champion"``; stable across processes."""
    bucket = int.from_bytes(hashlib.sha256(f"{salt}:{unit}".encode()).digest()[:8], "big") % 10_000
    return "challenger" if bucket < traffic * 100 else "champion"


@dataclass(frozen=True)
class Arm:
    """One arm's outcomes."""

    version: str
    n: int
    mean: float


@dataclass(frozen=True)
class Summary:
    """The comparison of the arms on their logged outcomes."""

    experiment: str
    champion: Arm
    challenger: Arm
    test: str  # "two-proportion z-test" or "Welch's t-test"
    difference: float  # challenger mean - champion mean
    ci_low: float
    ci_high: float
    p_value: float
    needed_per_arm: int | None  # units per arm to detect the observed difference (80% power, alpha 0.05)

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{escape(n)}</td><td>v{a.version}</td><td>{a.n}</td><td>{a.mean:.4f}</td></tr>"
                       for n, a in (("champion", self.champion), ("challenger", self.challenger)))
        verdict = "significant" if self.significant else "not significant"
        return (f"<div><h4>{escape(self.experiment)}: {verdict} (p={self.p_value:.4f}, {self.test})</h4>"
                f"<table><tr><th>arm</th><th>version</th><th>units</th><th>mean outcome</th></tr>{rows}</table>"
                f"<p>difference {self.difference:+.4f}, 95% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}]"
                f"{'' if self.needed_per_arm is None else f'; about {self.needed_per_arm} units per arm needed'}</p></div>")


class Experiments:
    """``p.experiments``: start, serve, log outcomes, summarise and conclude experiments.

    Arms are deployed with ``deploy`` (the platform's, which also refreshes ``serving``), served by
    ``serving``; versions and promotions come from the model registry; the audit's user is recorded as who started one.
    """

    def __init__(self, engine: sa.Engine, audit: Audit, registry: ModelRegistry, serving: Client,
                 deploy: Callable[..., Deployment]):
        self.engine = engine
        self.audit = audit
        self.registry = registry
        self.serving = serving
        self._deploy = deploy

    def start(self, name: str, model: str, challenger: str | int | None = None, *, traffic: float = 10.0,
              mode: str = "ab") -> dict[str, Any]:
        """Serve ``challenger`` (default: the challenger alias) beside the champion, split by ``traffic`` percent."""
        if mode not in MODES:
            raise InvalidArgument(f"mode={mode!r}; use one of {', '.join(MODES)}.")
        if not 0 <= traffic <= 100:
            raise InvalidArgument(f"traffic={traffic} must be a percentage between 0 and 100.")
        if self._find(name, missing_ok=True) is not None:
            raise InvalidArgument(f"An experiment named {name!r} exists already; pick another name.")
        champion = self.registry.get(model)
        candidate = self.registry.get(model, challenger, alias="challenger" if challenger is None else None)
        if candidate.version == champion.version:
            raise InvalidArgument(f"v{candidate.version} is the champion already; test another version against it.")
        self._deploy(model, champion.version)
        self._deploy(model, candidate.version, keep=(champion.version,), default=False)
        row = {"name": name, "model": model, "champion": champion.version, "challenger": candidate.version,
               "mode": mode, "traffic": 100.0 if mode == "shadow" else float(traffic), "salt": uuid.uuid4().hex,
               "status": "running", "created_at": datetime.now(UTC), "created_by": self.audit.user}
        with self.engine.begin() as conn:
            conn.execute(experiments_table.insert().values(**row))
            self.audit.write(conn, "experiment", name, "started", model=model, champion=champion.version,
                             challenger=candidate.version, mode=mode, traffic=row["traffic"])
        return row

    def predict(self, name: str, unit: Any, entity_rows: Any) -> Any:
        """Serve ``unit`` from its arm (shadow: champion served, challenger logged); return the Prediction."""
        experiment = self._find(name)
        if experiment["status"] != "running":
            raise ServingError(f"Experiment {name!r} has concluded; predict with the model directly.")
        arm = "champion" if experiment["mode"] == "shadow" else assign(experiment["salt"], unit, experiment["traffic"])
        served = self.serving.predict(experiment["model"], entity_rows, version=experiment[arm], arm=arm)
        events = [self._event(name, unit, "served", arm, served.version, _score(served.outputs))]
        if experiment["mode"] == "shadow":
            shadow = self.serving.predict(experiment["model"], entity_rows, version=experiment["challenger"],
                                                   arm="shadow")
            events.append(self._event(name, unit, "shadow", "challenger", shadow.version, _score(shadow.outputs)))
        with self.engine.begin() as conn:
            conn.execute(events_table.insert(), events)
        return served

    def model_of(self, name: str) -> str:
        """The model experiment ``name`` tests (its team owns the experiment)."""
        return self._find(name)["model"]

    def record_outcome(self, name: str, unit: Any, outcome: float) -> None:
        """Log what happened for ``unit`` (1/0 for conversions, or any number)."""
        self._find(name)
        with self.engine.begin() as conn:
            conn.execute(events_table.insert(), [self._event(name, unit, "outcome", None, None, float(outcome))])

    def summary(self, name: str) -> Summary:
        """Outcomes by arm (each unit's latest outcome, in the arm that served it) and a significance test."""
        experiment = self._find(name)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events_table).where(events_table.c.experiment == name)
                                .order_by(events_table.c.id)).all()
        arm_of = {r.unit: r.arm for r in rows if r.kind == "served"}
        outcome_of = {r.unit: r.value for r in rows if r.kind == "outcome" and r.unit in arm_of}
        if experiment["mode"] == "shadow":
            raise ServingError(f"{name!r} is a shadow test: every unit saw the champion, so outcomes cannot compare "
                               "the arms. Compare the logged predictions, or run an A/B test.")
        groups = {arm: np.array([v for u, v in outcome_of.items() if arm_of[u] == arm]) for arm in ("champion",
                                                                                                   "challenger")}
        if min(len(g) for g in groups.values()) < 2:
            raise ServingError(f"{name!r} needs outcomes from at least two units in each arm; it has "
                               f"{ {k: len(v) for k, v in groups.items()} }.")
        return _compare(name, experiment, groups["champion"], groups["challenger"])

    def conclude(self, name: str, reason: str = "") -> Summary:
        """Promote the challenger if it won significantly; otherwise keep the champion and unload the challenger."""
        experiment = self._find(name)
        result = self.summary(name)
        won = result.significant and result.difference > 0
        model = experiment["model"]
        if won:
            why = f"won experiment {name}: {result.difference:+.4f}, p={result.p_value:.4f}. {reason}".strip()
            self.registry.promote(model, experiment["challenger"], force=True, reason=why)
            self._deploy(model, experiment["challenger"])
        else:
            self._deploy(model, experiment["champion"])
        outcome = {"winner": "challenger" if won else "champion", "p_value": result.p_value,
                   "difference": result.difference}
        with self.engine.begin() as conn:
            conn.execute(experiments_table.update().where(experiments_table.c.name == name).values(
                status="concluded", result=json.dumps(outcome)))
            self.audit.write(conn, "experiment", name, "concluded", reason=reason, model=model, **outcome)
        return result

    def _find(self, name: str, missing_ok: bool = False) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(experiments_table).where(experiments_table.c.name == name)).first()
            if row is None and not missing_ok:
                names = conn.execute(sa.select(experiments_table.c.name)).scalars().all()
                raise ServingError(f"No experiment named {name!r}; experiments: {', '.join(names) or 'none'}.")
        return None if row is None else row._asdict()

    @staticmethod
    def _event(name: str, unit: Any, kind: str, arm: str | None, version: str | None, value: float | None) -> dict:
        return {"experiment": name, "unit": str(unit), "kind": kind, "arm": arm, "version": version, "value": value,
                "at": datetime.now(UTC)}


def _score(outputs: np.ndarray) -> float:
    """The logged prediction of a single-row request: P(positive class) or the predicted value."""
    return float(outputs[0, -1])


def _compare(name: str, experiment: dict[str, Any], champion: np.ndarray, challenger: np.ndarray) -> Summary:
    from scipy import stats

    a, b = champion.astype(float), challenger.astype(float)
    difference = b.mean() - a.mean()
    binary = set(np.unique(np.concatenate([a, b]))) <= {0.0, 1.0}
    if binary:
        pooled = (a.sum() + b.sum()) / (len(a) + len(b))
        se_pooled = np.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
        p_value = float(2 * stats.norm.sf(abs(difference) / se_pooled)) if se_pooled > 0 else 1.0
        se = np.sqrt(a.mean() * (1 - a.mean()) / len(a) + b.mean() * (1 - b.mean()) / len(b))
        variance = pooled * (1 - pooled)
        test = "two-proportion z-test"
    else:
        result = stats.ttest_ind(b, a, equal_var=False)
        p_value = float(result.pvalue)
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        variance = (a.var(ddof=1) + b.var(ddof=1)) / 2
        test = "Welch's t-test"
    z = stats.norm.ppf(0.975)
    needed = int(np.ceil(2 * variance * (z + stats.norm.ppf(0.8)) ** 2 / difference**2)) if difference else None
    return Summary(name, Arm(experiment["champion"], len(a), float(a.mean())),
                   Arm(experiment["challenger"], len(b), float(b.mean())), test, float(difference),
                   float(difference - z * se), float(difference + z * se), p_value, needed)
