"""Serving on a real Triton: deploy, predict over gRPC with online features, survive a crash, refuse bad input."""

import os
import signal

import numpy as np
import pytest
from platforms import triton_platform
from triton_calls import at_once, executions, key_inputs

from mlplat.errors import InvalidArgument, ModelNotFound, OnnxExportError, ServingError
from mlplat.registry.artifacts import load_model
from mlplat.serving.triton import TritonService

WINDOW_US = 20_000  # a queue delay that lets requests sent at once meet in Triton's batcher
FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate", "customer_profile:avg_fare"]
DRIVER_FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate"]
ROWS = [{"driver_id": d, "customer_id": c} for d, c in [(1, 5), (2, 7), (3, 9), (999, 1)]]  # 999: never seen


def complete_rows(p):
    """Trips late enough that every driver has features (no missing values)."""
    first = p.features.get_training_set(p.labels, DRIVER_FEATURES)
    return p.labels[first[DRIVER_FEATURES[0].split(":")[1]].notna().to_numpy() & first["acceptance_rate"].notna().to_numpy()]


@pytest.fixture(scope="module")
def platform(tmp_path_factory, redis_url):
    yield from triton_platform(tmp_path_factory.mktemp("serving"), redis_url,
                               drivers=100, customers=50, days=5, trips=2000, seed=11)


@pytest.fixture(scope="module")
def base(platform):
    """A deployed XGBoost champion that the tests below predict with."""
    platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=platform.labels, target="completed",
                   name="base", params={"n_estimators": 20})
    platform.models.promote("base")
    return platform.deploy("base")


def native_outputs(p, deployment, family, rows=ROWS):
    online = p.features.get_online_features(deployment.features, rows).to_dict()
    X = np.array([v for k, v in online.items() if k not in rows[0]], dtype=np.float32).T
    return load_model(p.settings, deployment.name, deployment.version, family).predict_proba(X)


@pytest.mark.parametrize("estimator, family, features", [
    ("xgboost.XGBClassifier", "xgboost", FEATURES), ("lightgbm.LGBMClassifier", "lightgbm", FEATURES),
    ("sklearn.ensemble.RandomForestClassifier", "sklearn", DRIVER_FEATURES)])
def test_deploy_and_predict_match_the_native_model(platform, estimator, family, features):
    name = f"serve_{family}"
    labels = platform.labels if features is FEATURES else complete_rows(platform)
    trained = platform.train(estimator, features=features, entity_df=labels, target="completed", name=name,
                             params={"n_estimators": 20})
    platform.models.promote(name)
    deployment = platform.deploy(name)
    assert (deployment.status, deployment.version, deployment.triton_model) == ("READY", trained.version, name)
    assert deployment.endpoint.startswith("127.0.0.1:")
    prediction = platform.predict(name, ROWS)
    assert prediction.version == trained.version and prediction.outputs.shape == (4, 2)
    # unknown entities (NaN features) follow ONNX's missing-value rule, which scikit-learn trees do not share
    known = slice(None) if family != "sklearn" else slice(0, 3)
    np.testing.assert_allclose(prediction.outputs[known], native_outputs(platform, deployment, family)[known], atol=1e-5)
    assert name in [d.name for d in platform.deployments()]


def test_an_export_that_predicts_differently_is_refused(platform):
    # scikit-learn forests learn where missing values go; ONNX tree ensembles cannot say so
    platform.train("sklearn.ensemble.RandomForestClassifier", features=FEATURES, entity_df=platform.labels,
                   target="completed", name="with_gaps", params={"n_estimators": 20})
    with pytest.raises(OnnxExportError, match="refusing to deploy. Missing values"):
        platform.deploy("with_gaps", alias="challenger")
    assert "with_gaps" not in [d.name for d in platform.deployments()]


def test_raw_features_and_column_input(platform, base):
    name = "base"
    by_columns = platform.predict(name, {"driver_id": [1, 2], "customer_id": [5, 7]})
    raw = platform.predict(name, features=[[4.5, 0.9, 12.0], [3.0, 0.2, 40.0]])
    assert by_columns.outputs.shape == raw.outputs.shape == (2, 2)
    np.testing.assert_allclose(by_columns.outputs, platform.predict(name, ROWS[:2]).outputs)


