"""A Triton python-based backend named ``onnxruntime``: runs ``<version>/model.onnx`` with onnxruntime.

Installed as ``backends/onnxruntime/model.py`` on a Triton that has only the
python backend (the CPU build in the nvidia-pytriton wheel), it lets the very
model repository written for Triton's native onnxruntime backend (GPU Triton)
load unchanged. Inputs and outputs are the ones named in ``config.pbtxt``.
"""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # one Triton instance per core scales better than threads
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        # The requests Triton batched together run as one onnxruntime call, then split back per request.
        inputs = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
                  for r in requests]
        sizes = [len(feeds[self.inputs[0]]) for feeds in inputs]
        merged = {name: _text(np.concatenate([feeds[name] for feeds in inputs])) for name in self.inputs}
        results = self.session.run(self.outputs, merged)
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value[start:start + size]))
                       for name, value in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses


def _text(values):
    """String tensors arrive as UTF-8 bytes; onnxruntime takes ``str``. Other tensors pass as they are."""
    if values.dtype != object:
        return values
    return np.char.decode(values.astype(np.bytes_), "utf-8").astype(object)
