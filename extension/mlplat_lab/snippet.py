"""A copy-paste Python client for a deployed model: Triton's gRPC API, no mlplat needed."""

from __future__ import annotations

from typing import Any

from mlplat.serving.onnx_export import INPUT

TEMPLATE = """\
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient("{endpoint}")
# one row per prediction: {n} float32 features, in this order: {columns}
rows = np.zeros((1, {n}), dtype=np.float32)
tensor = grpcclient.InferInput("{input}", list(rows.shape), "FP32")
tensor.set_data_from_numpy(rows)
result = client.infer("{model}", [tensor], model_version="{version}")
print(result.as_numpy(result.get_response().outputs[0].name))
"""


def client_snippet(deployment: Any) -> str:
    """Python that sends one row of features to ``deployment`` over gRPC and prints the model's outputs."""
    return TEMPLATE.format(endpoint=deployment.endpoint, model=deployment.triton_model, version=deployment.version,
                           input=INPUT, n=len(deployment.features), columns=", ".join(deployment.features))
