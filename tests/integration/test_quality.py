"""Expectations on feature views: checked on ingest and push, bad rows rejected or quarantined, never stored."""

import json
import logging
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlplat
from mlplat.errors import DataQualityError, DefinitionError
from mlplat.features import Entity, FeatureView, Field
from mlplat.features.quality import QuarantineWarning, check
from mlplat.services import free_port

NOW = pd.Timestamp.now(tz="UTC").floor("s")
CITIES = ["paris", "rome"]
FEATURES = ["rides:rating", "rides:trips", "rides:city"]


@pytest.fixture
def rides(driver):
    return FeatureView("rides", entities=[driver], ttl=timedelta(days=2), schema=[
        Field("rating", "float32", not_null=True, min=0, max=5),
        Field("trips", "int64", min=0),
        Field("city", "string", allowed=CITIES),
    ])


def batch() -> pd.DataFrame:
    """Six rows: the first and last are good, each other one breaks something."""
    return pd.DataFrame({
        "driver_id": [1, 2, 3, 4, 5, 6],
        "event_timestamp": [NOW - pd.Timedelta(minutes=m) for m in range(6)],
        "rating": [4.5, None, 7.0, 3.0, -1.0, 2.0],
        "trips": [10, 3, 5, -2, 1, 0],
        "city": ["paris", "rome", "paris", "oslo", None, "rome"],  # a null is not a disallowed value
    })


def bad_rows(df: pd.DataFrame) -> pd.Series:
    """The rows that break the ``rides`` expectations, by plain pandas logic."""
    return (df["rating"].isna() | (df["rating"] < 0) | (df["rating"] > 5) | (df["trips"] < 0)
            | (df["city"].notna() & ~df["city"].isin(CITIES)))


def offline_files(platform) -> dict[str, bytes]:
    root = Path(platform.settings.home) / "offline"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def online(platform) -> dict[str, list]:
    return platform.features.get_online_features(FEATURES, {"driver_id": [1, 2, 3, 4, 5, 6]}).to_dict()


def stored(platform, view) -> pd.DataFrame:
    definition = platform.features.get_view(view)
    columns = [*definition.join_keys, definition.timestamp_field, *definition.feature_names]
    return platform.features.offline.read(definition, columns).to_pandas().sort_values("driver_id", ignore_index=True)


def test_nulls_ranges_and_allowed_values_are_each_detected(rides):
    df = batch()
    report = check(rides, df)
    assert report.mask.tolist() == bad_rows(df).tolist()
    assert {str(f.expectation): f.rows for f in report.failures} == {
        "rating not null": 1, "rating >= 0": 1, "rating <= 5": 1, "trips >= 0": 1, "city in ['paris', 'rome']": 1}
    assert (report.rows, report.bad_rows, report.checked, report.ok) == (6, 4, 5, False)
    (too_high,) = [f for f in report.failures if f.expectation.rule == "max"]
    assert too_high.examples == [{"driver_id": 3, "rating": 7.0}]
    assert "4 of 6 rows break its expectations" in str(report)
    assert "rating <= 5: 1 row, e.g. rating=7.0 (driver_id=3)" in str(report)
    assert "<td>rating &lt;= 5</td><td>1</td>" in report._repr_html_()
    clean = check(rides, df[~bad_rows(df)])
    assert clean.ok and str(clean) == "rides: all 2 rows meet its 5 expectation(s)"


def test_check_agrees_with_pandas_on_a_million_rows(rides):
    rng = np.random.default_rng(7)
    n = 1_000_000
    rating = rng.uniform(-0.01, 5.01, n)
    rating[rng.random(n) < 0.001] = np.nan
    df = pd.DataFrame({"driver_id": rng.integers(0, 10_000, n), "event_timestamp": NOW, "rating": rating,
                       "trips": rng.integers(-1, 1_000, n),
                       "city": rng.choice(np.array(["paris", "rome", "oslo", None], dtype=object), n,
                                          p=[0.5, 0.4989, 0.0001, 0.001])})
    report = check(rides, df)
    # float32 storage can round a value across a bound, so compare against the stored values.
    df["rating"] = df["rating"].astype("float32")
    assert np.array_equal(report.mask, bad_rows(df).to_numpy())
    assert 0 < report.bad_rows < n


def test_reject_leaves_the_offline_and_online_stores_unchanged(platform, driver, rides):
    platform.features.apply([driver, rides])
    good = batch()[~bad_rows(batch())]
    platform.features.ingest("rides", good)
    platform.features.push("rides", good)
    files, values = offline_files(platform), online(platform)
    message = ("4 of 6 rows for feature view 'rides' break its expectations, so nothing was stored: .*"
               "rating <= 5: 1 row, e.g. rating=7.0 \\(driver_id=3\\).*on_violation='quarantine'")
    with pytest.raises(DataQualityError, match=message) as raised:
        platform.features.ingest("rides", batch())
    assert raised.value.report.mask.tolist() == bad_rows(batch()).tolist()
    with pytest.raises(DataQualityError, match="trips >= 0: 1 row, e.g. trips=-2 \\(driver_id=4\\)"):
        platform.features.push("rides", batch())
    assert offline_files(platform) == files
    assert online(platform) == values
    assert platform.features.quarantine("rides").empty