def test_triton_killed_comes_back_and_predictions_resume(platform, base):
    before = platform.predict("base", ROWS).outputs
    killed = TritonService(platform.settings).status()
    os.kill(killed.pid, signal.SIGKILL)
    after = platform.predict("base", ROWS)
    np.testing.assert_allclose(after.outputs, before)
    assert TritonService(platform.settings).status().pid != killed.pid  # a new server, found by the client
    assert {d.name: d.status for d in platform.deployments()}["base"] == "READY"


def test_undeploy(platform):
    trained = platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=platform.labels,
                             target="completed", name="short_lived", params={"n_estimators": 5})
    platform.deploy("short_lived", version=trained.version)
    platform.undeploy("short_lived")
    assert "short_lived" not in [d.name for d in platform.deployments()]
    assert [(e.kind, e.action) for e in platform.models.history("short_lived")][-2:] == [
        ("deployment", "deployed"), ("deployment", "undeployed")]
    with pytest.raises(ServingError, match="not deployed"):
        platform.predict("short_lived", ROWS)


def test_the_model_card_deploy_button_puts_the_chosen_version_live(platform):
    from mlplat_magics.widgets import ModelCard

    trained = platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=platform.labels,
                             target="completed", name="carded", params={"n_estimators": 5})
    card = ModelCard(platform, "carded")
    card.version.value = trained.version
    card.deploy_button.click()
    live = {d.name: d for d in platform.deployments()}["carded"]
    assert (live.version, live.status) == (trained.version, "READY")
    assert f"deployed version {trained.version}: READY at grpc://{live.endpoint}" in card.status.value
    assert platform.predict("carded", ROWS).version == trained.version


def test_bad_requests_are_explained(platform, base):
    with pytest.raises(ModelNotFound, match="not a registered model"):
        platform.deploy("nope")
    with pytest.raises(ServingError, match="takes rows of 3 features"):
        platform.predict("base", features=[[1.0, 2.0]])
    with pytest.raises(ServingError, match="takes numeric features"):
        platform.predict("base", features=[["a", "b", "c"]])
    with pytest.raises(ServingError, match="v99 is not loaded"):
        platform.predict("base", ROWS, version="99")
    with pytest.raises(ServingError, match="not deployed"):
        platform.undeploy("nope")
    with pytest.raises(InvalidArgument, match="tolerance=. takes a number >= 0"):
        platform.deploy("base", tolerance=-1)  # no export could meet it: refused before the export


def test_a_model_onnx_cannot_express_is_refused(platform):
    platform.train("sklearn.semi_supervised.LabelPropagation", features=DRIVER_FEATURES,
                   entity_df=complete_rows(platform), target="completed", name="exotic")
    with pytest.raises(OnnxExportError, match="LabelPropagation cannot be expressed in ONNX"):
        platform.deploy("exotic", alias="challenger")


def test_assignment_is_stable_and_splits_by_traffic():
    from mlplat.serving.experiments import assign

    arms = [assign("salt-1", unit, 30) for unit in range(20_000)]
    assert abs(arms.count("challenger") / len(arms) - 0.30) < 0.015
    assert arms == [assign("salt-1", unit, 30) for unit in range(20_000)]  # the same units, the same arms
    assert arms != [assign("salt-2", unit, 30) for unit in range(20_000)]  # another experiment reshuffles


def champion_and_challenger(platform, name, trees):
    """Two registered versions of ``name``: the first promoted to champion, the second its challenger."""
    versions = []
    for count in trees:
        versions.append(platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=platform.labels,
                                       target="completed", name=name, params={"n_estimators": count}))
        if len(versions) == 1:
            platform.models.promote(name)
    return versions


