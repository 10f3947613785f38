"""The one way tests make a platform holding the demo's features (``demo_platform`` in conftest.py hands it out)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlplat
from mlplat.demo import customer, customer_profile, driver, driver_stats, make_dataset


def demo_platform(home: Path, redis_url: str | None = None, *, drivers: int = 50, customers: int = 20, days: int = 4,
                  trips: int = 600, seed: int = 3, profiles: bool = True, materialize: bool = True,
                  **settings: Any) -> mlplat.Platform:
    """A platform (its home in ``home``) holding the demo's driver and, with ``profiles``, customer features, made
    by ``make_dataset`` at this size and seed, materialised unless told not to; the trip labels are in
    ``p.labels``. It uses the Redis at ``redis_url`` under a key prefix of its own (None: its own embedded
    Redis); ``settings`` go to ``mlplat.connect`` (``user``, ``clock``, ...)."""
    stats, customer_rows, labels = make_dataset(drivers=drivers, customers=customers, days=days, trips=trips,
                                                seed=seed)
    where = {"online_store": redis_url, "online_prefix": f"t{uuid.uuid4().hex[:10]}"} if redis_url else {}
    p = mlplat.connect(home=str(home), **{**where, **settings})
    p.features.apply([driver, driver_stats, *([customer, customer_profile] if profiles else [])])
    p.features.ingest("driver_stats", stats)
    if profiles:
        p.features.ingest("customer_profile", customer_rows)
    if materialize:
        p.features.materialize()
    p.labels = labels
    return p


def triton_platform(home: Path, redis_url: str, **size: Any) -> Iterator[mlplat.Platform]:
    """For module fixtures: a :func:`demo_platform` of ``size`` that serves on its own Triton, which stops after;
    skips without Triton."""
    import pytest

    from mlplat.serving.triton import TritonService, triton_installed

    p = demo_platform(home, redis_url, **size)
    if not triton_installed(p.settings):
        pytest.skip(f"no Triton in {p.settings.triton_env}: `make triton` creates it")
    yield p
    p.close()
    TritonService(p.settings).stop()


def complete_rows(p: mlplat.Platform, features: list[str], columns: list[str]) -> tuple[Any, Any]:
    """The trips whose every feature is known, and their training set."""
    frame = p.features.get_training_set(p.labels, features)
    keep = frame[columns].notna().all(axis=1).to_numpy()
    return p.labels[keep].reset_index(drop=True), frame[keep].reset_index(drop=True)


@contextmanager
def serving_platform(home: Path, name: str, rows: list[dict], redis_url: str | None = None,
                     n_estimators: int = 10) -> Iterator[tuple[mlplat.Platform, Any]]:
    """``(p, outputs)``: a small demo platform with its own embedded Triton serving an XGBoost model ``name`` on
    two driver features, and that model's outputs for ``rows``; its services stop on exit. Skips without Triton."""
    import pytest

    from mlplat import services
    from mlplat.serving.triton import triton_installed

    p = demo_platform(home, redis_url, drivers=50, customers=10, days=3, trips=800, seed=3, profiles=False)
    if not triton_installed(p.settings):
        pytest.skip(f"no Triton in {p.settings.triton_env}: `make triton` creates it")
    p.train("xgboost.XGBClassifier", features=["driver_stats:rating", "driver_stats:acceptance_rate"],
            entity_df=p.labels, target="completed", name=name, params={"n_estimators": n_estimators})
    p.models.promote(name)
    p.deploy(name)
    try:
        yield p, p.predict(name, rows).outputs
    finally:
        p.close()
        services.down(p.settings)
