"""Dask compute: a real LocalCluster here; the Kubernetes spec through dask-kubernetes' own objects and CRD."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mlplat.config import load_settings
from mlplat.errors import ConfigError, InvalidArgument, MissingDependency, ServiceError
from mlplat.services import free_port
from mlplat.training.cluster import KubernetesSettings, cluster_spec, compute

GPU_SETTINGS = {
    "name": "train-gpu",
    "image": "ghcr.io/dask/dask:latest",
    "namespace": "ml",
    "workers": 3,
    "cpu": 4,
    "memory": "16Gi",
    "gpu": 1,
    "node_selector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "adapt_min": 0,
    "adapt_max": 8,
    "env": {"EXTRA_PIP_PACKAGES": "xgboost"},
}


@functools.cache
def _crd_schema() -> dict:
    """The openAPIV3Schema of the DaskCluster CRD that ships with dask-kubernetes' operator chart."""
    import dask_kubernetes
    import yaml

    chart = Path(dask_kubernetes.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator"
    crd = yaml.safe_load((chart / "crds/daskcluster.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _check_against_crd(spec: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(spec, _crd_schema())


def test_importing_the_module_loads_no_dask():
    code = ("import sys, mlplat.training.cluster; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed', 'dask_kubernetes', "
            "'kr8s', 'kubernetes', 'httpx'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_local_cluster_runs_a_task_shows_its_dashboard_and_closes():
    from distributed.system import MEMORY_LIMIT

    with compute(load_settings(), workers=2, threads=1) as c:
        assert c.kind == "local"
        assert c.client.submit(sum, [1, 2]).result() == 3
        link = c.dashboard_link
        assert link.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(link, timeout=10) as response:  # the dashboard, or bokeh's install hint
            assert response.status == 200
        assert link in repr(c)
        page = c._repr_html_()
        assert f'href="{link}"' in page
        for row, value in [("kind", "local"), ("workers", "2"), ("threads", "2"), ("memory", "GiB")]:
            assert re.search(f">{row}</th><td[^>]*>[^<]*{value}</td>", page), row
        workers = c.client.scheduler_info(n_workers=-1)["workers"].values()
        assert [w["nthreads"] for w in workers] == [1, 1]
        assert [w["memory_limit"] for w in workers] == [MEMORY_LIMIT // 2] * 2  # the machine's memory, split
    assert c.client.status == "closed"
    assert c.cluster.status.name == "closed"
    assert "closed" in c._repr_html_()


def test_local_cluster_rejects_unknown_options_before_starting():
    with pytest.raises(InvalidArgument, match="did you mean 'workers'"):
        compute(load_settings(), worker=2)
    with pytest.raises(InvalidArgument, match="threads must be a whole number >= 1"):
        compute(load_settings(), threads=0)


def test_gpu_spec_is_a_valid_daskcluster_with_worker_resources():
    from dask_kubernetes.operator._objects import DaskCluster

    k = KubernetesSettings.from_mapping(load_settings(kubernetes=GPU_SETTINGS).kubernetes)
    spec = cluster_spec(k)
    _check_against_crd(spec)
    cluster = DaskCluster(spec)  # dask-kubernetes' own kr8s object; builds without a server
    assert (cluster.kind, cluster.version, cluster.name) == ("DaskCluster", "kubernetes.dask.org/v1", "train-gpu")
    assert cluster.replicas == 3  # read through the object's own scalable spec, worker.replicas
    worker_pod = cluster.spec.worker.spec
    (worker,) = worker_pod.containers
    assert worker.image == "ghcr.io/dask/dask:latest"
    assert worker.resources.limits == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert worker.resources.requests == {"cpu": "4", "memory": "16Gi"}
    assert worker.args[:3] == ["dask-worker", "--resources", "GPU=1"]
    assert {"name": "EXTRA_PIP_PACKAGES", "value": "xgboost"} in worker.env
    assert worker_pod.nodeSelector == {"nvidia.com/gpu.present": "true"}
    assert worker_pod.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    scheduler_pod = cluster.spec.scheduler.spec
    (scheduler,) = scheduler_pod.containers
    assert "nvidia.com/gpu" not in scheduler.resources.limits
    assert "nodeSelector" not in scheduler_pod and "tolerations" not in scheduler_pod
    assert cluster.spec.scheduler.service.selector["dask.org/cluster-name"] == "train-gpu"
    assert (k.adapt_min, k.adapt_max) == (0, 8)


def test_cpu_spec_has_no_gpu_and_defaults():
    k = KubernetesSettings.from_mapping({"image": "ghcr.io/dask/dask:latest"})
    assert (k.name, k.namespace, k.workers, k.cpu, k.memory, k.gpu, k.adapt_max) == (
        "mlplat", "default", 2, "1", "4Gi", 0, None)
    spec = cluster_spec(k)
    _check_against_crd(spec)
    worker_pod = spec["spec"]["worker"]["spec"]
    worker = worker_pod["containers"][0]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]
    assert "--resources" not in worker["args"]
    assert "nodeSelector" not in worker_pod and "tolerations" not in worker_pod
    assert spec["spec"]["worker"]["replicas"] == 2


def test_kubernetes_settings_from_environment_yaml(monkeypatch):
    monkeypatch.setenv("MLPLAT_KUBERNETES", "{image: 'ghcr.io/dask/dask:latest', gpu: 2, memory: 8Gi}")
    k = KubernetesSettings.from_mapping(load_settings().kubernetes)
    limits = cluster_spec(k)["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "1", "memory": "8Gi", "nvidia.com/gpu": "2"}


@pytest.mark.parametrize("change, message", [
    ({"namspace": "ml"}, r"Unknown key 'namspace' in the kubernetes settings; did you mean 'namespace'\?"),
    ({"image": None}, "kubernetes.image is required"),
    ({"adapt_min": 4, "adapt_max": 2}, "adapt_max=2 is below kubernetes.adapt_min=4"),
    ({"adapt_min": 1, "adapt_max": None}, "adapt_min needs kubernetes.adapt_max"),
    ({"adapt_min": -1, "adapt_max": 2}, "adapt_min must be a whole number >= 0"),
    ({"gpu": "1"}, r"kubernetes.gpu must be a whole number >= 0, got '1'"),
    ({"gpu": True}, "kubernetes.gpu must be a whole number"),
    ({"workers": 1.5}, "kubernetes.workers must be a whole number"),
    ({"memory": "4GB"}, "'4Gi' or '512Mi'"),
    ({"memory": 4}, "memory=4 is not a Kubernetes quantity"),
    ({"cpu": "two"}, "'2' or '500m'"),
    ({"node_selector": {"gpu": True}}, "node_selector must map names to strings"),
    ({"env": ["A=1"]}, "env must map names to strings"),
    ({"tolerations": {"key": "x"}}, "tolerations must be a list of mappings"),
    ({"tolerations": [{"key": "x", "efect": "NoSchedule"}]}, "did you mean 'effect'"),
    ({"namespace": ""}, "kubernetes.namespace must be a non-empty string"),
])
def test_bad_kubernetes_settings_say_what_to_fix(change, message):
    with pytest.raises(ConfigError, match=message):
        KubernetesSettings.from_mapping({**GPU_SETTINGS, **change})


def test_invalid_cluster_name_is_refused_with_dask_kubernetes_rule():
    k = KubernetesSettings.from_mapping({**GPU_SETTINGS, "name": "My_Cluster"})
    with pytest.raises(ConfigError, match="kubernetes.name='My_Cluster'.*RFC 1123"):
        cluster_spec(k)


def test_compute_overrides_are_checked_against_the_kubernetes_keys():
    settings = load_settings(kubernetes=GPU_SETTINGS)
    with pytest.raises(ConfigError, match="did you mean 'gpu'"):
        compute(settings, gpus=2)


def test_unreachable_kubernetes_api_is_a_service_error(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: gone, cluster: {{server: "https://127.0.0.1:{free_port()}"}}}}]
users: [{{name: me, user: {{token: not-a-secret}}}}]
contexts: [{{name: gone, context: {{cluster: gone, user: me, namespace: ml}}}}]
current-context: gone
""")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(ServiceError, match="Cannot reach the Kubernetes API.*kubectl cluster-info"):
        compute(load_settings(kubernetes=GPU_SETTINGS))


def test_missing_dask_kubernetes_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)  # as if it were not installed
    with pytest.raises(MissingDependency, match=r"pip install 'mlplat\[kubernetes\]'"):
        cluster_spec(KubernetesSettings.from_mapping(GPU_SETTINGS))