def test_an_ab_test_serves_both_arms_and_concludes_for_the_winner(platform):
    name = "ab_model"
    first, second = champion_and_challenger(platform, name, trees=(10, 30))
    experiment = platform.experiments.start("bigger_forest", name, traffic=50)
    assert (experiment["champion"], experiment["challenger"]) == (first.version, second.version)
    rng = np.random.default_rng(0)
    served = {}
    for unit in range(400):
        prediction = platform.experiments.predict("bigger_forest", unit, [ROWS[unit % 3]])
        served[unit] = prediction.version
        won = rng.random() < (0.70 if prediction.version == second.version else 0.35)  # clear whatever the salt
        platform.experiments.record_outcome("bigger_forest", unit, int(won))
    assert set(served.values()) == {first.version, second.version}
    summary = platform.experiments.summary("bigger_forest")
    # the two-proportion z-test, computed here from the outcomes as served
    a = np.array([o for o in _outcomes(platform, "bigger_forest", served, first.version)])
    b = np.array([o for o in _outcomes(platform, "bigger_forest", served, second.version)])
    pooled = (a.sum() + b.sum()) / (len(a) + len(b))
    z = (b.mean() - a.mean()) / np.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
    from scipy.stats import norm

    assert summary.test == "two-proportion z-test"
    assert (summary.champion.n, summary.challenger.n) == (len(a), len(b))
    assert summary.p_value == pytest.approx(2 * norm.sf(abs(z)))
    assert summary.ci_low < summary.difference < summary.ci_high and summary.significant
    platform.experiments.conclude("bigger_forest")
    assert platform.models.get(name).version == second.version  # the winner is champion
    started, concluded = platform.audit.entries("experiment", "bigger_forest")
    assert (started.action, concluded.action, concluded.detail["winner"]) == ("started", "concluded", "challenger")
    assert platform.predict(name, ROWS).version == second.version  # and is what Triton serves
    with pytest.raises(ServingError, match="has concluded"):
        platform.experiments.predict("bigger_forest", 1, [ROWS[0]])
    restored = platform.rollback(name, reason="rolling back the experiment")
    assert restored.version == first.version == platform.predict(name, ROWS).version


def _outcomes(platform, experiment, served, version):
    import sqlalchemy as sa

    from mlplat.serving.experiments import events_table

    with platform.engine.connect() as conn:
        rows = conn.execute(sa.select(events_table).where(events_table.c.experiment == experiment,
                                                          events_table.c.kind == "outcome")).all()
    return [r.value for r in rows if served[int(r.unit)] == version]


def test_a_shadow_test_serves_the_champion_and_logs_the_challenger(platform):
    name = "shadowed"
    first, second = champion_and_challenger(platform, name, trees=(5, 15))
    platform.experiments.start("quiet", name, mode="shadow")
    served = [platform.experiments.predict("quiet", unit, [ROWS[unit % 3]]) for unit in range(20)]
    assert {p.version for p in served} == {first.version}
    import sqlalchemy as sa

    from mlplat.serving.experiments import events_table

    with platform.engine.connect() as conn:
        shadow = conn.execute(sa.select(events_table).where(events_table.c.experiment == "quiet",
                                                            events_table.c.kind == "shadow")).all()
    assert len(shadow) == 20 and {r.version for r in shadow} == {second.version}
    with pytest.raises(ServingError, match="shadow test"):
        platform.experiments.summary("quiet")
    with pytest.raises(ServingError, match="No experiment named 'loud'"):
        platform.experiments.predict("loud", 1, [ROWS[0]])


def test_any_grpc_client_can_predict_with_entity_ids_only(platform, base):
    import tritonclient.grpc as grpcclient

    ids = {"driver_id": [b"1", b"2", b"999"], "customer_id": [b"5", b"7", b"1"]}
    inputs = []
    for key, values in ids.items():
        tensor = grpcclient.InferInput(key, [3, 1], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object).reshape(3, 1))
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(TritonService(platform.settings).ensure().url)
    by_id = client.infer("base_by_id", inputs).as_numpy("probabilities")
    client.close()
    expected = platform.predict("base", [{"driver_id": 1, "customer_id": 5}, {"driver_id": 2, "customer_id": 7},
                                         {"driver_id": 999, "customer_id": 1}]).outputs
    np.testing.assert_allclose(by_id, expected, atol=1e-6)


def _batch_of_requests(bad=None):
    """Requests of 1 to 3 rows over drivers 1-60 and customers 1-40 (999: no features); ``bad``: the one with
    a driver key that cannot name an entity."""
    rng = np.random.default_rng(3)
    requests = []
    for index in range(48):
        size = 1 + index % 3
        drivers = [str(d).encode() for d in rng.choice([*range(1, 61), 999], size)]
        customers = [str(c).encode() for c in rng.integers(1, 41, size)]
        if index == bad:
            drivers[-1] = b"1.5"
        requests.append({"driver_id": drivers, "customer_id": customers})
    return requests


