"""Server mode in what the hub generates and in the Kubernetes manifests of ``mlplat server``.

The manifests are read into the Kubernetes client's own typed objects (unknown or misspelled fields would be
lost on the way back, missing required ones refused); workspace pods are rendered by KubeSpawner without a
cluster. The rule checked throughout: ``mlplat server`` alone holds write credentials, workspaces get its URL
and their own token.
"""

from __future__ import annotations

import asyncio
import json
import types
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient
from kubespawner import KubeSpawner
from manifests import typed
from traitlets.config import Config

from mlplat.config import load_settings
from mlplat.errors import ConfigError
from mlplat_hub.config import configure_kubernetes, configure_local
from mlplat_hub.kubernetes import ONLINE_READER_SECRET
from mlplat_hub.options import HubOptions
from mlplat_hub.services import SERVER, SERVER_CLUSTER_URL, SERVER_SCOPES

KUBERNETES = Path(__file__).parents[2] / "serving" / "kubernetes"
SERVER_ONLY_SECRETS = {"mlplat-server-hub-token", "mlplat-server-db", "mlplat-server-redis", "mlplat-server-mlflow",
                       "mlplat-server-s3"}
TRITON_CONTROL_SECRET = "mlplat-triton-control"  # shared by the server and Triton alone
JOB_TOKEN_SECRET = "mlplat-job-token"  # shared by the server and the hub's scheduler alone
SHARED = {"online_store": "redis://mlplat-admin:s3cret@redis:6379/0", "registry": "postgresql+psycopg://mlplat:s3cret@db/m",
          "tracking": "postgresql+psycopg://mlflow:s3cret@db/mlflow", "offline_store": "s3://mlplat-features/offline",
          "artifacts": "s3://mlplat-features/artifacts"}


@pytest.fixture(scope="module")
def manifests() -> dict:
    return {d["kind"]: typed(d) for d in yaml.safe_load_all((KUBERNETES / "server.yaml").read_text())}


def _secrets(pod_spec) -> set[str]:
    """Every Secret a pod spec reads: variables, envFrom, volumes."""
    names = set()
    for container in pod_spec.containers:
        names |= {e.value_from.secret_key_ref.name for e in container.env or []
                  if e.value_from and e.value_from.secret_key_ref}
        names |= {e.secret_ref.name for e in container.env_from or [] if e.secret_ref}
    names |= {v.secret.secret_name for v in pod_spec.volumes or [] if v.secret}
    return names


def test_the_server_runs_under_its_own_account_with_the_secrets_it_alone_holds(manifests):
    deployment, account = manifests["Deployment"], manifests["ServiceAccount"]
    assert (deployment.api_version, account.api_version) == ("apps/v1", "v1")
    pod = deployment.spec.template.spec
    assert pod.service_account_name == account.metadata.name == "mlplat-server"
    assert account.automount_service_account_token is False and pod.automount_service_account_token is False
    (container,) = pod.containers
    assert container.command[:2] == ["mlplat", "server"]
    assert _secrets(pod) == SERVER_ONLY_SECRETS | {TRITON_CONTROL_SECRET, ONLINE_READER_SECRET, JOB_TOKEN_SECRET}
    env = {e.name: e for e in container.env}
    for name in ("MLPLAT_REGISTRY", "MLPLAT_ONLINE_STORE", "MLPLAT_TRACKING", "JUPYTERHUB_API_TOKEN"):
        assert env[name].value is None and env[name].value_from.secret_key_ref.name in SERVER_ONLY_SECRETS
    assert "MLPLAT_SERVER_URL" not in env  # it holds the stores itself
    assert env["JUPYTERHUB_API_URL"].value == "http://hub:8081/hub/api"
    assert container.readiness_probe.http_get.path == container.liveness_probe.http_get.path == "/api/v1/health"
    assert pod.security_context.run_as_non_root and not container.security_context.allow_privilege_escalation
    assert container.security_context.read_only_root_filesystem
    writable = {m.name for m in container.volume_mounts if not m.read_only}
    assert writable == {v.name for v in pod.volumes if v.empty_dir is not None}  # scratch; secrets mount read-only


