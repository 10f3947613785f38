"""A Triton python-based backend named ``onnxruntime``: runs ``<version>/model.onnx`` with onnxruntime.

Installed as ``backends/onnxruntime/model.py`` on a Triton that has only the
python backend (the CPU build in the nvidia-pytriton wheel), it lets the very
model repository written for Triton's native onnxruntime backend (GPU Triton)
load unchanged. Inputs and outputs are the ones named in ``config.pbtxt``; its
``intra_op_thread_count`` and ``inter_op_thread_count`` parameters (the native
backend's names) set onnxruntime's threads per instance (default 1: one instance
per core scales better than threads on the python backend).

``<model>_by_id`` on the same Triton loads this file too (``session``, ``feed``) and runs the model in its own
process, a hop shorter than calling it through Triton.
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
        self.session = session(path, config.get("parameters"))
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        # The requests Triton batched together run as one onnxruntime call, then split back per request.
        inputs = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
                  for r in requests]
        if len(inputs) == 1:  # no copy into a merged batch
            return [self._response(self.session.run(self.outputs, {k: feed(v) for k, v in inputs[0].items()}))]
        sizes = [len(feeds[self.inputs[0]]) for feeds in inputs]
        merged = {name: feed(np.concatenate([feeds[name] for feeds in inputs])) for name in self.inputs}
        results = self.session.run(self.outputs, merged)
        bounds = np.cumsum([0, *sizes]).tolist()
        return [self._response([value[start:stop] for value in results]) for start, stop in zip(bounds, bounds[1:])]

    def _response(self, values):
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, np.ascontiguousarray(value))
                                           for name, value in zip(self.outputs, values)])


def session(path, parameters=None):
    """An onnxruntime session on the model at ``path``, set up by a model config's ``parameters``."""
    return onnxruntime.InferenceSession(path, _options(parameters or {}), providers=["CPUExecutionProvider"])


def _options(parameters):
    """onnxruntime's session options from the model's parameters: threads per instance, all graph optimisations,
    no spinning (idle threads would take CPU from the other instances and Triton)."""
    def threads(key, default):
        return int((parameters.get(key) or {}).get("string_value") or default)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads("intra_op_thread_count", 1)
    options.inter_op_num_threads = threads("inter_op_thread_count", 1)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def feed(values):
    """String tensors arrive as UTF-8 bytes; onnxruntime takes ``str``. Other tensors pass as they are."""
    if values.dtype != object:
        return values
    return np.char.decode(values.astype(np.bytes_), "utf-8").astype(object)
