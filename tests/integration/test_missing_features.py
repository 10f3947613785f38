"""The missing-feature policy and entity-key checks of a deployed model, in ``p.predict`` and Triton's ``_by_id``.

One real Triton for the module. Before, both paths answered a confident probability for an entity
with no features at all, and for keys such as NaN, inf, 1e39 or 1.0 that can never name one.
"""

from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from triton_calls import at_once, executions

import mlplat
from mlplat.errors import EntityKeyError, MissingFeatures, MlplatError
from mlplat.features import Entity, FeatureView, Field
from mlplat.monitoring.metrics import exposition
from mlplat.monitoring.predlog import metrics_key
from mlplat.registry.artifacts import load_model
from mlplat.serving.triton import TritonService, triton_installed

NAME = "gaps"
NOW = pd.Timestamp.now(tz="UTC").floor("s")
DRIVERS, CUSTOMERS, NULL_RATING = range(1, 31), range(1, 21), 7  # driver 7 is stored with a null rating
FEATURES = ["driver_stats:rating", "driver_stats:acceptance", "customer_profile:avg_fare"]
PINNED = ["driver_stats@1:rating", "driver_stats@1:acceptance", "customer_profile@1:avg_fare"]
ROWS = [{"driver_id": 1, "customer_id": 1}, {"driver_id": 999, "customer_id": 2},
        {"driver_id": NULL_RATING, "customer_id": 3}, {"driver_id": 2, "customer_id": 999}]
ROWS_MISSING = {1: PINNED[:2], 2: PINNED[:1], 3: PINNED[2:]}  # what each row lacks, by construction


@pytest.fixture(scope="module")
def p(tmp_path_factory, redis_url):
    platform = mlplat.connect(home=str(tmp_path_factory.mktemp("missing")), online_store=redis_url,
                              online_prefix=f"t{uuid.uuid4().hex[:10]}")
    if not triton_installed(platform.settings):
        pytest.skip(f"no Triton in {platform.settings.triton_env}: `make triton` creates it")
    rng = np.random.default_rng(3)
    driver, customer = Entity("driver", join_keys=["driver_id"]), Entity("customer", join_keys=["customer_id"])
    platform.features.apply([driver, customer,
                             FeatureView("driver_stats", entities=[driver],
                                         schema=[Field("rating", "float32"), Field("acceptance", "float32")]),
                             FeatureView("customer_profile", entities=[customer], schema=[Field("avg_fare", "float32")])])
    drivers = pd.DataFrame({"driver_id": list(DRIVERS), "event_timestamp": NOW - pd.Timedelta(days=1),
                            "rating": rng.uniform(1, 5, len(DRIVERS)), "acceptance": rng.uniform(0, 1, len(DRIVERS))})
    drivers.loc[drivers.driver_id == NULL_RATING, "rating"] = None
    customers = pd.DataFrame({"customer_id": list(CUSTOMERS), "event_timestamp": NOW - pd.Timedelta(days=1),
                              "avg_fare": rng.uniform(5, 50, len(CUSTOMERS))})
    platform.features.ingest("driver_stats", drivers)
    platform.features.ingest("customer_profile", customers)
    platform.features.materialize()
    labels = pd.DataFrame({"driver_id": rng.choice(list(DRIVERS), 400), "customer_id": rng.choice(list(CUSTOMERS), 400),
                           "event_timestamp": NOW - pd.to_timedelta(np.arange(400, 0, -1), unit="s")})
    rating = drivers.set_index("driver_id").rating.fillna(3).loc[labels.driver_id].to_numpy()
    labels["completed"] = (rating + rng.normal(0, 0.7, 400) > 3).astype(int)
    platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed", name=NAME,
                   params={"n_estimators": 10})
    platform.models.promote(NAME)
    platform.tables = {"driver": drivers.set_index("driver_id"), "customer": customers.set_index("customer_id"),
                       "labels": labels}
    platform.policy = None
    yield platform
    platform.close()
    TritonService(platform.settings).stop()


