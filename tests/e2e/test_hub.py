"""Workspaces: a real JupyterHub with CPU/GPU profiles, teams, hub services; KubeSpawner pods rendered offline."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import types
from pathlib import Path

import psutil
import pytest
import requests
from click.testing import CliRunner
from hubs import PASSWORD, hub_environment, log_in, running_hub
from jupyter_client.kernelspec import KernelSpecManager
from jupyterhub.spawner import SimpleLocalProcessSpawner
from kubernetes_asyncio.client import ApiClient
from kubespawner import KubeSpawner
from tornado import web
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

import mlplat
from mlplat.cli import main
from mlplat.config import load_settings
from mlplat.errors import ConfigError, HubError
from mlplat_hub.config import configure_kubernetes
from mlplat_hub.options import HubOptions
from mlplat_hub.profiles import apply_profile
from mlplat_hub.workspaces import link_team_folders

HUB_DIR = Path(__file__).resolve().parents[2] / "hub"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One real hub for the module (local mode, free loopback ports); at the end, nothing it started survives."""
    with running_hub(tmp_path_factory.mktemp("hub-home")) as started:
        yield started


def test_hub_runs_the_culler_and_the_platform_services(hub):
    commands = [" ".join(p.cmdline()) for p in psutil.Process(hub.pid).children(recursive=True)]
    assert any("jupyterhub_idle_culler --timeout=3600" in c for c in commands)
    assert any("mlplat.cli scheduler" in c for c in commands)
    assert any("mlplat_hub.mlflow_ui" in c for c in commands)
    assert any("configurable-http-proxy" in c for c in commands)


