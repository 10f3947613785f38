"""Serving: ONNX export, Triton model repositories, the local Triton server, gRPC inference."""

from mlplat.serving.client import Client, Prediction

__all__ = ["Client", "Prediction"]
