"""MLflow behind ``mlplat server``: a real server (uvicorn, in a thread) in front of a real ``mlflow server``.

alice edits team a, bob edits team b, root administers the platform. What users rely on: MLflow's own clients
(REST, ``MlflowClient``, the fluent API) work through the server with a token and nothing else; another team's
registered models and runs can be read but not changed; a missing or wrong token gets nowhere; a client on another
host (another process, another HOME, only the server's URL and a token) loads a registered model through the
served artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from servers import running_server

from mlplat.config import load_settings
from mlplat.identity import Identity
from mlplat.remote.platform import ServerModePlatform
from mlplat.server.authentication import LocalAuthenticator
from mlplat.server.mlflow_proxy import MlflowProxy, start_backing
from mlplat.server.permissions import Ownership
from mlplat.training.fingerprint import frame_fingerprint

PEOPLE = {"alice-token": Identity("alice", {"a": "editor"}), "bob-token": Identity("bob", {"b": "editor"}),
          "root-token": Identity("root", admin=True)}
ROWS = pd.DataFrame({"x1": np.linspace(-2, 2, 40), "x2": np.cos(np.linspace(0, 6, 40))})


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_platform):
    """``(url, platform)``: the platform server with MLflow at ``url/mlflow``, as ``mlplat server`` runs it, on a
    platform holding the demo's features."""
    home = tmp_path_factory.mktemp("mlflow-server")
    tracking, backing = start_backing(load_settings(server_url="", home=str(home)))
    platform = demo_platform(home, drivers=30, customers=10, days=4, trips=400, seed=7, profiles=False,
                             server_url="", tracking=tracking)
    authenticator = LocalAuthenticator(PEOPLE)
    proxy = MlflowProxy(tracking, authenticator, Ownership(platform))
    try:
        with running_server(platform, authenticator, proxy.routes()) as url:
            yield url, platform
    finally:
        platform.close()
        if backing is not None:
            backing.stop()


def keep_mlflow_state(env: pytest.MonkeyPatch) -> None:
    """Put back, after the test, what MLflow's fluent API keeps process-wide (set_experiment sets both)."""
    import mlflow.tracking.fluent

    env.setenv("MLFLOW_EXPERIMENT_ID", "")  # remembered as unset, then unset for the test
    env.delenv("MLFLOW_EXPERIMENT_ID")
    env.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)


@pytest.fixture
def as_user(server, monkeypatch):
    """``as_user("bob")``: MLflow's fluent API and clients in this process act as bob, through the server."""
    url = f"{server[0]}/mlflow"
    keep_mlflow_state(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)

    def as_user(who: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", f"{who}-token")
        return MlflowClient(url, url)

    yield as_user
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.fixture(scope="module")
def bobs_model(server):
    """bob's experiment, run and registered model "bobs-model" (version 1), logged with the fluent API."""
    from sklearn.linear_model import LogisticRegression

    url = f"{server[0]}/mlflow"
    with pytest.MonkeyPatch.context() as env:
        keep_mlflow_state(env)
        env.setenv("MLFLOW_TRACKING_URI", url)
        env.setenv("MLFLOW_TRACKING_TOKEN", "bob-token")
        previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(url)
        mlflow.set_registry_uri(url)
        try:
            mlflow.set_experiment("bobs-experiment")
            model = LogisticRegression().fit(ROWS, (ROWS.x1 + ROWS.x2 > 0).astype(int))
            with mlflow.start_run() as run:
                mlflow.log_params({"C": 1.0, "max_iter": 100})
                mlflow.log_metric("accuracy", 0.9)
                logged = mlflow.sklearn.log_model(model, name="model", registered_model_name="bobs-model",
                                                  input_example=ROWS.head(3))
        finally:
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])
    return {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "model_uri": logged.model_uri,
            "predictions": model.predict_proba(ROWS)[:, 1].tolist()}


def test_every_mlflow_endpoint_that_changes_tracking_or_the_registry_has_a_rule():
    """An MLflow upgrade that adds such an endpoint fails here (until then it would be for admins alone)."""
    from mlflow.server.handlers import get_endpoints

    from mlplat.server.mlflow_proxy import rule_of

    kept = ("experiments/", "runs/", "registered-models/", "model-versions/", "logged-models", "mlflow-artifacts/")
    unjudged, judged = set(), set()
    for path, _, methods in get_endpoints():
        path = path.replace("<path:", "<").replace("<", "{").replace(">", "}")
        for method in set(methods) - {"GET", "HEAD"}:
            if any(part in path for part in kept) and "/2.0mlflow/" not in path:  # MLflow's own typo: no route
                try:
                    rule_of(method, path.removeprefix("/ajax-api").removeprefix("/api"))
                    judged.add(f"{method} {path.removeprefix('/ajax-api').removeprefix('/api')}")
                except PermissionError:
                    unjudged.add(f"{method} {path}")
    assert not unjudged and len(judged) > 40