def test_mlflow_ui_is_for_logged_in_users_only(hub):
    anonymous = requests.get(hub.url + "services/mlflow/", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and "/hub/api/oauth2/authorize" in anonymous.headers["Location"]

    browser = log_in(hub, "carol")
    deadline = time.monotonic() + 90  # MLflow starts behind the service in 10-20 s here
    while (page := browser.get(hub.url + "services/mlflow/", timeout=10)).status_code == 503:
        assert time.monotonic() < deadline, page.text
        time.sleep(0.5)
    assert page.status_code == 200 and "<title>MLflow</title>" in page.text

    create = hub.url + "services/mlflow/ajax-api/2.0/mlflow/experiments/create"
    same_site = browser.post(create, json={"name": "from-the-ui"}, headers={"Sec-Fetch-Site": "same-origin",
                                                                             "Sec-Fetch-Mode": "cors"})
    assert same_site.status_code == 200 and same_site.json()["experiment_id"]
    other_site = browser.post(create, json={"name": "forged"}, headers={"Sec-Fetch-Site": "cross-site",
                                                                         "Sec-Fetch-Mode": "cors"})
    assert other_site.status_code == 403


def test_mlplat_hub_shows_the_running_hub_and_how_tolog_in(hub):
    shown = CliRunner().invoke(main, ["hub"], env=hub_environment(hub.home))
    assert shown.exit_code == 0, shown.output
    assert f"pid {hub.pid}  {hub.url}" in shown.output
    assert f"login    any user name, password {PASSWORD}" in shown.output


@pytest.fixture(scope="module")
def alice(hub):
    """alice, of team-a, with a running cpu-small workspace."""
    return hub.spawn("alice", "cpu-small", teams=("team-a",))


def test_workspace_has_its_profile_user_team_platform_and_kernels(hub, alice):
    assert alice["user_options"] == {"profile": "cpu-small"}
    kernels = hub.api("GET", "/user/alice/api/kernelspecs").json()["kernelspecs"]
    assert set(kernels) == {"python3", "mlplat"}  # a CPU workspace offers no GPU kernel
    lab = hub.api("GET", "/user/alice/lab").text
    page_config = json.loads(re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', lab, re.S).group(1))
    assert page_config["news"] == {"disabled": True}  # no "get Jupyter news?" prompt in a managed workspace

    printed = hub.run_in_kernel("alice", "mlplat", "\n".join([
        "import json, os",
        "from mlplat.config import load_settings",
        "s = load_settings()",
        "names = ['MLPLAT_PROFILE', 'MLPLAT_DEVICE', 'MLPLAT_USER', 'MLPLAT_TEAM', 'CPU_LIMIT', 'MEM_LIMIT']",
        "print(json.dumps({'env': {n: os.environ.get(n) for n in names}, 'cwd': os.getcwd(),",
        "                  'registry': s.registry, 'tracking': s.tracking, 'online': s.online_store,",
        "                  'home': str(s.home), 'user': s.user,",
        "                  'magics': 'feature' in get_ipython().magics_manager.magics['line']}))",
    ]))
    seen = json.loads(printed)
    assert seen["env"] == {"MLPLAT_PROFILE": "cpu-small", "MLPLAT_DEVICE": "cpu", "MLPLAT_USER": "alice",
                           "MLPLAT_TEAM": "team-a", "CPU_LIMIT": "2.0", "MEM_LIMIT": str(4 * 1024**3)}
    platform = hub.settings
    assert (seen["registry"], seen["tracking"], seen["online"], seen["home"]) == \
        (platform.registry, platform.tracking, platform.online_store, str(platform.home))
    assert seen["user"] == "alice"  # what the registry records as who changed it
    assert seen["cwd"] == str(hub.home / "workspaces" / "users" / "alice")
    assert seen["magics"]


def test_team_folder_is_shared_into_the_workspace(hub, alice):
    notebook = {"type": "notebook", "content": {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}
    hub.api("PUT", "/user/alice/api/contents/teams/team-a/shared.ipynb", json=notebook)
    assert (hub.home / "workspaces" / "teams" / "team-a" / "shared.ipynb").is_file()
    (hub.home / "workspaces" / "teams" / "team-a" / "data.csv").write_text("a,b\n1,2\n")
    listed = hub.api("GET", "/user/alice/api/contents/teams/team-a").json()["content"]
    assert {"shared.ipynb", "data.csv"} <= {item["name"] for item in listed}


def test_workspace_lab_extension_serves_the_hubs_platform(hub, alice, driver, driver_stats):
    p = mlplat.connect(home=str(hub.home))  # what the hub and every workspace share
    p.features.apply([driver, driver_stats])
    p.close()
    views = hub.api("GET", "/user/alice/mlplat/api/features", params={"q": "driver"}).json()
    assert [v["name"] for v in views] == ["driver_stats"]


def test_unknown_profile_is_refused_with_400_and_starts_nothing(hub):
    hub.api("POST", "/hub/api/users/bob")
    for options, says in (({"profile": "gpu-x9"}, "did you mean 'gpu-x1'? choose one of cpu-small, cpu-large, gpu-x1"),
                          ({"profile": "cpu-small", "image": "x"}, "the only option is 'profile'")):
        refused = hub.api("POST", "/hub/api/users/bob/server", json=options, expect=(400,))
        assert says in refused.json()["message"]
        assert hub.api("GET", "/hub/api/users/bob").json()["servers"] == {}


def test_spawn_page_offers_the_profiles_and_starts_the_chosen_one(hub):
    browser = log_in(hub, "bob")
    page = browser.get(hub.url + "hub/spawn")
    assert re.findall(r'name="profile" value="([\w-]+)"', page.text) == ["cpu-small", "cpu-large", "gpu-x1"]
    browser.post(hub.url + "hub/spawn", data={"profile": "gpu-x1", "_xsrf": browser.cookies["_xsrf"]})
    environ = psutil.Process(hub.wait_ready("bob")["state"]["pid"]).environ()
    assert (environ["MLPLAT_PROFILE"], environ["MLPLAT_DEVICE"], environ["CUDA_VISIBLE_DEVICES"]) == \
        ("gpu-x1", "gpu:0", "0")
    assert environ["MLPLAT_TEAM"] == ""  # bob is in no team
    kernels = hub.api("GET", "/user/bob/api/kernelspecs").json()["kernelspecs"]
    assert set(kernels) == {"python3", "mlplat", "mlplat-gpu"}
    hub.api("DELETE", "/hub/api/users/bob/server")


# --- Kubernetes: what KubeSpawner would create, rendered without a cluster ---------------------------------

SHARED = {"online_store": "redis://redis.mlplat:6379/0", "registry": "postgresql+psycopg://mlplat:s3{cr}et@db/mlplat",
          "tracking": "http://mlflow.mlplat:5000", "offline_store": "s3://features/offline",
          "artifacts": "s3://features/artifacts"}


@pytest.fixture
def kube_hub_config(tmp_path, kube_config_file):
    settings = load_settings(**SHARED)
    options = HubOptions(state_dir=tmp_path / "hub", root=tmp_path / "ws", mode="kubernetes",
                         image="ghcr.io/example/mlplat-workspace:1", team_claim="mlplat-teams").checked()
    c = Config()
    configure_kubernetes(c, options, settings)
    return c


async def _pod(config: Config, profile: str, teams: list[str]) -> dict:
    """The pod manifest KubeSpawner would send for alice (in ``teams``) asking for ``profile``, as JSON."""
    user = types.SimpleNamespace(name="alice", id=1, url="/user/alice/", escaped_name="alice",
                                 groups=[types.SimpleNamespace(name=t) for t in teams])
    spawner = KubeSpawner(_mock=True, config=config, user=user)
    spawner.user_options = {"profile": profile}
    spawner.apply_user_options(spawner, spawner.user_options)  # what the hub runs before start()
    await spawner.load_user_options()  # start() from here on
    pod = spawner.modify_pod_hook(spawner, await spawner.get_pod_manifest())
    return ApiClient().sanitize_for_serialization(pod)


def test_gpu_pod_gets_a_gpu_node_tolerations_team_folders_and_endpoints(kube_hub_config):
    pod = asyncio.run(_pod(kube_hub_config, "gpu-x1", ["team-b", "team-a"]))["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert (container["resources"]["limits"]["cpu"], container["resources"]["requests"]["cpu"]) == (8, 4)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["image"] == "ghcr.io/example/mlplat-workspace:1"
    assert "--KernelSpecManager.allowed_kernelspecs=mlplat-gpu" in container["args"]
    assert "--LabApp.news_url=None" in container["args"]

    assert {"name": "teams", "persistentVolumeClaim": {"claimName": "mlplat-teams"}} in pod["volumes"]
    mounts = {m["mountPath"]: m["subPath"] for m in container["volumeMounts"] if m["name"] == "teams"}
    assert mounts == {"/home/jovyan/teams/team-a": "team-a", "/home/jovyan/teams/team-b": "team-b"}

    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {k: env[k] for k in ("MLPLAT_PROFILE", "MLPLAT_DEVICE", "CUDA_VISIBLE_DEVICES", "MLPLAT_USER",
                                "MLPLAT_TEAM")} == {"MLPLAT_PROFILE": "gpu-x1", "MLPLAT_DEVICE": "gpu:0",
                                                    "CUDA_VISIBLE_DEVICES": "0", "MLPLAT_USER": "alice",
                                                    "MLPLAT_TEAM": "team-a"}
    assert {k: env[f"MLPLAT_{k.upper()}"] for k in SHARED} == SHARED  # braces in the password survive
    assert "MLPLAT_HOME" not in env  # pods share no disk with the hub


def test_cpu_pod_has_no_gpu(kube_hub_config):
    pod = asyncio.run(_pod(kube_hub_config, "cpu-small", []))["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "nodeSelector" not in pod
    assert not [t for t in pod.get("tolerations", []) if t["key"] == "nvidia.com/gpu"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["MLPLAT_PROFILE"], env["CUDA_VISIBLE_DEVICES"], env["MLPLAT_TEAM"]) == ("cpu-small", "", "")
    assert not [m for m in container.get("volumeMounts", []) if m["name"] == "teams"]
    kernels = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--KernelSpecManager.allowed_kernelspecs=")]
    assert kernels == ["python3", "mlplat"]


@pytest.mark.parametrize(("options", "says"), [({"profile": "gpu-x8"}, "choose one of cpu-small, cpu-large, gpu-x1"),
                                              (["gpu-x1"], "must be a JSON object")])
def test_kubespawner_refuses_a_bad_profile_with_400(kube_hub_config, options, says):
    with pytest.raises(web.HTTPError) as refused:
        kube_hub_config.KubeSpawner.apply_user_options(None, options)  # refuses before touching the spawner
    assert refused.value.status_code == 400 and says in refused.value.jupyterhub_message


def test_kubernetes_mode_refuses_settings_only_this_machine_can_reach(tmp_path):
    options = HubOptions(state_dir=tmp_path, root=tmp_path, mode="kubernetes", image="img").checked()
    with pytest.raises(ConfigError, match="MLPLAT_ONLINE_STORE=embedded.*MLPLAT_REGISTRY=sqlite"):
        configure_kubernetes(Config(), options, load_settings(home=str(tmp_path)))


# --- The generated configuration ---------------------------------------------------------------------------

def _load_config_file(monkeypatch, tmp_path, **variables: str) -> Config:
    monkeypatch.setenv("MLPLAT_HUB_STATE", str(tmp_path / "state"))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return PyFileConfigLoader("jupyterhub_config.py", path=str(HUB_DIR)).load_config()


def test_config_registers_the_culler_mlplat_services_teams_and_roles(monkeypatch, tmp_path):
    c = _load_config_file(monkeypatch, tmp_path, MLPLAT_HUB_CULL_TIMEOUT="600",
                          MLPLAT_HUB_TEAMS="{team-a: [alice, bob], team-b: [carol]}")
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"idle-culler", "mlflow", "scheduler", "monitor", "stream"}
    assert services["idle-culler"]["command"][-2:] == ["jupyterhub_idle_culler", "--timeout=600"]
    assert services["mlflow"]["url"].startswith("http://127.0.0.1:") and services["mlflow"]["oauth_no_confirm"]
    assert services["scheduler"]["command"][-2:] == ["mlplat.cli", "scheduler"]
    assert services["monitor"]["command"][2:5] == ["mlplat.cli", "monitor", "serve"]
    assert services["stream"]["command"][2:] == ["mlplat.cli", "stream"]
    assert services["scheduler"]["environment"]["MLPLAT_HOME"] == os.environ["MLPLAT_HOME"]
    # a restarted hub serves its monitor (which Prometheus scrapes) and MLflow UI where they were
    again = {s["name"]: s for s in _load_config_file(monkeypatch, tmp_path).JupyterHub.services}
    assert again["monitor"]["command"][-1] == services["monitor"]["command"][-1]
    assert again["mlflow"]["url"] == services["mlflow"]["url"]
    # the scheduler runs notebooks on the workspaces' kernels: it finds them where the workspaces do
    kernels = KernelSpecManager(kernel_dirs=[str(Path(services["scheduler"]["environment"]["JUPYTER_PATH"]) /
                                                 "kernels")]).find_kernel_specs()
    assert {"mlplat", "mlplat-gpu"} <= set(kernels)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["idle-culler"]["services"] == ["idle-culler"]
    assert {"list:users", "read:users:activity", "delete:servers"} <= set(roles["idle-culler"]["scopes"])
    assert roles["user"]["scopes"] == ["self", "access:services!service=mlflow"]
    assert c.JupyterHub.load_groups == {"team-a": {"users": ["alice", "bob"]}, "team-b": {"users": ["carol"]}}
    assert issubclass(c.JupyterHub.spawner_class, SimpleLocalProcessSpawner)
    assert c.WorkspaceSpawner.apply_user_options is apply_profile
    assert Path(c.JupyterHub.db_url.removeprefix("sqlite:///")).parent == tmp_path / "state"


def test_config_without_culling_or_services(monkeypatch, tmp_path):
    c = _load_config_file(monkeypatch, tmp_path, MLPLAT_HUB_CULL_TIMEOUT="0", MLPLAT_HUB_SERVICES="")
    assert c.JupyterHub.services == []
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["user"]


def test_config_for_kubernetes_uses_kubespawner_with_the_profiles(monkeypatch, tmp_path):
    for key, value in SHARED.items():
        monkeypatch.setenv(f"MLPLAT_{key.upper()}", value)
    c = _load_config_file(monkeypatch, tmp_path, MLPLAT_HUB_MODE="kubernetes", MLPLAT_HUB_IMAGE="img:1")
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert [p["slug"] for p in c.KubeSpawner.profile_list] == ["cpu-small", "cpu-large", "gpu-x1"]
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"idle-culler", "mlflow", "scheduler", "monitor", "stream"}
    assert services["monitor"]["command"][-1] == "9464"
    assert "authenticator_class" not in c.JupyterHub  # the site's Helm chart chooses how people log in


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("MLPLAT_HUB_PORTT", "8000", "did you mean MLPLAT_HUB_PORT?"),
    ("MLPLAT_HUB_MODE", "docker", "use one of local, kubernetes"),
    ("MLPLAT_HUB_TEAMS", "team-a: alice", "YAML mapping each team to its users"),
    ("MLPLAT_HUB_CULL_TIMEOUT", "1h", "must be a whole number"),
    ("MLPLAT_HUB_SERVICES", "mlflow,grafana", "unknown services ['grafana']"),
    ("MLPLAT_HUB_PASSWORD", "short", "at least 8 characters"),
])
def test_bad_hub_variables_are_refused_before_anything_starts(tmp_path, variable, value, says):
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("?", r"\?")):
        HubOptions.from_env(load_settings(home=str(tmp_path)), {variable: value})


def test_leaving_a_team_removes_its_link_and_keeps_the_users_files(tmp_path):
    workspace = link_team_folders(tmp_path, "alice", ["team-a", "team-b"])
    (workspace / "teams" / "team-a" / "notes.md").write_text("shared")
    (workspace / "teams" / "mine").mkdir()
    link_team_folders(tmp_path, "alice", ["team-b"])
    assert sorted(p.name for p in (workspace / "teams").iterdir()) == ["mine", "team-b"]
    assert (tmp_path / "teams" / "team-a" / "notes.md").read_text() == "shared"
    with pytest.raises(HubError, match="cannot name a folder"):
        link_team_folders(tmp_path, "alice", ["../etc"])
