"""Bring your own model: p.models.log registers a model trained anywhere with p.train's lineage, gate and pins; one
that ONNX cannot express is served over gRPC by its pyfunc in a worker process, which comes back when killed."""

import os
import signal
import time

import numpy as np
import pandas as pd
import pytest
from platforms import complete_rows
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from mlplat.byo import TrainingSetMismatch
from mlplat.errors import FeatureNotFound, InvalidArgument, MissingColumnError, MlplatError, ModelNotFound
from mlplat.registry import tracking
from mlplat.serving.triton import TritonService, triton_installed

FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate"]
COLUMNS = ["rating", "acceptance_rate"]
ROWS = [{"driver_id": d} for d in (1, 2, 3, 4)]
LINEAGE_TAGS = ("mlplat.features", "mlplat.feature_views", "mlplat.training_set_fingerprint", "mlplat.user",
                "mlplat.team", "mlplat.code_path", "mlplat.code_sha256")


@pytest.fixture(scope="module")
def platform(tmp_path_factory, demo_platform):
    p = demo_platform(tmp_path_factory.mktemp("byo"), drivers=60, days=4, trips=800, seed=5, profiles=False)
    yield p
    p.close()
    TritonService(p.settings).stop()


@pytest.fixture(scope="module")
def rows(platform):
    """Trips late enough that every driver has features, and their training set."""
    return complete_rows(platform, FEATURES, COLUMNS)


def needs_triton(p):
    if not triton_installed(p.settings):
        pytest.skip(f"no Triton in {p.settings.triton_env}: `make triton` creates it")


def online_rows(p):
    online = p.features.get_online_features(FEATURES, ROWS).to_dict()
    return pd.DataFrame({c: np.asarray(online[c], dtype=np.float64) for c in COLUMNS})


def test_a_model_trained_by_hand_has_the_lineage_of_p_train_and_serves_its_own_outputs(platform, rows):
    needs_triton(platform)
    entity_df, frame = rows
    model = LogisticRegression().fit(frame[COLUMNS], frame["completed"])
    logged = platform.models.log(model, "byo_lr", features=FEATURES, entity_df=entity_df, target="completed",
                                 metrics={"business_value": 3.5})
    trained = platform.train("sklearn.linear_model.LogisticRegression", features=FEATURES, entity_df=entity_df,
                             target="completed", name="byo_trained")
    assert logged.version == "1" and logged.training_set_fingerprint == trained.training_set_fingerprint
    assert logged.metrics["business_value"] == 3.5 and 0 < logged.metrics["roc_auc"] <= 1
    with tracking.session(platform.settings) as client:
        mine, theirs = (client.get_run(r.run_id).data.tags for r in (logged, trained))
    assert {k: mine[k] for k in LINEAGE_TAGS} == {k: theirs[k] for k in LINEAGE_TAGS}
    assert mine["mlplat.runtime"] == "onnx"
    lineage = str(platform.lineage("byo_lr", 1))
    assert "driver_stats" in lineage and logged.training_set_fingerprint[:16] in lineage
    # the training set itself, as p.features gave it, is the same training set
    given = platform.models.log(model, "byo_lr", features=FEATURES, training_set=frame, target="completed")
    assert given.training_set_fingerprint == trained.training_set_fingerprint and given.version == "2"

    platform.models.promote("byo_lr", "1")
    deployment = platform.deploy("byo_lr")  # its logged export, checked against the recorded outputs
    assert (deployment.status, deployment.runtime) == ("READY", "onnx")
    prediction = platform.predict("byo_lr", ROWS)
    np.testing.assert_allclose(prediction.outputs, model.predict_proba(online_rows(platform)), atol=1e-5)


def test_the_gate_refuses_a_model_below_its_bar(platform, rows):
    entity_df, frame = rows
    model = LogisticRegression().fit(frame[COLUMNS], frame["completed"])
    result = platform.models.log(model, "byo_gated", features=FEATURES, entity_df=entity_df, target="completed",
                                 validation={"metric": "roc_auc", "min": 1.01})
    assert result.version is None and "below the required minimum" in result.rejected
    with pytest.raises(ModelNotFound):
        platform.models.versions("byo_gated")


