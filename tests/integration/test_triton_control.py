"""Model control of the embedded Triton is the platform's alone: a client without the install's secret cannot load
(its own config and model.py), unload or list models, over gRPC or HTTP, as root or as another account; inference,
health, metadata and statistics stay open; deploys, undeploys and restarts go on. Real tritonserver throughout."""

import json
import os
import shutil
import signal
import stat
import subprocess
import time
import uuid

import numpy as np
import pytest
from faults import wait_for
from platforms import serving_platform

import mlplat
from mlplat import services
from mlplat.errors import ServingError
from mlplat.services import free_port
from mlplat.serving.target import CONTROL_HEADER, GRPC_CONTROL_HEADER, answers
from mlplat.serving.triton import TritonService, control_secret

NAME = "guarded"
ROWS = [{"driver_id": d} for d in (1, 2, 3)]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
# A model of the caller's choosing: its model.py would run inside Triton's process tree if it were loaded.
EVIL_CONFIG = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0,
                          "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
                          "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]})


def evil_code(marker) -> bytes:
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n").encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    """A platform with its own embedded Triton, serving one model; and that model's outputs for ROWS."""
    with serving_platform(tmp_path_factory.mktemp("control"), NAME, ROWS, redis_url, n_estimators=5) as served:
        yield served


def triton(p):
    """(state, a gRPC client sending no secret) of the platform's running Triton."""
    import tritonclient.grpc as grpcclient

    state = TritonService(p.settings).ensure()
    return state, grpcclient.InferenceServerClient(state.url)


def refused(call, *args, **kwargs) -> str:
    """The message of Triton's refusal of ``call``; fails the test if Triton did it."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as refusal:
        call(*args, **kwargs)
    return refusal.value.message()


def test_the_secret_is_made_once_per_install_and_only_its_owner_reads_it(served):
    p, _ = served
    path = p.settings.run_dir / "triton.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = control_secret(p.settings)
    assert len(secret) >= 40 and path.read_text() == secret
    assert control_secret(mlplat.config.load_settings(home=str(p.settings.home))) == secret  # kept, not remade
    assert secret not in TritonService(p.settings).log_file.read_text()


def test_a_client_without_the_secret_cannot_load_unload_or_list_models(served, tmp_path):
    p, expected = served
    state, client = triton(p)
    marker = tmp_path / "ran"
    try:
        for headers in (None, {GRPC_CONTROL_HEADER: "not-the-secret"}):
            assert "restricted" in refused(client.load_model, "evil", headers=headers, config=EVIL_CONFIG,
                                           files={"file:1/model.py": evil_code(marker)})
            assert "restricted" in refused(client.unload_model, NAME, headers=headers)
            assert "restricted" in refused(client.get_model_repository_index, headers=headers)
            assert "restricted" in refused(client.update_log_settings, {"log_verbose_level": 1}, headers=headers)
        time.sleep(0.5)
        assert not marker.exists() and not client.is_model_ready("evil")
        assert client.is_model_ready(NAME)
        # what any client needs stays open: health, metadata, statistics, inference
        assert client.is_server_ready() and client.get_model_metadata(NAME).name == NAME
        assert client.get_inference_statistics(NAME).model_stats
        tensor = _by_id_input(ROWS)
        assert client.infer(f"{NAME}_by_id", [tensor]).as_numpy("probabilities").shape[0] == len(ROWS)
    finally:
        client.close()
    np.testing.assert_allclose(p.predict(NAME, ROWS).outputs, expected, rtol=1e-6)
    assert TritonService(p.settings).status().pid == state.pid


def test_an_over_long_file_name_without_the_secret_is_refused_and_triton_stays_up(served):
    p, expected = served
    state, client = triton(p)
    try:
        assert "restricted" in refused(client.load_model, "long", config=EVIL_CONFIG,
                                       files={"file:1/" + "a" * 100_000: b"x"})
    finally:
        client.close()
    time.sleep(1.0)
    assert answers(state.url) and TritonService(p.settings).status().pid == state.pid
    np.testing.assert_allclose(p.predict(NAME, ROWS).outputs, expected, rtol=1e-6)


def test_the_http_api_refuses_model_control_without_the_secret_and_serves_the_rest(served):
    import httpx

    p, _ = served
    state = TritonService(p.settings).ensure()
    http = f"http://127.0.0.1:{state.ports['http']}"
    assert httpx.post(f"{http}/v2/repository/index").status_code == 403
    assert httpx.post(f"{http}/v2/repository/models/{NAME}/unload").status_code == 403
    assert httpx.post(f"{http}/v2/repository/index",
                      headers={CONTROL_HEADER: control_secret(p.settings)}).status_code == 200
    assert httpx.get(f"{http}/v2/health/ready").status_code == 200
    assert httpx.get(f"{http}/v2/models/{NAME}").status_code == 200


UNPRIVILEGED_CLIENT = """
import base64, json, sys, urllib.error, urllib.request
http, name, config, secret_file = sys.argv[1:5]
def post(path, body):
    request = urllib.request.Request(http + path, data=json.dumps(body).encode(), method="POST")
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code
code = b"import os\\nos.system('touch /tmp/pwned')\\nclass TritonPythonModel:\\n    pass\\n"
load = {"parameters": {"config": config, "file:1/model.py": base64.b64encode(code).decode()}}
try:
    open(secret_file).read()
    secret = "read"