def serve(p, policy: str, queue_delay_us: int = 0) -> None:
    """Deploy the model with ``policy`` (and Triton's queue delay) unless it already is."""
    if p.policy != (policy, queue_delay_us):
        p.deploy(NAME, missing=policy, queue_delay_us=queue_delay_us)
        p.policy = (policy, queue_delay_us)


def matrix(p, rows: list[dict]) -> np.ndarray:
    """The features of ``rows`` from what was ingested (pandas), NaN where an entity or a value is missing."""
    drivers, customers = p.tables["driver"], p.tables["customer"]
    out = np.full((len(rows), 3), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        if row["driver_id"] in drivers.index:
            out[i, :2] = drivers.loc[row["driver_id"], ["rating", "acceptance"]].to_numpy(dtype=np.float32)
        if row["customer_id"] in customers.index:
            out[i, 2] = customers.loc[row["customer_id"], "avg_fare"]
    return out


def native(p, X: np.ndarray) -> np.ndarray:
    return load_model(p.settings, NAME, "1", "xgboost").predict_proba(X)


def by_id(p, ids: dict[str, list[bytes]]):
    """Call ``<model>_by_id`` as any gRPC client does: one BYTES tensor per key."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for key, values in ids.items():
        tensor = grpcclient.InferInput(key, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object).reshape(-1, 1))
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(TritonService(p.settings).ensure().url)
    try:
        return client.infer(f"{NAME}_by_id", inputs)
    finally:
        client.close()


def ids_of(rows: list[dict]) -> dict[str, list[bytes]]:
    return {key: [str(row[key]).encode() for row in rows] for key in ("driver_id", "customer_id")}


def counted(p) -> dict[str, int]:
    """The missing-feature counters of version 1, as stored for the metrics."""
    values = p.features.online.client.hgetall(metrics_key(p.settings.online_prefix, NAME, "1"))
    return {k.decode(): int(v) for k, v in values.items() if k.startswith(b"missing:")}


def test_flag_serves_every_row_and_says_which_lack_what(p):
    serve(p, "flag")
    before = counted(p)
    prediction = p.predict(NAME, ROWS)
    assert prediction.missing == ROWS_MISSING
    np.testing.assert_allclose(prediction.outputs, native(p, matrix(p, ROWS)), atol=1e-5)
    p.serving.log.flush()
    after = counted(p)
    assert after.get("missing:", 0) - before.get("missing:", 0) == 3
    assert after[f"missing:{PINNED[0]}"] - before.get(f"missing:{PINNED[0]}", 0) == 2
    text = exposition(p.features.online.client, p.settings.online_prefix)
    assert f'mlplat_predict_rows_missing_features_total{{model="{NAME}",version="1"}}' in text
    assert p.predict(NAME, ROWS[:1]).missing == {}


def test_flag_in_by_id_marks_the_same_rows_and_counts_them(p):
    serve(p, "flag")
    before = counted(p)
    result = by_id(p, ids_of(ROWS))
    flags = result.as_numpy("missing_features")
    assert {row: [PINNED[c] for c in np.flatnonzero(f)] for row, f in enumerate(flags) if f.any()} == ROWS_MISSING
    np.testing.assert_allclose(result.as_numpy("probabilities"), p.predict(NAME, ROWS).outputs, atol=1e-6)
    assert counted(p).get("missing:", 0) - before.get("missing:", 0) == 3


@pytest.mark.parametrize("key", [math.nan, math.inf, 1e39, 1.0, 1.5, "1", None, True])
def test_predict_refuses_keys_that_cannot_name_an_entity(p, key):
    serve(p, "flag")
    with pytest.raises(EntityKeyError, match="driver_id"):
        p.predict(NAME, [{"driver_id": key, "customer_id": 1}])


@pytest.mark.parametrize("key", [b"1.0", b"nan", b"inf", b"1e39", b"01", b"+1", b" 1", b"abc", b"\xff",
                                 str(2**63).encode()])
def test_by_id_refuses_keys_that_cannot_name_an_entity(p, key):
    from tritonclient.utils import InferenceServerException

    serve(p, "flag")
    with pytest.raises(InferenceServerException, match="driver_id") as refused:
        by_id(p, {"driver_id": [b"1", key], "customer_id": [b"1", b"1"]})
    assert "row 1" in refused.value.message()


def test_error_refuses_rows_that_lack_features_in_both_paths(p):
    from tritonclient.utils import InferenceServerException

    serve(p, "error")
    with pytest.raises(MissingFeatures, match="missing='error'") as refused:
        p.predict(NAME, ROWS)
    assert refused.value.missing == ROWS_MISSING
    with pytest.raises(InferenceServerException, match="missing='error'"):
        by_id(p, ids_of(ROWS))
    complete = [ROWS[0], {"driver_id": 3, "customer_id": 4}]
    np.testing.assert_allclose(p.predict(NAME, complete).outputs, native(p, matrix(p, complete)), atol=1e-5)
    np.testing.assert_allclose(by_id(p, ids_of(complete)).as_numpy("probabilities"),
                               p.predict(NAME, complete).outputs, atol=1e-6)


def test_error_in_a_batch_refuses_only_the_request_whose_rows_lack_features(p):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    serve(p, "error", queue_delay_us=20_000)  # requests sent at once meet in the batcher, however fast each runs
    complete = [[{"driver_id": d, "customer_id": c}] for d, c in [(1, 1), (3, 4), (2, 2), (4, 3)] * 8]
    requests = [ids_of(rows) for rows in complete[:12]] + [ids_of(ROWS)] + [ids_of(rows) for rows in complete[12:]]
    client = grpcclient.InferenceServerClient(TritonService(p.settings).ensure().url)
    try:
        before = executions(client, f"{NAME}_by_id")
        answers = at_once(client, f"{NAME}_by_id", requests)
        after = executions(client, f"{NAME}_by_id")
    finally:
        client.close()
    assert after[1] - before[1] < len(requests) - 1, "no batching seen"
    assert isinstance(answers[12], InferenceServerException) and "missing='error'" in str(answers[12])
    for rows, answer in zip(complete, answers[:12] + answers[13:]):
        np.testing.assert_allclose(answer[0], p.predict(NAME, rows).outputs, atol=1e-6)


def test_impute_fills_gaps_with_the_training_medians_in_both_paths(p):
    serve(p, "impute")
    labels = p.tables["labels"]  # distinct times: the time split trains on the earliest 80%
    train = labels.sort_values("event_timestamp").head(len(labels) - round(0.2 * len(labels)))
    medians = np.nanmedian(matrix(p, train.to_dict("records")), axis=0)
    X = matrix(p, ROWS)
    expected = native(p, np.where(np.isnan(X), medians, X))
    prediction = p.predict(NAME, ROWS)
    assert prediction.missing == ROWS_MISSING  # imputed, and said so
    np.testing.assert_allclose(prediction.outputs, expected, atol=1e-5)
    np.testing.assert_allclose(by_id(p, ids_of(ROWS)).as_numpy("probabilities"), expected, atol=1e-5)


KEYS = st.one_of(st.sampled_from([*DRIVERS[:3], 999]), st.sampled_from([math.nan, 1.0, "2", None]))


@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.fixed_dictionaries({"driver_id": KEYS, "customer_id": st.sampled_from([1, 2, 999])}),
                     min_size=1, max_size=5))
def test_predict_answers_what_the_model_says_or_raises_an_mlplat_error(p, rows):
    serve(p, "flag")
    valid = all(type(row["driver_id"]) is int for row in rows)
    try:
        prediction = p.predict(NAME, rows)
    except MlplatError:
        assert not valid
        return
    assert valid
    X = matrix(p, rows)
    np.testing.assert_allclose(prediction.outputs, native(p, X), atol=1e-5)
    assert prediction.missing == {r: [PINNED[c] for c in np.flatnonzero(np.isnan(X[r]))]
                                  for r in range(len(rows)) if np.isnan(X[r]).any()}