@pytest.fixture
def batching_window(platform, base):
    """``base`` served with a 20 ms queue delay, so that requests sent together are batched however fast each
    runs (a 2-core machine under load sends them more slowly than by_id answers); then as it was."""
    platform.deploy("base", queue_delay_us=WINDOW_US)
    yield
    platform.deploy("base")


def test_by_id_batches_concurrent_requests_into_one_execution_with_the_unbatched_answers(platform, batching_window):
    import tritonclient.grpc as grpcclient

    requests = _batch_of_requests()
    client = grpcclient.InferenceServerClient(TritonService(platform.settings).ensure().url)
    try:
        alone = []
        for ids in requests:
            result = client.infer("base_by_id", key_inputs(ids))
            alone.append((result.as_numpy("probabilities"), result.as_numpy("missing_features")))
        before, model_before = executions(client, "base_by_id"), executions(client, "base")
        together = at_once(client, "base_by_id", requests)
        after, model_after = executions(client, "base_by_id"), executions(client, "base")
    finally:
        client.close()
    served, ran = after[0] - before[0], after[1] - before[1]
    assert served == len(requests)
    assert ran < served, f"{served} requests in {ran} executions: no batching seen"
    assert model_after == model_before  # on the embedded Triton, by_id runs the model in its own process
    for (outputs, missing), (expected, expected_missing) in zip(together, alone):
        np.testing.assert_array_equal(outputs, expected)
        np.testing.assert_array_equal(missing, expected_missing)


def test_a_bad_key_fails_its_own_request_only_and_the_rest_of_the_batch_is_answered(platform, batching_window):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    bad = 20
    requests = _batch_of_requests(bad=bad)
    client = grpcclient.InferenceServerClient(TritonService(platform.settings).ensure().url)
    try:
        before = executions(client, "base_by_id")
        together = at_once(client, "base_by_id", requests)
        after = executions(client, "base_by_id")
    finally:
        client.close()
    assert after[1] - before[1] < len(requests) - 1, "no batching seen"
    assert isinstance(together[bad], InferenceServerException)
    assert "driver_id='1.5' is not an int64 key" in str(together[bad])
    for index, (ids, answer) in enumerate(zip(requests, together)):
        if index == bad:
            continue
        rows = [{"driver_id": int(d), "customer_id": int(c)} for d, c in zip(ids["driver_id"], ids["customer_id"])]
        np.testing.assert_allclose(answer[0], platform.predict("base", rows).outputs, atol=1e-6)


def test_deploy_gives_by_id_the_models_instances_and_dynamic_batching(platform, base):
    import tritonclient.grpc as grpcclient

    platform.deploy("base", instances=2, max_batch_size=512, queue_delay_us=300)
    client = grpcclient.InferenceServerClient(TritonService(platform.settings).ensure().url)
    try:
        for model in ("base", "base_by_id"):
            config = client.get_model_config(model, as_json=True)["config"]
            assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 300
            assert [group["count"] for group in config["instance_group"]] == [2]
            assert config["max_batch_size"] == 512
        answer = client.infer("base_by_id", key_inputs({"driver_id": [b"1"], "customer_id": [b"5"]}))
    finally:
        client.close()
    np.testing.assert_allclose(answer.as_numpy("probabilities"),
                               platform.predict("base", [{"driver_id": 1, "customer_id": 5}]).outputs, atol=1e-6)


@pytest.mark.parametrize("option", [{"instances": 0}, {"instances": "2"}, {"max_batch_size": 1.5},
                                    {"queue_delay_us": -1}, {"instances": '1 } ] backend: "python" #'},
                                    {"tolerance": "tight"}])
def test_bad_batching_options_are_refused_before_anything_changes(platform, base, option):
    repository = TritonService(platform.settings).models
    before = {path: path.read_bytes() for path in repository.rglob("*") if path.is_file()}
    with pytest.raises(InvalidArgument, match=f"{next(iter(option))}="):
        platform.deploy("base", **option)
    assert {path: path.read_bytes() for path in repository.rglob("*") if path.is_file()} == before
    assert platform.predict("base", [{"driver_id": 1, "customer_id": 5}]).version