def rest(server, method: str, endpoint: str, who: str | None = None, **body) -> httpx.Response:
    """One call of MLflow's REST API through the server, with ``who``'s token (None: none)."""
    headers = {"Authorization": f"Bearer {who}-token"} if who else {}
    url = f"{server[0]}/mlflow/api/2.0/mlflow/{endpoint}"
    if method == "GET":
        return httpx.get(url, params=body, headers=headers)
    return httpx.request(method, url, json=body, headers=headers)


def refused(call, message: str) -> str:
    """Run ``call`` (an MLflow client call); it must be refused with PERMISSION_DENIED saying ``message``."""
    with pytest.raises(MlflowException) as caught:
        call()
    assert caught.value.error_code == "PERMISSION_DENIED", caught.value
    assert message in caught.value.message, caught.value.message
    return caught.value.message


def test_a_request_without_a_valid_token_gets_nowhere(server, bobs_model):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic Ym9iOmJvYg=="}):
        answer = httpx.get(f"{server[0]}/mlflow/api/2.0/mlflow/registered-models/get", params={"name": "bobs-model"},
                           headers=headers)
        assert answer.status_code == 401 and answer.json()["error_code"] == "UNAUTHENTICATED"
    assert rest(server, "DELETE", "registered-models/delete", None, name="bobs-model").status_code == 401
    artifact = f"{server[0]}/mlflow/api/2.0/mlflow-artifacts/artifacts/{bobs_model['experiment_id']}/planted.txt"
    assert httpx.put(artifact, content=b"x").status_code == 401
    assert httpx.get(f"{server[0]}/mlflow/", headers={"Authorization": "token wrong"}).status_code == 401
    assert httpx.get(f"{server[0]}/mlflow/health").status_code == 200  # liveness needs no token
    assert rest(server, "GET", "registered-models/get", "bob", name="bobs-model").status_code == 200  # both forms
    answer = httpx.get(f"{server[0]}/mlflow/api/2.0/mlflow/registered-models/get", params={"name": "bobs-model"},
                       headers={"Authorization": "token bob-token"})
    assert answer.status_code == 200


def test_alice_reads_bobs_model_but_cannot_change_it(server, bobs_model, as_user):
    alice = as_user("alice")
    model = alice.get_registered_model("bobs-model")
    assert model.tags["mlplat.team"] == "b"  # the server put it in its creator's team
    assert [v.version for v in alice.search_model_versions("name='bobs-model'")] == ["1"]
    assert alice.get_run(bobs_model["run_id"]).data.params == {"C": "1.0", "max_iter": "100"}

    message = refused(lambda: alice.delete_registered_model("bobs-model"),
                      "alice may not delete model 'bobs-model' of team 'b'")
    assert "needs editor in 'b'" in message and "alice is not a member" in message
    refused(lambda: alice.rename_registered_model("bobs-model", "alices-now"), "may not rename model")
    refused(lambda: alice.set_registered_model_alias("bobs-model", "champion", "1"), "may not set an alias of")
    refused(lambda: alice.delete_model_version("bobs-model", "1"), "may not delete a version of")
    refused(lambda: alice.update_registered_model("bobs-model", "mine"), "may not update model")
    refused(lambda: alice.create_model_version("bobs-model", bobs_model["model_uri"]), "may not register a version")
    refused(lambda: alice.set_registered_model_tag("bobs-model", "mlplat.team", "a"),
            "alice may not transfer model 'bobs-model' of team 'b': that needs owner in 'b'")
    refused(lambda: alice.log_metric(bobs_model["run_id"], "accuracy", 1.0), "may not log to run")
    refused(lambda: alice.delete_run(bobs_model["run_id"]), "may not delete run")
    refused(lambda: alice.delete_experiment(bobs_model["experiment_id"]), "may not delete experiment")
    refused(lambda: alice.create_registered_model("for-b", tags={"mlplat.team": "b"}),
            "alice may not create model 'for-b' of team 'b'")

    # MLflow's REST API answers in its own error shape, with the same message
    answer = rest(server, "POST", "registered-models/rename", "alice", name="bobs-model", new_name="x")
    assert answer.status_code == 403 and set(answer.json()) == {"error_code", "message"}
    assert answer.json()["error_code"] == "PERMISSION_DENIED" and "rename model" in answer.json()["message"]
    answer = rest(server, "DELETE", "registered-models/alias", "alice", name="bobs-model", alias="challenger")
    assert answer.status_code == 403
    planted = httpx.put(f"{server[0]}/mlflow/api/2.0/mlflow-artifacts/artifacts/{bobs_model['experiment_id']}/x.txt",
                        content=b"planted", headers={"Authorization": "Bearer alice-token"})
    assert planted.status_code == 403 and "may not write experiment" in planted.json()["message"]
    assert alice.get_registered_model("bobs-model").aliases == {}  # nothing changed
    assert [v.version for v in alice.search_model_versions("name='bobs-model'")] == ["1"]