except PermissionError:
    secret = "denied"
print(json.dumps({"load": post("/v2/repository/models/evil/load", load),
                  "unload": post(f"/v2/repository/models/{name}/unload", {}),
                  "index": post("/v2/repository/index", {}),
                  "ready": urllib.request.urlopen(http + "/v2/health/ready", timeout=10).status,
                  "metadata": urllib.request.urlopen(f"{http}/v2/models/{name}", timeout=10).status,
                  "secret": secret}))
"""


def test_another_account_cannot_control_models_nor_read_the_secret(served):
    """Run as nobody (uid 65534) with Debian's python3 over HTTP: the venv's interpreter lives under /root (0700)
    and nobody cannot run it, so the gRPC refusal is checked from this process (the tests above)."""
    p, expected = served
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root (to drop to uid 65534) and /usr/bin/python3")
    state = TritonService(p.settings).ensure()
    out = subprocess.run([*NOBODY, "/usr/bin/python3", "-c", UNPRIVILEGED_CLIENT,
                          f"http://127.0.0.1:{state.ports['http']}", NAME, EVIL_CONFIG,
                          str(p.settings.run_dir / "triton.secret")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen == {"load": 403, "unload": 403, "index": 403, "ready": 200, "metadata": 200, "secret": "denied"}
    # nor in Triton's command line, which every account may read (masked by the preloaded hide_secret library)
    if shutil.which("cc") or shutil.which("gcc"):
        cmdline = subprocess.run([*NOBODY, "cat", f"/proc/{state.pid}/cmdline"], capture_output=True, check=True).stdout
        assert b"--grpc-restricted-protocol=" in cmdline and control_secret(p.settings).encode() not in cmdline
    assert TritonService(p.settings).status().pid == state.pid
    np.testing.assert_allclose(p.predict(NAME, ROWS).outputs, expected, rtol=1e-6)


def test_the_platform_deploys_undeploys_and_reloads_after_restarts(served):
    p, expected = served
    p.deploy(NAME)  # a redeploy: load with the secret
    p.undeploy(NAME)
    _, client = triton(p)
    try:
        wait_for(lambda: not client.is_model_ready(NAME), timeout=30, what="the undeployed model unloading")
    finally:
        client.close()
    p.deploy(NAME)
    os.kill(TritonService(p.settings).status().pid, signal.SIGKILL)  # restarted by the next predict, same secret
    np.testing.assert_allclose(p.predict(NAME, ROWS).outputs, expected, rtol=1e-6)
    services.down(p.settings)  # `mlplat down`, then `up`: the models come back
    services.up(p.settings, only=("triton",))
    state, client = triton(p)
    try:
        assert client.is_model_ready(NAME)
        assert "restricted" in refused(client.unload_model, NAME)
    finally:
        client.close()
    np.testing.assert_allclose(p.predict(NAME, ROWS).outputs, expected, rtol=1e-6)


def test_an_external_triton_with_restricted_control_needs_triton_control_secret(served, tmp_path):
    """A Triton its operator started with the header restriction: the platform's deploy works once it has the secret,
    and says which setting is missing otherwise."""
    p, expected = served
    builder = TritonService(p.settings)
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    secret = uuid.uuid4().hex
    with open(tmp_path / "triton.log", "wb") as log:
        process = subprocess.Popen(builder.server_command(tmp_path / "repository", **ports, secret=secret),
                                   env=builder.environment(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_for(lambda: answers(f"127.0.0.1:{ports['grpc']}"), timeout=60, what="the external Triton answering")
        where = {"home": str(p.settings.home), "online_store": p.settings.online_store,
                 "online_prefix": p.settings.online_prefix, "triton_url": f"grpc://127.0.0.1:{ports['grpc']}"}
        without = mlplat.connect(**where)
        try:
            with pytest.raises(ServingError, match="triton_control_secret"):
                without.deploy(NAME)
        finally:
            without.close()
        with_secret = mlplat.connect(**where, triton_control_secret=secret)
        try:
            with_secret.deploy(NAME)
            np.testing.assert_allclose(with_secret.predict(NAME, ROWS).outputs, expected, rtol=1e-6)
        finally:
            with_secret.close()
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _by_id_input(rows):
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("driver_id", [len(rows), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([str(r["driver_id"]).encode() for r in rows], dtype=object).reshape(-1, 1))
    return tensor



def test_an_emptied_secret_file_is_never_taken_as_no_secret(tmp_path):
    settings = mlplat.config.load_settings(home=str(tmp_path))
    made = control_secret(settings)
    assert control_secret(settings) == made and [p.name for p in settings.run_dir.iterdir()] == ["triton.secret"]
    (settings.run_dir / "triton.secret").write_text("")
    with pytest.raises(ServingError, match="is empty. Delete it"):
        TritonService(settings).control_headers()
