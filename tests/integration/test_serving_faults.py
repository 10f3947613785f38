"""Serving survives its faults: Triton killed, hung (SIGSTOP) or stopped, Redis moved; real processes throughout.

One Triton and one embedded Redis for the module, one deployed model: each restart reloads it in about a second.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from faults import take_the_port_of_redis
from platforms import serving_platform

from mlplat import services
from mlplat.cli import main as cli
from mlplat.features.redis_service import RedisService
from mlplat.serving.triton import TritonService

NAME = "faulty"
ROWS = [{"driver_id": d} for d in (1, 2, 3)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A platform with its own embedded Redis (which the tests kill) and Triton, serving one model; and that model's
    outputs for ROWS."""
    with serving_platform(tmp_path_factory.mktemp("faults"), NAME, ROWS) as served:
        yield served


def by_id(p, ids):
    """What Triton's ``<model>_by_id`` answers for these driver ids, called as any gRPC client would."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("driver_id", [len(ids), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([str(i).encode() for i in ids], dtype=object).reshape(-1, 1))
    client = grpcclient.InferenceServerClient(TritonService(p.settings).ensure().url)
    try:
        return client.infer(f"{NAME}_by_id", [tensor]).as_numpy("probabilities")
    finally:
        client.close()


def test_a_new_process_predicts_after_triton_was_killed(served):
    p, expected = served
    killed = TritonService(p.settings).status()
    os.kill(killed.pid, signal.SIGKILL)
    code = (f"import json, mlplat; p = mlplat.connect(home={str(p.settings.home)!r}); "
            f"print(json.dumps(p.predict({NAME!r}, {ROWS!r}).outputs.tolist()))")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    print(f"\ntriton SIGKILL: a new process predicted after {time.monotonic() - started:.2f} s (Python start included)")
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(json.loads(done.stdout.splitlines()[-1]), expected, atol=1e-6)
    again = TritonService(p.settings).status()
    assert again.pid != killed.pid and (again.port, again.ports) == (killed.port, killed.ports)


def test_a_hung_triton_is_replaced_and_the_calls_succeed(served):
    p, expected = served
    p.predict(NAME, ROWS)  # this handle's channel is open to the server that now hangs
    hung = TritonService(p.settings).status()
    os.kill(hung.pid, signal.SIGSTOP)
    while open(f"/proc/{hung.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":  # the signal takes effect
        time.sleep(0.01)
    try:
        assert TritonService(p.settings).health().summary == "UNHEALTHY (not answering)"  # as `mlplat status` says
        started = time.monotonic()
        # Eight threads at once: one sends, the others wait behind its coalesced batch, then go out together.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda row: p.predict(NAME, [row]), ROWS * (8 // len(ROWS) + 1)))
        took = time.monotonic() - started
    finally:
        if services._pid_alive(hung.pid):
            os.kill(hung.pid, signal.SIGCONT)
    print(f"\ntriton SIGSTOP: the calls returned after {took:.2f} s (10 s of it the request's deadline)")
    for index, answer in enumerate(answers):
        np.testing.assert_allclose(answer.outputs, expected[index % len(ROWS):index % len(ROWS) + 1], atol=1e-6)
    assert took < 40 and not services._pid_alive(hung.pid)
    assert TritonService(p.settings).status().port == hung.port


def test_down_and_up_serve_the_deployed_models_again_where_they_were(served, monkeypatch):
    p, expected = served
    before = TritonService(p.settings).status()
    assert TritonService(p.settings).stop()
    started = time.monotonic()
    (again,) = services.up(p.settings, only=("triton",))
    print(f"\ntriton down/up: serving again after {time.monotonic() - started:.2f} s")
    assert (again.port, again.ports) == (before.port, before.ports)
    np.testing.assert_allclose(p.predict(NAME, ROWS).outputs, expected, atol=1e-6)
    np.testing.assert_allclose(by_id(p, [1, 2, 3]), expected, atol=1e-6)
    [live] = p.deployments()
    assert live.http_endpoint == f"127.0.0.1:{again.ports['http']}"
    with urllib.request.urlopen(f"http://{live.http_endpoint}/v2/models/{NAME}/ready", timeout=5) as answer:
        assert answer.status == 200
    monkeypatch.setenv("MLPLAT_HOME", str(p.settings.home))
    shown = CliRunner().invoke(cli, ["status"]).output
    assert f"triton   running  pid {again.pid}  127.0.0.1:{again.port}  http 127.0.0.1:{again.ports['http']}" in shown


def test_the_by_id_model_follows_redis_to_a_new_port(served):
    p, expected = served
    with socket.socket() as squatter:
        killed = take_the_port_of_redis(p.settings, squatter)
        p.features.online.client.ping()  # this handle restarts Redis, elsewhere
        assert RedisService(p.settings).status().port != killed.port
        np.testing.assert_allclose(by_id(p, [1, 2, 3]), expected, atol=1e-6)
        np.testing.assert_allclose(p.predict(NAME, ROWS).outputs, expected, atol=1e-6)

