"""Bad input through the public API: every call raises one specific MlplatError and writes nothing.

Each row is a reproduction from a fuzz of the public API (issue 13, section 5): before, these raised
TypeError, IndexError, ArrowInvalid, UnicodeEncodeError, ValueError, MlflowException or
AttributeError, or were silently accepted (an online read returning None for a key that can never
match, a misaligned result, an empty ingest, a renamed column).
"""

from __future__ import annotations

import math
import os
import uuid
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

import mlplat
from mlplat.errors import (
    DefinitionError,
    DtypeMismatch,
    EntityDataFrameError,
    EntityKeyError,
    FeatureNotFound,
    FeatureViewNotFound,
    InvalidArgument,
    SchemaError,
    TrainingError,
)
from mlplat.features import Entity, FeatureView, Field

NOW = pd.Timestamp.now(tz="UTC").floor("s")
DRIVER = Entity("driver", join_keys=["driver_id"])
CITY = Entity("city", join_keys=["city_id"])
STATS = FeatureView("driver_stats", entities=[DRIVER], ttl=timedelta(days=2),
                    schema=[Field("rating", "float32"), Field("trips", "int64")])
CITIES = FeatureView("city_stats", entities=[CITY], ttl=timedelta(days=2),
                     schema=[Field("name", "string"), Field("demand", "float64")])
RATING = ["driver_stats:rating"]
HOUR_AGO = NOW - pd.Timedelta(hours=1)


def driver_rows(ids=range(1, 21), when=HOUR_AGO) -> pd.DataFrame:
    ids = list(ids)
    return pd.DataFrame({"driver_id": ids, "event_timestamp": [when] * len(ids),
                         "rating": np.linspace(1, 5, len(ids)), "trips": ids})


def labels(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"driver_id": [1 + i % 20 for i in range(n)],
                         "event_timestamp": [NOW - pd.Timedelta(minutes=n - i) for i in range(n)],
                         "y": [i % 2 for i in range(n)]})


@pytest.fixture(scope="module")
def p(tmp_path_factory, redis_url):
    platform = mlplat.connect(home=str(tmp_path_factory.mktemp("api-errors")), online_store=redis_url,
                              online_prefix=f"t{uuid.uuid4().hex[:10]}")
    platform.features.apply([DRIVER, CITY, STATS, CITIES])
    platform.features.ingest("driver_stats", driver_rows())
    platform.features.ingest("city_stats", pd.DataFrame({
        "city_id": ["paris", "rome"], "event_timestamp": [HOUR_AGO] * 2,
        "name": ["Paris", "Rome"], "demand": [1.0, 2.0]}))
    platform.features.materialize()
    yield platform
    platform.close()


def snapshot(p) -> dict:
    """Everything a call could have written: offline files, online keys, registry, audit trail, MLflow."""
    offline = p.settings.offline_store.removeprefix("file://")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(offline) for f in names)
    client = p.features.online.client
    keys = sorted(client.scan_iter(match=f"{p.settings.online_prefix}:*"))
    views = sorted((v.name, tuple(p.features.registry.versions(v.name))) for v in p.features.list_views())
    tracked = p.settings.home / "mlflow.db"
    return {"files": files, "online": keys, "online_values": client.mget(keys) if keys else [], "views": views,
            "audit": len(p.audit.entries()), "mlflow": tracked.exists() and tracked.stat().st_mtime_ns}


def object_column(*values) -> pd.Series:
    return pd.Series(list(values), dtype=object)


ONLINE_KEYS = [None, math.nan, 1.0, 1.5, math.inf, 1e39, [1], b"1", {"a": 1}, True, "1", 2**70]