def test_workspaces_reach_the_server_at_its_service_and_nothing_else_does(manifests):
    deployment, service, policy = manifests["Deployment"], manifests["Service"], manifests["NetworkPolicy"]
    labels = deployment.spec.template.metadata.labels
    assert deployment.spec.selector.match_labels == labels == service.spec.selector == policy.spec.pod_selector.match_labels
    (port,) = service.spec.ports
    (container,) = deployment.spec.template.spec.containers
    assert port.target_port in {p.name for p in container.ports}
    assert container.ports[0].container_port == int(container.command[container.command.index("--port") + 1])
    where = urlparse(SERVER_CLUSTER_URL)  # what the hub gives every workspace
    assert (where.hostname, where.port) == (service.metadata.name, port.port)
    (rule,) = policy.spec.ingress
    assert [p.pod_selector.match_labels for p in rule._from] == [{"component": "singleuser-server"}]
    assert [p.port for p in rule.ports] == [port.port]


def test_no_other_manifest_mounts_the_servers_secrets():
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "server.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] == "Deployment":
                secrets = _secrets(typed(document).spec.template.spec)
                assert not secrets & SERVER_ONLY_SECRETS, path.name
                assert TRITON_CONTROL_SECRET not in secrets or path.name == "triton.yaml", path.name


# --- What the hub generates in server mode ------------------------------------------------------------------

def _kubernetes_hub(tmp_path, **options) -> Config:
    c = Config()
    configure_kubernetes(c, HubOptions(state_dir=tmp_path / "hub", root=tmp_path / "ws", mode="kubernetes",
                                       image="img:1", **options).checked(), load_settings(**SHARED))
    return c


async def _pod(config: Config) -> dict:
    user = types.SimpleNamespace(name="alice", id=1, url="/user/alice/", escaped_name="alice",
                                 groups=[types.SimpleNamespace(name="a"), types.SimpleNamespace(name="mlplat-admins")])
    spawner = KubeSpawner(_mock=True, config=config, user=user, api_token="alices-server-token")
    spawner.user_options = {"profile": "cpu-small"}
    spawner.apply_user_options(spawner, spawner.user_options)
    await spawner.load_user_options()
    pod = spawner.modify_pod_hook(spawner, await spawner.get_pod_manifest())
    return ApiClient().sanitize_for_serialization(pod)


def test_a_server_mode_pod_gets_the_servers_url_and_its_token_and_no_write_credential(tmp_path, kube_config_file):
    config = _kubernetes_hub(tmp_path, server=True, server_token="t0ken")
    pod = asyncio.run(_pod(config))["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MLPLAT_SERVER_URL"]["value"] == SERVER_CLUSTER_URL
    assert env["JUPYTERHUB_API_TOKEN"]["value"] == "alices-server-token"  # the user's own token
    assert env["MLPLAT_ONLINE_STORE"] == {"name": "MLPLAT_ONLINE_STORE", "valueFrom": {
        "secretKeyRef": {"name": ONLINE_READER_SECRET, "key": "url"}}}
    assert "MLPLAT_REGISTRY" not in env and "MLPLAT_TRACKING" not in env
    assert "s3cret" not in json.dumps(pod)  # no password of the database, MLflow or Redis admin
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values() if "valueFrom" in e} == {ONLINE_READER_SECRET}
    assert env["MLPLAT_OFFLINE_STORE"]["value"] == SHARED["offline_store"]
    mounts = [m["mountPath"] for m in pod["containers"][0].get("volumeMounts", []) if m["name"] == "teams"]
    assert mounts == ["/home/jovyan/teams/a"]  # the platform admins' group is no team folder

    services = {s["name"]: s for s in config.JupyterHub.services}
    assert services[SERVER] == {"name": SERVER, "api_token": "t0ken", "info": {
        "description": "The platform server (mlplat server)", "url": SERVER_CLUSTER_URL}}  # its own Deployment
    assert not any("MLPLAT_SERVER_URL" in s.get("environment", {}) for s in services.values())
    assert "mlflow" not in services  # MLflow's UI is the server's /mlflow, with the platform's permissions
    roles = {r["name"]: r for r in config.JupyterHub.load_roles}
    assert roles[SERVER] == {"name": SERVER, "services": [SERVER], "scopes": SERVER_SCOPES}


