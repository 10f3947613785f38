"""Call a deployed model on Triton with entity ids only: no mlplat, no feature store client.

Any language with a gRPC stack does the same with Triton's KServe v2 protocol
(`inference.GRPCInferenceService/ModelInfer`); this uses Python's tritonclient:

    python serving/examples/predict_by_id.py 127.0.0.1:8001 trip_completion driver_id=1,2 customer_id=5,7

`<model>_by_id` reads the features from the online store inside Triton and
calls the model itself; ids travel as strings (TYPE_STRING / BYTES), one per row.
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main(endpoint: str, model: str, *columns: str) -> None:
    ids = {name: values.split(",") for name, values in (c.split("=", 1) for c in columns)}
    rows = len(next(iter(ids.values())))
    inputs = []
    for name, values in ids.items():
        tensor = grpcclient.InferInput(name, [rows, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object).reshape(rows, 1))
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(endpoint)
    result = client.infer(f"{model}_by_id", inputs)
    for row, output in enumerate(result.as_numpy(result.get_response().outputs[0].name)):
        print({k: v[row] for k, v in ids.items()}, "->", output.tolist())


if __name__ == "__main__":
    main(*sys.argv[1:])