CASES = [
    # -- definitions --------------------------------------------------------------------------------
    ("apply None", lambda p: p.features.apply(None), DefinitionError),
    ("apply a string", lambda p: p.features.apply("driver_stats"), DefinitionError),
    ("entities not a list", lambda p: p.features.apply(
        [FeatureView("solo", entities=DRIVER, schema=[Field("a", "float32")])]), DefinitionError),
    ("entities a number", lambda p: FeatureView("solo", entities=5, schema=[Field("a", "float32")]), DefinitionError),
    ("join keys a number", lambda p: Entity("thing", join_keys=5), DefinitionError),
    ("5,000-character view name", lambda p: p.features.apply(
        [DRIVER, FeatureView("v" * 5000, entities=[DRIVER], schema=[Field("a", "float32")])]), DefinitionError),
    ("view name with a newline", lambda p: FeatureView("stats\n", entities=[DRIVER], schema=[Field("a", "float32")]),
     DefinitionError),
    ("surrogate in a description", lambda p: FeatureView("solo", entities=[DRIVER], schema=[Field("a", "float32")],
                                                        description="\ud800"), DefinitionError),
    ("tags that are not text", lambda p: FeatureView("solo", entities=[DRIVER], schema=[Field("a", "float32")],
                                                    tags={"tier": 1}), DefinitionError),
    ("get_view None", lambda p: p.features.get_view(None), FeatureViewNotFound),
    ("get_view version 'x'", lambda p: p.features.get_view("driver_stats", "x"), FeatureViewNotFound),
    # -- ingest and push ------------------------------------------------------------------------------
    ("year-3000 event time", lambda p: p.features.ingest(
        "driver_stats", driver_rows(when=datetime(3000, 1, 1))), DtypeMismatch),
    ("year-3000 ingest window", lambda p: p.features.ingest("driver_stats", driver_rows(), start=datetime(3000, 1, 1)),
     InvalidArgument),
    ("ingest start after end", lambda p: p.features.ingest("driver_stats", driver_rows(), start="2025-01-02",
                                                           end="2025-01-01"), InvalidArgument),
    ("ingest start 'nat'", lambda p: p.features.ingest("driver_stats", driver_rows(), start="nat"), InvalidArgument),
    ("duplicate columns", lambda p: p.features.ingest(
        "driver_stats", pd.concat([driver_rows(), driver_rows()[["rating"]]], axis=1)), SchemaError),
    ("surrogate in a string feature", lambda p: p.features.ingest("city_stats", pd.DataFrame({
        "city_id": ["oslo"], "event_timestamp": [NOW], "name": object_column("\ud800"), "demand": [1.0]})), SchemaError),
    ("string keys into an int64 view", lambda p: p.features.ingest(
        "driver_stats", driver_rows().astype({"driver_id": str})), SchemaError),
    ("int keys pushed into a string view", lambda p: p.features.push("city_stats", pd.DataFrame({
        "city_id": [7], "event_timestamp": [NOW], "name": ["x"], "demand": [1.0]})), SchemaError),
    # -- training sets -------------------------------------------------------------------------------
    ("year-3000 entity_df", lambda p: p.features.get_training_set(
        labels().assign(event_timestamp=datetime(3000, 1, 1)), RATING), EntityDataFrameError),
    ("entity_df with duplicate columns", lambda p: p.features.get_training_set(
        pd.concat([labels(), labels()[["y"]]], axis=1), RATING), EntityDataFrameError),
    ("entity_df column named like a feature", lambda p: p.features.get_training_set(
        labels().assign(rating=1.0), RATING), EntityDataFrameError),
    ("features None", lambda p: p.features.get_training_set(labels(), None), FeatureNotFound),
    # -- online reads --------------------------------------------------------------------------------
    *[(f"online key {key!r}", lambda p, key=key: p.features.get_online_features(RATING, [{"driver_id": key}]),
       EntityKeyError) for key in ONLINE_KEYS],
    ("online key an int for a string view", lambda p: p.features.get_online_features(
        ["city_stats:demand"], [{"city_id": 7}]), EntityKeyError),
    ("online key a surrogate", lambda p: p.features.get_online_features(
        ["city_stats:demand"], [{"city_id": "\ud800"}]), EntityKeyError),
    ("online float column", lambda p: p.features.get_online_features(
        RATING, {"driver_id": np.array([1.0, 2.0])}), EntityKeyError),
    ("columns of different lengths", lambda p: p.features.get_online_features(
        RATING, {"driver_id": [1, 2], "customer_id": [5]}), InvalidArgument),
    ("entity rows None", lambda p: p.features.get_online_features(RATING, None), InvalidArgument),
    ("entity rows a string", lambda p: p.features.get_online_features(RATING, "driver_id"), InvalidArgument),
    ("entity rows of ints", lambda p: p.features.get_online_features(RATING, [1, 2]), InvalidArgument),
    ("entity rows of lists", lambda p: p.features.get_online_features(RATING, [[1]]), InvalidArgument),
    ("entity column a scalar", lambda p: p.features.get_online_features(RATING, {"driver_id": 1}), InvalidArgument),
    ("online features None", lambda p: p.features.get_online_features(None, [{"driver_id": 1}]), FeatureNotFound),
    # -- training, models, serving -------------------------------------------------------------------------
    *[(f"model name {name!r}", lambda p, name=name: p.train("random_forest", features=RATING, entity_df=labels(),
                                                             target="y", name=name), InvalidArgument)
      for name in ("a/b", "a'b", None, "m" * 5000, "")],
    ("estimator None", lambda p: p.train(None, features=RATING, entity_df=labels(), target="y", name="m"),
     InvalidArgument),
    ("estimator 42", lambda p: p.train(42, features=RATING, entity_df=labels(), target="y", name="m"), InvalidArgument),
    ("unknown train option", lambda p: p.train("random_forest", features=RATING, entity_df=labels(), target="y",
                                               name="m", n_estimators=5), InvalidArgument),
    ("missing train option", lambda p: p.train("random_forest", features=RATING), InvalidArgument),
    ("params not a dict", lambda p: p.train("random_forest", features=RATING, entity_df=labels(), target="y",
                                            name="m", params=5), InvalidArgument),
    ("split not a dict", lambda p: p.train("random_forest", features=RATING, entity_df=labels(), target="y",
                                           name="m", split=5), InvalidArgument),
    ("unknown split option", lambda p: p.train("random_forest", features=RATING, entity_df=labels(), target="y",
                                               name="m", split={"size": 0.2}), InvalidArgument),
    ("validation not a dict", lambda p: p.train("random_forest", features=RATING, entity_df=labels(), target="y",
                                                name="m", validation=5), InvalidArgument),
    ("seed not a number", lambda p: p.train("random_forest", features=RATING, entity_df=labels(), target="y",
                                            name="m", seed="x"), InvalidArgument),
    ("entity_df a list", lambda p: p.train("random_forest", features=RATING, entity_df=[1, 2], target="y", name="m"),
     EntityDataFrameError),
    ("empty entity_df", lambda p: p.train("random_forest", features=RATING, entity_df=labels().iloc[:0], target="y",
                                          name="m"), TrainingError),
    ("target named like a feature", lambda p: p.train("random_forest", features=RATING, target="rating", name="m",
                                                      entity_df=labels().rename(columns={"y": "rating"})),
     EntityDataFrameError),
    ("tune space a number", lambda p: p.tune("random_forest", 42, features=RATING, entity_df=labels(), target="y",
                                             name="m"), InvalidArgument),
    ("model versions with a quote", lambda p: p.models.versions("a'b"), InvalidArgument),
    ("archive without a version", lambda p: p.models.archive("m", None), InvalidArgument),  # it archived the champion
    ("an alias that is a list", lambda p: p.models.get("m", alias=[1]), InvalidArgument),
    ("score rows that are not a DataFrame", lambda p: p.models.score("m", None, version=1), EntityDataFrameError),
    ("drift of rows that are not a DataFrame", lambda p: p.models.drift("m", None, version=1), InvalidArgument),
    ("search for a number", lambda p: p.features.search(5), InvalidArgument),
    ("list views matching a list", lambda p: p.features.list_views(["driver_stats"]), InvalidArgument),
    ("materialize views=5", lambda p: p.features.materialize(views=5), InvalidArgument),
    ("compute a number", lambda p: p.features.compute(5), FeatureViewNotFound),
    ("diff with version 'x'", lambda p: p.features.diff("driver_stats", "x"), InvalidArgument),
    ("training set on a client that is not one", lambda p: p.features.get_training_set(labels(), RATING, client=5),
     InvalidArgument),
    ("request_data a number", lambda p: p.features.get_online_features(RATING, [{"driver_id": 1}], request_data=5),
     InvalidArgument),
    ("deploy a/b", lambda p: p.deploy("a/b"), InvalidArgument),
    ("deploy with an unknown policy", lambda p: p.deploy("m", missing="sometimes"), InvalidArgument),
    ("deploy with an unknown option", lambda p: p.deploy("m", replicas=2), InvalidArgument),
    ("predict a path", lambda p: p.predict("../m", [{"driver_id": 1}]), InvalidArgument),
]


