"""An external Triton: a tritonserver this test starts itself, which the platform is given by URL and never
starts or stops; models reach it over its model-repository gRPC API or through a folder it serves."""

import os
import signal
import subprocess
import uuid

import numpy as np
import pytest
from click.testing import CliRunner
from faults import wait_for
from triton_calls import executions

import mlplat
from mlplat.cli import main as cli
from mlplat.config import load_settings
from mlplat.demo import customer, customer_profile, driver, driver_stats, make_dataset
from mlplat.errors import ConfigError, ServingError
from mlplat.services import embedded_services, free_port
from mlplat.serving.target import answers
from mlplat.serving.triton import TritonService, triton_installed

FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate", "customer_profile:avg_fare"]
ROWS = [{"driver_id": 1, "customer_id": 5}, {"driver_id": 2, "customer_id": 7}, {"driver_id": 999, "customer_id": 1}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A second tritonserver with explicit model control, started here as its operator would start it."""
    home = tmp_path_factory.mktemp("external-triton")
    builder = TritonService(load_settings(home=str(home)))  # only for the argv, backends and environment
    if not triton_installed(builder.settings):
        pytest.skip(f"no Triton in {builder.settings.triton_env}: `make triton` creates it")
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    repository = home / "repository"
    with open(home / "triton.log", "wb") as log:
        process = subprocess.Popen(builder.server_command(repository, **ports), env=builder.environment(),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: answers(f"127.0.0.1:{ports['grpc']}"), timeout=60, what="the external Triton answering")
    yield {"process": process, "repository": repository, **ports}
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def settings(tmp_path_factory, redis_url, server):
    """A platform's settings naming the external Triton (models sent over gRPC)."""
    return {"home": str(tmp_path_factory.mktemp("platform")), "online_store": redis_url,
            "online_prefix": f"ext{uuid.uuid4().hex[:8]}", "triton_url": f"grpc://127.0.0.1:{server['grpc']}",
            "triton_http_url": f"http://127.0.0.1:{server['http']}",
            "triton_metrics_url": f"http://127.0.0.1:{server['metrics']}/metrics"}


@pytest.fixture(scope="module")
def platform(settings):
    p = mlplat.connect(**settings)
    stats, profiles, labels = make_dataset(drivers=50, customers=20, days=3, trips=600, seed=5)
    p.features.apply([driver, customer, driver_stats, customer_profile])
    p.features.ingest("driver_stats", stats)
    p.features.ingest("customer_profile", profiles)
    p.features.materialize()
    p.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed", name="ext",
            params={"n_estimators": 10})
    p.models.promote("ext")
    yield p
    p.close()


def by_id(grpc: str, model: str) -> np.ndarray:
    """What any gRPC client gets from ``<model>_by_id`` for ROWS, sending entity ids only."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for key in ("driver_id", "customer_id"):
        tensor = grpcclient.InferInput(key, [len(ROWS), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([str(r[key]).encode() for r in ROWS], dtype=object).reshape(-1, 1))
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(grpc)
    try:
        before = executions(client, model)
        found = client.infer(f"{model}_by_id", inputs).as_numpy("probabilities")
        # A Triton given by URL may run ONNX on its native backend (a GPU): by_id calls the model through it.
        assert executions(client, model)[0] == before[0] + 1
        return found
    finally:
        client.close()


def test_deploy_sends_the_model_over_grpc_and_predict_uses_it(platform, server):
    deployment = platform.deploy("ext")
    grpc = f"127.0.0.1:{server['grpc']}"
    assert (deployment.status, deployment.endpoint, deployment.http_endpoint) == ("READY", grpc,
                                                                                f"127.0.0.1:{server['http']}")
    assert not (server["repository"] / "ext").exists()  # sent with load_model, not written where Triton reads
    prediction = platform.predict("ext", ROWS)
    assert prediction.version == deployment.version and prediction.outputs.shape == (3, 2)
    np.testing.assert_allclose(by_id(grpc, "ext"), prediction.outputs, atol=1e-6)
    assert [(d.name, d.status, d.endpoint) for d in platform.deployments()] == [("ext", "READY", grpc)]
    assert TritonService(platform.settings).status() is None  # no embedded Triton was started


def test_deploy_through_a_repository_the_server_reads(platform, server, settings):
    shared = mlplat.connect(**settings, triton_repository=str(server["repository"]))
    try:
        deployment = shared.deploy("ext")
        assert deployment.status == "READY"
        assert (server["repository"] / "ext" / deployment.version / "model.onnx").is_file()
        np.testing.assert_allclose(shared.predict("ext", ROWS).outputs, platform.predict("ext", ROWS).outputs,
                                   atol=1e-6)
    finally:
        shared.close()


def test_status_shows_it_as_external_and_down_leaves_it_running(platform, server, settings, monkeypatch):
    for key, value in settings.items():
        monkeypatch.setenv(f"MLPLAT_{key.upper()}", value)
    runner = CliRunner()
    status = runner.invoke(cli, ["status"]).output
    assert f"triton   external  grpc://127.0.0.1:{server['grpc']}  http://127.0.0.1:{server['http']}" in status
    assert platform.status().endpoints["triton"].startswith(f"external grpc://127.0.0.1:{server['grpc']}")
    assert "triton" not in [s.name for s in embedded_services(platform.settings)]  # what `mlplat up` starts
    runner.invoke(cli, ["down"], catch_exceptions=False)
    assert server["process"].poll() is None and answers(f"127.0.0.1:{server['grpc']}")
    assert platform.predict("ext", ROWS).outputs.shape == (3, 2)


def test_a_triton_that_does_not_answer_is_named_with_the_fix(tmp_path, redis_url):
    p = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, triton_url=f"grpc://127.0.0.1:{free_port()}")
    with pytest.raises(ServingError, match="does not answer.*point triton_url at one that runs"):
        p.deployments()
    p.close()


def test_external_triton_settings_need_an_external_triton(tmp_path):
    with pytest.raises(ConfigError, match="triton_http_url describes an external Triton"):
        load_settings(home=str(tmp_path), triton_http_url="http://127.0.0.1:8000")
    with pytest.raises(ConfigError, match="triton_url='http://x:8001' is not a supported URL"):
        load_settings(home=str(tmp_path), triton_url="http://x:8001")
