"""Who reaches what on Kubernetes: the NetworkPolicies of a shared install and Triton's pod, read into the
Kubernetes client's typed objects (a misspelled field would be lost on the way back and fail the check).

Workspaces reach the platform server, Triton's inference ports, Redis and the hub, and public addresses on 443;
no other platform port (PostgreSQL, MLflow, Triton's metrics, the cluster's private ranges). Triton answers only
the platform's pods, runs unprivileged on a read-only root and restricts model control to a secret's holder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from manifests import typed

KUBERNETES = Path(__file__).parents[2] / "serving" / "kubernetes"
WORKSPACE = {"component": "singleuser-server"}


@pytest.fixture(scope="module")
def policies() -> dict:
    return {d["metadata"]["name"]: typed(d) for d in yaml.safe_load_all((KUBERNETES / "network.yaml").read_text())}


def _reachable(policy) -> set[tuple[str, int]]:
    """(what, port) pairs an egress policy allows: a pod label ``app=...``/``component=...``, or ``public``."""
    allowed = set()
    for rule in policy.spec.egress:
        for peer in rule.to:
            if peer.ip_block is not None:
                assert peer.ip_block.cidr == "0.0.0.0/0"
                assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(peer.ip_block._except)
                what = "public"
            else:
                what = ",".join(f"{k}={v}" for k, v in sorted(peer.pod_selector.match_labels.items()))
            allowed |= {(what, port.port) for port in rule.ports}
    return allowed


def test_workspaces_reach_the_server_triton_inference_redis_and_the_hub_only(policies):
    egress = policies["mlplat-workspaces-egress"]
    assert egress.spec.pod_selector.match_labels == WORKSPACE and egress.spec.policy_types == ["Egress"]
    assert _reachable(egress) == {
        ("app=mlplat-server", 8585), ("app=mlplat-triton", 8000), ("app=mlplat-triton", 8001),
        ("app=mlplat-redis", 6379), ("component=hub", 8081), ("k8s-app=kube-dns", 53), ("public", 443)}
    assert not {port for _, port in _reachable(egress)} & {5432, 5000, 8002, 9000}  # PostgreSQL, MLflow, metrics, S3


def test_triton_and_redis_answer_the_platforms_pods_only(policies):
    triton = policies["mlplat-triton-ingress"]
    serving, metrics = triton.spec.ingress
    assert [p.pod_selector.match_labels for p in serving._from] == [WORKSPACE, {"app": "mlplat-server"}]
    assert {p.port for p in serving.ports} == {8000, 8001}
    assert {p.port for p in metrics.ports} == {8002}
    (redis,) = policies["mlplat-redis-ingress"].spec.ingress
    assert {next(iter(p.pod_selector.match_labels.items())) for p in redis._from} == {
        ("component", "singleuser-server"), ("app", "mlplat-server"), ("app", "mlplat-triton"), ("component", "hub")}


def test_triton_runs_unprivileged_and_keeps_model_control_to_the_secret():
    deployment = next(typed(d) for d in yaml.safe_load_all((KUBERNETES / "triton.yaml").read_text())
                      if d["kind"] == "Deployment")
    pod = deployment.spec.template.spec
    (container,) = pod.containers
    assert pod.security_context.run_as_non_root and pod.security_context.run_as_user != 0
    assert container.security_context.read_only_root_filesystem
    assert not container.security_context.allow_privilege_escalation
    assert container.security_context.capabilities.drop == ["ALL"]
    assert {m.mount_path for m in container.volume_mounts} == {"/tmp", "/dev/shm"}
    restricted = [a for a in container.args if a.startswith(("--grpc-restricted-protocol=", "--http-restricted-api="))]
    assert len(restricted) == 2 and all("model-repository," in a and "$(MLPLAT_TRITON_CONTROL_SECRET)" in a
                                        for a in restricted)
    (secret,) = [e for e in container.env if e.name == "MLPLAT_TRITON_CONTROL_SECRET"]
    assert secret.value_from.secret_key_ref.name == "mlplat-triton-control"