def test_without_server_mode_pods_keep_the_platforms_settings(tmp_path, kube_config_file):
    env = {e["name"]: e.get("value") for e in asyncio.run(_pod(_kubernetes_hub(tmp_path)))["spec"]["containers"][0]["env"]}
    assert "MLPLAT_SERVER_URL" not in env and env["MLPLAT_REGISTRY"] == SHARED["registry"]


def test_a_local_hub_runs_the_server_on_a_kept_port_with_teams_roles_and_admins(tmp_path):
    def configured() -> Config:
        c = Config()
        options = HubOptions.from_env(load_settings(home=str(tmp_path)), {
            "MLPLAT_HUB_SERVER": "1", "MLPLAT_HUB_TEAMS": "{a: [alice], b: [bob, carol]}",
            "MLPLAT_HUB_TEAM_ROLES": '{b: {carol: viewer, "*": owner}, c: {"*": viewer}}',
            "MLPLAT_HUB_ADMINS": "dana, erin", "MLPLAT_HUB_PASSWORD": "12345678"})
        configure_local(c, options, load_settings(home=str(tmp_path)))
        return c

    c = configured()
    services = {s["name"]: s for s in c.JupyterHub.services}
    server = services[SERVER]
    assert server["command"][1:] == ["-m", "mlplat.cli", "server"] and server["url"].startswith("http://127.0.0.1:")
    assert "MLPLAT_SERVER_URL" not in server["environment"] and server["environment"]["MLPLAT_HOME"] == str(tmp_path)
    assert not any("MLPLAT_SERVER_URL" in s.get("environment", {}) for s in services.values())
    assert "mlflow" not in services  # MLflow's UI is the server's /mlflow, with the platform's permissions
    assert c.WorkspaceSpawner.environment["MLPLAT_SERVER_URL"] == server["url"]
    assert {r["name"]: r["scopes"] for r in c.JupyterHub.load_roles}[SERVER] == SERVER_SCOPES
    assert c.JupyterHub.load_groups == {
        "a": {"users": ["alice"]},
        "b": {"users": ["bob", "carol"], "properties": {"mlplat_role": "owner", "mlplat_roles": {"carol": "viewer"}}},
        "c": {"users": [], "properties": {"mlplat_role": "viewer"}},
        "mlplat-admins": {"users": ["dana", "erin"]}}
    assert {s["name"]: s for s in configured().JupyterHub.services}[SERVER]["url"] == server["url"]  # kept


@pytest.mark.parametrize(("variables", "says"), [
    ({"MLPLAT_HUB_SERVER": "maybe"}, "must be 1 (on) or 0 (off)"),
    ({"MLPLAT_HUB_TEAM_ROLES": "{b: [carol]}"}, "YAML mapping each team to its members' roles"),
    ({"MLPLAT_HUB_TEAM_ROLES": "{b: {carol: boss}}"}, "roles are viewer, editor, owner"),
    ({"MLPLAT_HUB_TEAMS": "{b: [bob]}", "MLPLAT_HUB_TEAM_ROLES": "{b: {carol: viewer}}"},
     "gives carol a role in 'b', but MLPLAT_HUB_TEAMS does not list them"),
    ({"MLPLAT_HUB_SERVER": "1", "MLPLAT_HUB_MODE": "kubernetes", "MLPLAT_HUB_IMAGE": "img"},
     "MLPLAT_HUB_SERVER_TOKEN is required"),
    ({"MLPLAT_HUB_SERVR": "1"}, "did you mean MLPLAT_HUB_SERVER?"),
])
def test_bad_server_mode_variables_are_refused_before_anything_starts(tmp_path, variables, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        HubOptions.from_env(load_settings(home=str(tmp_path)), variables)
