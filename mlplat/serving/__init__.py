"""Serving: ONNX export, Triton model repositories, serving targets (the embedded Triton or one given by URL),
gRPC inference, experiments."""

from mlplat.serving.client import Client, Prediction

__all__ = ["Client", "Prediction"]