@pytest.mark.parametrize("call, error", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_one_clear_error_and_writes_nothing(p, call, error):
    before = snapshot(p)
    with pytest.raises(error) as raised:
        call(p)
    assert raised.type is error, f"{raised.type.__name__}: {raised.value}"
    assert len(str(raised.value)) < 600  # one readable message, whatever the input's size
    assert snapshot(p) == before


def test_keys_of_the_right_kind_read_as_before(p):
    """The checks refuse only what could never match: ints, numpy ints and strings of the right kind still read."""
    got = p.features.get_online_features(["driver_stats:rating", "driver_stats:trips"],
                                         {"driver_id": np.array([1, 20, 999])}).to_dict()
    assert got["trips"] == [1, 20, None]  # 999: never ingested, so a miss (None), not an error
    assert p.features.get_online_features(["city_stats:name"], [{"city_id": "rome"}]).to_dict()["name"] == ["Rome"]
    assert p.features.get_online_features(RATING, []).to_dict() == {"driver_id": [], "rating": []}


def test_a_view_before_its_first_write_takes_int_or_string_keys(p):
    fresh = FeatureView("fresh_stats", entities=[DRIVER], schema=[Field("a", "float32")])
    p.features.apply([fresh])
    assert p.features.get_online_features(["fresh_stats:a"], {"driver_id": [1, "x"]}).to_dict()["a"] == [None, None]
    with pytest.raises(EntityKeyError, match="a float is not a key"):
        p.features.get_online_features(["fresh_stats:a"], {"driver_id": [1.0]})
