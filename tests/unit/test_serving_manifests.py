"""The Kubernetes manifests for a GPU Triton: GPUs requested, probes on Triton's health API, gRPC exposed."""

from pathlib import Path

import yaml

MANIFESTS = Path(__file__).parents[2] / "serving" / "kubernetes" / "triton.yaml"


def test_triton_runs_on_gpus_and_is_reachable_over_grpc():
    documents = {d["kind"]: d for d in yaml.safe_load_all(MANIFESTS.read_text())}
    deployment, service = documents["Deployment"], documents["Service"]
    assert (deployment["apiVersion"], service["apiVersion"]) == ("apps/v1", "v1")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--model-control-mode=explicit" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert deployment["spec"]["selector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["port"] == 8001 and {"name": "grpc", "containerPort": 8001} in container["ports"]
