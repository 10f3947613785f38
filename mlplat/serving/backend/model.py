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
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            results = self.session.run(self.outputs, feeds)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
