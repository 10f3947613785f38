"""A copy-paste Python client for a deployed model: Triton's gRPC API, no mlplat needed."""

from __future__ import annotations

from typing import Any

from mlplat.serving.onnx_export import INPUT, TEXT_INPUT

TEMPLATE = """\
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient("{endpoint}")
inputs = []  # one row per prediction
{tensors}result = client.infer("{model}", inputs, model_version="{version}")
print(result.as_numpy(result.get_response().outputs[0].name))  # {meaning}
"""
NUMBERS = """# float32 features (NaN when missing), in this order: {columns}
numbers = np.zeros((1, {n}), dtype=np.float32)
inputs.append(grpcclient.InferInput("{input}", list(numbers.shape), "FP32"))
inputs[-1].set_data_from_numpy(numbers)
"""
TEXTS = """# string features (UTF-8; b"" when missing), in this order: {columns}
texts = np.array([[b""] * {n}], dtype=object)
inputs.append(grpcclient.InferInput("{input}", list(texts.shape), "BYTES"))
inputs[-1].set_data_from_numpy(texts)
"""


def client_snippet(deployment: Any) -> str:
    """Python that sends one row of features to ``deployment`` over gRPC and prints the model's outputs."""
    numbers = [f for f in deployment.features if f not in deployment.texts]
    tensors = NUMBERS.format(columns=", ".join(numbers), n=len(numbers), input=INPUT) if numbers else ""
    if deployment.texts:
        tensors += TEXTS.format(columns=", ".join(deployment.texts), n=len(deployment.texts), input=TEXT_INPUT)
    meaning = (f"each row's probabilities of the classes {deployment.classes}" if deployment.classes
               else "each row's predicted value")
    return TEMPLATE.format(endpoint=deployment.endpoint, model=deployment.triton_model, version=deployment.version,
                           tensors=tensors, meaning=meaning)