def test_bob_and_an_admin_change_bobs_models(server, bobs_model, as_user):
    bob = as_user("bob")
    bob.set_registered_model_alias("bobs-model", "champion", "1")
    bob.set_registered_model_tag("bobs-model", "stage", "trial")
    assert bob.get_model_version_by_alias("bobs-model", "champion").version == "1"
    assert bob.create_registered_model("bobs-other").tags == {"mlplat.team": "b"}
    bob.rename_registered_model("bobs-other", "bobs-renamed")
    assert bob.get_registered_model("bobs-renamed").tags["mlplat.team"] == "b"
    refused(lambda: bob.set_registered_model_tag("bobs-renamed", "mlplat.team", "a"),  # bob edits b, owns nothing
            "bob may not transfer model 'bobs-renamed' of team 'b': that needs owner in 'b'")
    root = as_user("root")
    root.set_registered_model_tag("bobs-renamed", "mlplat.team", "a")  # an admin transfers it
    assert server[1].models.team("bobs-renamed") == "a"  # the platform's registry sees the same team
    bob = as_user("bob")
    refused(lambda: bob.delete_registered_model("bobs-renamed"), "of team 'a'")
    as_user("alice").delete_registered_model("bobs-renamed")  # now alice's team's to delete
    bob = as_user("bob")
    for key in ("mlplat.artifact_sha256", "mlplat.artifact_manifest",  # only the platform pins model files...
                "mlplat.onnx_sha256", "mlplat.runtime"):  # ...their ONNX exports and how they are served
        refused(lambda key=key: bob.set_model_version_tag("bobs-model", "1", key, "0" * 64),
                "bob may not set the mlplat.artifact_* tags of model 'bobs-model'")
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found"):
        bob.get_registered_model("bobs-renamed")


def test_the_fluent_api_logs_a_run_through_the_server(server, as_user, tmp_path):
    alice = as_user("alice")
    experiment = mlflow.set_experiment("alice-experiment")
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"  # served, not file://
    assert experiment.tags["mlplat.team"] == "a"
    with mlflow.start_run() as run:
        mlflow.log_params({"n_estimators": 10, "max_depth": 3})
        mlflow.log_metrics({"roc_auc": 0.81})
        mlflow.set_tag("note", "through the server")
        mlflow.log_text("hello", "notes/hello.txt")
    found = alice.get_run(run.info.run_id)
    assert found.data.params == {"n_estimators": "10", "max_depth": "3"} and found.data.metrics == {"roc_auc": 0.81}
    assert found.info.user_id == "alice" and found.data.tags["mlflow.user"] == "alice"  # the token's user
    assert found.info.artifact_uri.startswith(f"mlflow-artifacts:/{experiment.experiment_id}/")
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/hello.txt") == "hello"
    stored = Path(load_settings(home=str(server[1].settings.home)).artifacts.removeprefix("file://"))
    assert (stored / experiment.experiment_id / run.info.run_id / "artifacts/notes/hello.txt").read_text() == "hello"

    # MLflow's Default experiment belongs to no team: only admins log there
    refused(lambda: mlflow.start_run(experiment_id="0"), "it belongs to no team, so only a platform admin may")
    # a new experiment cannot choose where its artifacts go: the served root decides
    made = alice.create_experiment("alice-elsewhere", artifact_location=(tmp_path / "x").as_uri())
    assert alice.get_experiment(made).artifact_location == f"mlflow-artifacts:/{made}"
    refused(lambda: as_user("bob").log_param(run.info.run_id, "C", "2"),
            "bob may not log to run")


