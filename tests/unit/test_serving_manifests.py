"""The Kubernetes manifests for a GPU Triton: GPUs requested, probes on Triton's health API, gRPC exposed."""

from pathlib import Path

import yaml

from mlplat.serving.target import CONTROL_HEADER

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


def test_only_callers_with_the_control_secret_reach_tritons_model_control():
    documents = {d["kind"]: d for d in yaml.safe_load_all(MANIFESTS.read_text())}
    (container,) = documents["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLPLAT_TRITON_CONTROL_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "mlplat-triton-control"
    for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
        (arg,) = [a for a in container["args"] if a.startswith(flag + "=")]
        protocols, _, header = arg.split("=", 1)[1].partition(":")
        assert "model-repository" in protocols.split(",") and "inference" not in protocols.split(",")
        assert header == f"{CONTROL_HEADER}=$(MLPLAT_TRITON_CONTROL_SECRET)"