def test_quarantine_stores_exactly_the_good_rows_and_sets_the_bad_aside(platform, driver, rides):
    platform.features.apply([driver, replace(rides, on_violation="quarantine")])
    df = batch()
    before = pd.Timestamp.now(tz="UTC")
    with pytest.warns(QuarantineWarning, match="Quarantined 4 rows"):
        result = platform.features.ingest("rides", df)
    assert result.rows == 2
    expected = df[~bad_rows(df)].reset_index(drop=True)
    pd.testing.assert_frame_equal(stored(platform, "rides"), expected, check_dtype=False)
    aside = platform.features.quarantine("rides")
    assert aside["driver_id"].tolist() == df.loc[bad_rows(df), "driver_id"].tolist()
    assert dict(zip(aside["driver_id"], aside["__failed"], strict=True)) == {
        2: "rating not null", 3: "rating <= 5", 4: "trips >= 0; city in ['paris', 'rome']", 5: "rating >= 0"}
    assert aside["__quarantined_at"].between(before, pd.Timestamp.now(tz="UTC")).all()
    assert aside["trips"].tolist() == [3, 5, -2, 1]  # the rows as sent, for fixing and re-ingesting


def test_push_is_checked_and_serves_only_the_good_rows(platform, driver, rides):
    platform.features.apply([driver, replace(rides, on_violation="quarantine")])
    with pytest.warns(QuarantineWarning, match="Quarantined 4 rows"):
        assert platform.features.push("rides", batch()) == 2
    assert online(platform) == {"driver_id": [1, 2, 3, 4, 5, 6], "rating": [4.5, None, None, None, None, 2.0],
                                "trips": [10, None, None, None, None, 0],
                                "city": ["paris", None, None, None, None, "rome"]}
    assert stored(platform, "rides")["driver_id"].tolist() == [1, 6]
    assert platform.features.quarantine("rides")["driver_id"].tolist() == [2, 3, 4, 5]


def test_a_failed_write_leaves_no_quarantined_rows_either(platform, driver, rides, second_write_fails):
    platform.features.apply([driver, replace(rides, on_violation="quarantine")])
    with pytest.raises(OSError, match="disk full"):  # the first write is the quarantine file, the second the good rows
        platform.features.ingest("rides", batch())
    assert offline_files(platform) == {}


@pytest.mark.parametrize("make, message", [
    (lambda: Field("rating", "float32", min=5, max=1), "'rating' \\(float32\\) has min=5 above max=1; swap them"),
    (lambda: Field("rating", "float32", max="5"), "max must be a number, not '5'"),
    (lambda: Field("city", "string", min=0), "'city' \\(string\\) cannot have min=: ranges suit numeric features"),
    (lambda: Field("rating", "float32", allowed=[1.0]), "cannot have allowed=: allowed values suit string and integer"),
    (lambda: Field("trips", "int64", allowed=["a", 2]), "allows \\['a'\\], which are not int64 values"),
    (lambda: Field("city", "string", allowed="paris"), "allowed must be a non-empty list, e.g. allowed=\\['paris'"),
    (lambda: Field("city", "string", allowed=[]), "allowed must be a non-empty list"),
    (lambda: Field("ok", "bool", not_null="yes"), "not_null must be True or False"),
    (lambda: FeatureView("v", entities=[Entity("d", ["d_id"])], schema=[Field("x", "int64")], on_violation="drop"),
     "on_violation='drop'; use one of 'reject', 'quarantine'"),
])
def test_invalid_expectations_are_refused_at_definition_time(make, message):
    with pytest.raises(DefinitionError, match=message):
        make()


def test_expectations_are_registered_and_a_change_updates_the_view_in_place(platform, driver, rides):
    platform.features.apply([driver, rides])
    registered = platform.features.get_view("rides")
    assert registered.field("rating").rules() == {"not_null": True, "min": 0, "max": 5}
    spec = registered.to_dict()
    assert spec["schema"][1] == {"name": "trips", "dtype": "int64", "description": "", "min": 0}
    assert FeatureView.from_dict(json.loads(json.dumps(spec))) == registered
    del spec["on_violation"]  # as stored before views had a policy
    assert FeatureView.from_dict(spec).on_violation == "reject"

    stricter = replace(rides, on_violation="quarantine",
                       schema=[replace(rides.schema[0], max=4), *rides.schema[1:]])
    assert stricter.schema_fingerprint() == rides.schema_fingerprint()  # same storage
    (result,) = platform.features.apply([stricter])
    assert (result.action, result.version) == ("updated", 1)
    assert sorted((c["change"], c.get("from"), c.get("to"), c["incompatible"]) for c in result.changes) == [
        ("expectations changed", {"not_null": True, "min": 0, "max": 5}, {"not_null": True, "min": 0, "max": 4}, False),
        ("on_violation changed", "reject", "quarantine", False)]
    with pytest.warns(QuarantineWarning):
        platform.features.ingest("rides", batch()[~bad_rows(batch())])  # rating 4.5 is now too high
    assert platform.features.quarantine("rides")["__failed"].tolist() == ["rating <= 4"]
    assert "<td>not null, &gt;= 0, &lt;= 4</td>" in platform.features.get_view("rides")._repr_html_()


def test_quarantine_on_s3(tmp_path, redis_url, driver, rides):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="key",
                              aws_secret_access_key="secret", region_name="us-east-1")
        client.create_bucket(Bucket="features")
        url = f"s3://key:secret@features/offline?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        p = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, offline_store=url,
                           online_prefix=uuid.uuid4().hex[:8])
        p.features.apply([driver, replace(rides, on_violation="quarantine")])
        with pytest.warns(QuarantineWarning):
            p.features.ingest("rides", batch())
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="features")["Contents"]]
        assert len([k for k in keys if k.startswith("offline/_quarantine/rides/v1/") and k.endswith(".parquet")]) == 1
        assert p.features.quarantine("rides")["driver_id"].tolist() == [2, 3, 4, 5]
        assert stored(p, "rides")["driver_id"].tolist() == [1, 6]
        p.close()
    finally:
        server.stop()