def test_large_artifacts_stream_through(server, as_user, tmp_path):
    as_user("bob")
    mlflow.set_experiment("bobs-experiment")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(48 << 20))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(big), "data")
    back = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/data/big.bin",
                                                    dst_path=str(tmp_path / "back")))
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_a_client_elsewhere_loads_bobs_model_through_the_server(server, bobs_model, tmp_path):
    """Another process, another HOME and working folder, nothing but the server's URL and alice's token."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPLAT_", "MLFLOW_"))}
    env.update(HOME=str(elsewhere), MLFLOW_TRACKING_URI=f"{server[0]}/mlflow", MLFLOW_TRACKING_TOKEN="alice-token")
    script = ("import json, sys, mlflow, pandas as pd\n"
              "rows = pd.DataFrame(json.loads(sys.stdin.read()))\n"
              "model = mlflow.pyfunc.load_model('models:/bobs-model/1')\n"
              "print(json.dumps([float(v) for v in model.predict(rows)]))\n"
              "print(mlflow.MlflowClient().get_model_version_download_uri('bobs-model', '1'))\n")
    done = subprocess.run([sys.executable, "-c", script], input=ROWS.to_json(orient="columns"), env=env,
                          cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions, where = done.stdout.strip().splitlines()[-2:]
    assert where.startswith("mlflow-artifacts:/")  # served by the platform server, not a path on its disk
    assert np.asarray(json.loads(predictions)).tolist() == \
        (np.asarray(bobs_model["predictions"]) > 0.5).astype(int).tolist()
    assert not (elsewhere / "mlruns").exists()

    env["MLFLOW_TRACKING_TOKEN"] = "wrong"
    done = subprocess.run([sys.executable, "-c", script], input=ROWS.to_json(orient="columns"), env=env,
                          cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "UNAUTHENTICATED" in done.stderr


def test_the_rules_judge_what_mlflow_will_do(server, bobs_model, as_user):
    """No way around the rules: MLflow reads a POST/DELETE's body alone, resolves no '..', and decodes the path."""
    alice = as_user("alice")
    mine = alice.create_experiment("alice-tricks")
    alice.create_registered_model("alices-model")
    assert alice.get_registered_model("alices-model").tags == {"mlplat.team": "a"}
    # a query naming her own model does not cover a body naming bob's
    answer = httpx.request("DELETE", f"{server[0]}/mlflow/api/2.0/mlflow/registered-models/delete",
                           params={"name": "alices-model"}, json={"name": "bobs-model"},
                           headers={"Authorization": "Bearer alice-token"})
    assert answer.status_code == 403
    # a path through her own experiment's folder into bob's
    theirs = bobs_model["experiment_id"]
    for path in (f"{mine}/%2E%2E/{theirs}/planted.txt", f"{mine}/%2e%2e%2f{theirs}/planted.txt",
                 f"{mine}/..%2F{theirs}/planted.txt"):
        answer = httpx.put(f"{server[0]}/mlflow/api/2.0/mlflow-artifacts/artifacts/{path}", content=b"planted",
                           headers={"Authorization": "Bearer alice-token"})
        assert answer.status_code in (400, 403), (path, answer.status_code, answer.text)
    stored = Path(server[1].settings.artifacts.removeprefix("file://"))
    assert not list(stored.rglob("planted.txt"))
    # a folder no experiment has yet: nobody but admins writes there
    answer = httpx.put(f"{server[0]}/mlflow/api/2.0/mlflow-artifacts/artifacts/999/planted.txt", content=b"x",
                       headers={"Authorization": "Bearer alice-token"})
    assert answer.status_code == 403 and "belongs to no team" in answer.json()["message"]
    # what the server decides is not the client's to say: a run's user
    answer = rest(server, "POST", "runs/create", "alice", experiment_id=mine, user_id="bob",
                  tags=[{"key": "mlflow.user", "value": "bob"}])
    run = alice.get_run(answer.json()["run"]["info"]["run_id"])
    assert (run.info.user_id, run.data.tags["mlflow.user"]) == ("alice", "alice")
    # parts of MLflow the server does not judge are for admins
    answer = rest(server, "POST", "webhooks", "alice", name="leak", url="http://example.com", events=[])
    assert answer.status_code == 403 and "only platform admins may" in answer.json()["message"]


def test_the_ui_logs_in_once_with_a_token(server):
    with httpx.Client(base_url=server[0]) as browser:
        assert browser.get("/mlflow/?token=wrong").status_code == 401
        answer = browser.get("/mlflow/?token=alice-token")
        assert answer.status_code == 303 and answer.headers["location"] == "/mlflow/"
        assert "httponly" in answer.headers["set-cookie"].lower() and "samesite=strict" in \
            answer.headers["set-cookie"].lower()
        page = browser.get("/mlflow/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        found = browser.post("/mlflow/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 10},
                             headers={"Origin": server[0]})
        assert found.status_code == 200 and "experiments" in found.json()
        elsewhere = browser.post("/mlflow/ajax-api/2.0/mlflow/experiments/create", json={"name": "csrf"},
                                 headers={"Origin": "http://evil.example"})
        assert elsewhere.status_code == 401