def test_bad_input_is_refused_before_anything_is_registered(platform, rows):
    entity_df, frame = rows
    model = LogisticRegression().fit(frame[COLUMNS], frame["completed"])
    three = LogisticRegression().fit(np.c_[frame[COLUMNS], frame[COLUMNS[:1]]], frame["completed"])
    tampered = frame.copy()
    tampered.loc[3, "rating"] += 1.0
    cases = [
        (FeatureNotFound, dict(model=model, features=["driver_stats:nope"], entity_df=entity_df)),
        (MissingColumnError, dict(model=model, features=FEATURES, training_set=frame.drop(columns=["rating"]))),
        (InvalidArgument, dict(model={"weights": [1, 2]}, features=FEATURES, entity_df=entity_df)),
        (InvalidArgument, dict(model=LogisticRegression, features=FEATURES, entity_df=entity_df)),
        (TrainingSetMismatch, dict(model=model, features=FEATURES, training_set=tampered)),
        (InvalidArgument, dict(model=three, features=FEATURES, entity_df=entity_df)),
        (InvalidArgument, dict(model=model, features=FEATURES, entity_df=entity_df, training_set=frame)),
    ]
    for error, options in cases:
        with pytest.raises(error) as raised:
            platform.models.log(options.pop("model"), "byo_bad", target="completed", **options)
        assert isinstance(raised.value, MlplatError) and str(raised.value)
    with pytest.raises(ModelNotFound):
        platform.models.versions("byo_bad")


def test_a_model_onnx_cannot_express_is_served_by_its_pyfunc_and_its_killed_worker_comes_back(platform, rows):
    needs_triton(platform)
    entity_df, frame = rows
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(frame[COLUMNS], frame["completed"])
    logged = platform.models.log(model, "byo_log1p", features=FEATURES, entity_df=entity_df, target="completed")
    with tracking.session(platform.settings) as client:
        assert client.get_run(logged.run_id).data.tags["mlplat.runtime"] == "pyfunc"
    platform.models.promote("byo_log1p")
    deployment = platform.deploy("byo_log1p")
    assert (deployment.status, deployment.runtime) == ("READY", "pyfunc (slower)")
    native = model.predict_proba(online_rows(platform))
    np.testing.assert_allclose(platform.predict("byo_log1p", ROWS).outputs, native, atol=1e-5)
    assert {d.name: d.runtime for d in platform.deployments()}["byo_log1p"] == "pyfunc (slower)"
    np.testing.assert_allclose(by_id(deployment.endpoint, "byo_log1p"), native, atol=1e-5)  # ids only, any client
    history = platform.models.history("byo_log1p")
    assert [e.detail["runtime"] for e in history if e.action in ("logged", "deployed")] == ["pyfunc", "pyfunc (slower)"]

    folder = platform.serving_target.models / "byo_log1p" / logged.version
    pid_file, spare_file = folder / "worker.pid", folder / "spare.pid"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (spare_file.exists() and  # the spare worker has loaded the model
                                               spare_file.read_text() != pid_file.read_text()):
        time.sleep(0.1)
    killed, spare = int(pid_file.read_text()), int(spare_file.read_text())
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    np.testing.assert_allclose(platform.predict("byo_log1p", ROWS).outputs, native, atol=1e-5)  # the spare answers
    assert int(pid_file.read_text()) == spare != killed

    # promotion scores both versions on the shared holdout, each in a worker of its own (never in this process)
    again = platform.models.log(model, "byo_log1p", features=FEATURES, entity_df=entity_df, target="completed")
    promoted = platform.models.promote("byo_log1p", again.version, margin=-1.0)
    assert promoted.challenger_score == pytest.approx(promoted.champion_score) and promoted.champion_score > 0


def by_id(grpc, model):
    """What any gRPC client gets from ``<model>_by_id`` for ROWS, sending entity ids only."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("driver_id", [len(ROWS), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([str(r["driver_id"]).encode() for r in ROWS], dtype=object).reshape(-1, 1))
    client = grpcclient.InferenceServerClient(grpc)
    try:
        return client.infer(f"{model}_by_id", [tensor]).as_numpy("probabilities")
    finally:
        client.close()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
