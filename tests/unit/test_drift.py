"""Drift statistics against independently computed PSI and scipy's two-sample Kolmogorov-Smirnov test."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlplat.errors import InvalidArgument, MissingColumnError
from mlplat.monitoring.drift import Reference, drift, reference


def sample(rng, n, shift=0.0, scale=1.0):
    return pd.DataFrame({"rating": rng.normal(4.0 + shift, 0.5 * scale, n), "trips": rng.poisson(10, n).astype(float),
                         "fare": rng.lognormal(2.5, 0.6, n)})


def psi_by_hand(train, current, bins=10):
    edges = np.quantile(train, np.linspace(0, 1, bins + 1)[1:-1])
    expected = np.histogram(train, np.r_[-np.inf, edges, np.inf])[0] / len(train)
    observed = np.histogram(current, np.r_[-np.inf, edges, np.inf])[0] / len(current)
    expected, observed = np.maximum(expected, 1e-4), np.maximum(observed, 1e-4)
    return np.sum((observed - expected) * np.log(observed / expected))


def test_unchanged_data_raises_no_alarm_and_injected_drift_is_found():
    rng = np.random.default_rng(0)
    train = sample(rng, 50_000)
    ref = reference(train)
    same = drift(ref, sample(rng, 20_000))
    assert same.drifted == [] and (same.table["psi"] < 0.01).all()
    shifted = sample(rng, 20_000)
    shifted["rating"] += 0.25  # half a standard deviation
    shifted["fare"] *= 1.3
    report = drift(ref, shifted)
    assert report.drifted == ["rating", "fare"]
    assert "drifted" in report._repr_html_()


def test_psi_and_ks_match_independent_computations():
    rng = np.random.default_rng(1)
    train, current = sample(rng, 40_000), sample(rng, 15_000, shift=0.1, scale=1.2)
    report = drift(reference(train, resolution=1000), current)
    for column in ["rating", "fare"]:  # continuous: the sketch's quantiles are the exact edges
        assert report.table.loc[column, "psi"] == pytest.approx(psi_by_hand(train[column], current[column]),
                                                                abs=2e-3)
        exact = stats.ks_2samp(train[column], current[column], method="asymp")
        assert report.table.loc[column, "ks"] == pytest.approx(exact.statistic, abs=2e-3)  # sketch: 1/1000
    small = drift(reference(train), current.head(300))
    exact = stats.ks_2samp(train["rating"], current["rating"].head(300), method="asymp")
    assert small.table.loc["rating", "p_value"] == pytest.approx(exact.pvalue, rel=0.2, abs=1e-3)


def test_a_reference_is_json_and_nulls_are_counted():
    rng = np.random.default_rng(2)
    train = sample(rng, 5_000)
    train.loc[:499, "rating"] = np.nan
    ref = Reference.from_dict(json.loads(json.dumps(reference(train).to_dict())))
    assert ref.columns["rating"]["null_fraction"] == pytest.approx(0.1)
    current = sample(rng, 1_000)
    current.loc[:249, "rating"] = np.nan
    assert drift(ref, current).table.loc["rating", "null_fraction"] == pytest.approx(0.25)


def test_bad_input_is_refused():
    train = sample(np.random.default_rng(3), 100)
    with pytest.raises(MissingColumnError, match=r"current rows have no column\(s\) \['fare'\]"):
        drift(reference(train), train.drop(columns="fare"))
    with pytest.raises(InvalidArgument, match="'rating' has no numeric values"):
        reference(train.assign(rating=np.nan))
    with pytest.raises(InvalidArgument, match="Need 2 <= bins"):
        reference(train, bins=1)


def test_many_rows_raise_no_false_alarm_from_the_sketchs_resolution():
    rng = np.random.default_rng(4)
    columns = [f"f{i}" for i in range(5)]
    train = pd.DataFrame(rng.normal(size=(400_000, 5)), columns=columns)
    ref = reference(train)
    current = pd.DataFrame(rng.normal(size=(400_000, 5)), columns=columns)
    assert drift(ref, current).drifted == []
    current["f2"] += 0.05  # a twentieth of a standard deviation: significant, but too small to act on ...
    report = drift(ref, current)
    assert report.table.loc["f2", "p_value"] < 1e-6 and report.drifted == []
    assert drift(ref, current, ks_threshold=0).drifted == ["f2"]  # ... unless the KS gap alone is asked for