def test_a_private_model_is_kept_to_its_team(server, bobs_model, as_user):
    bob = as_user("bob")
    bob.create_registered_model("bobs-secret")
    bob.create_model_version("bobs-secret", bobs_model["model_uri"], run_id=bobs_model["run_id"],
                             model_id=bobs_model["model_uri"].removeprefix("models:/"))
    bob.set_registered_model_tag("bobs-secret", "mlplat.private", "true")  # as p.models.set_private does
    assert server[1].models.private("bobs-secret")
    alice = as_user("alice")
    refused(lambda: alice.get_registered_model("bobs-secret"),
            "alice may not read model 'bobs-secret' of team 'b': that needs viewer in 'b'")
    refused(lambda: alice.get_model_version("bobs-secret", "1"), "may not read model 'bobs-secret'")
    refused(lambda: alice.get_model_version_download_uri("bobs-secret", "1"), "may not read model 'bobs-secret'")
    assert "bobs-secret" not in {m.name for m in alice.search_registered_models()}
    assert "bobs-model" in {m.name for m in alice.search_registered_models()}
    assert not alice.search_model_versions("name='bobs-secret'")
    assert {v.name for v in alice.search_model_versions()} >= {"bobs-model"}
    for who in ("bob", "root"):
        assert {m.name for m in as_user(who).search_registered_models()} >= {"bobs-secret", "bobs-model"}
        assert as_user(who).get_model_version("bobs-secret", "1").version == "1"


@pytest.fixture
def alice_workspace(server, as_user):
    """alice's SDK in server mode (a workspace), on the server's stores; MLflow's API as alice, as a workspace's."""
    url, backend = server
    as_user("alice")
    alice = ServerModePlatform.open(token="alice-token", server_url=url, home=str(backend.settings.home),
                                    online_store=backend.settings.online_store,
                                    online_prefix=backend.settings.online_prefix)
    yield alice
    alice.close()


def train(alice, backend, name: str, register: bool):
    return alice.train("xgboost.XGBClassifier", entity_df=backend.labels, target="completed", name=name,
                       features=["driver_stats:rating", "driver_stats:acceptance_rate"], register=register,
                       params={"n_estimators": 10, "max_depth": 2})


def test_training_in_a_workspace_logs_to_the_servers_mlflow(server, alice_workspace):
    """p.train in server mode: the run, its model and artifacts go through the server, as the token's user."""
    url, backend = server
    assert alice_workspace.settings.tracking == f"{url}/mlflow"
    result = train(alice_workspace, backend, "alices-run", register=False)
    client = MlflowClient(f"{url}/mlflow", f"{url}/mlflow")
    run = client.get_run(result.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/") and run.info.user_id == "alice"
    assert run.data.params["n_estimators"] == "10" and run.data.params["mlplat.estimator"] == "xgboost.XGBClassifier"
    experiment = client.get_experiment(run.info.experiment_id)
    assert (experiment.name, experiment.tags["mlplat.team"]) == ("alices-run", "a")
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"
    model = mlflow.pyfunc.load_model(result.model_uri)  # through the server's artifacts
    assert model.metadata.run_id == result.run_id
    embedded = backend.features.get_training_set(backend.labels, result.features)  # the server joined this one
    columns = [*backend.labels.columns, "rating", "acceptance_rate"]
    assert result.training_set_fingerprint == frame_fingerprint(embedded[columns])


def test_a_model_trained_in_a_workspace_is_registered_through_the_server(server, alice_workspace, as_user):
    url, backend = server
    result = train(alice_workspace, backend, "alices-trained", register=True)
    assert result.version == "1"
    assert backend.models.team("alices-trained") == "a"
    refused(lambda: as_user("bob").delete_registered_model("alices-trained"),
            "bob may not delete model 'alices-trained' of team 'a'")


def test_what_mlflow_keeps_process_wide_is_put_back():
    """Runs after the tests above (pytest keeps the file's order): nothing of theirs reaches later tests' kernels."""
    import mlflow.tracking.fluent

    assert "MLFLOW_EXPERIMENT_ID" not in os.environ and mlflow.tracking.fluent._active_experiment_id is None
