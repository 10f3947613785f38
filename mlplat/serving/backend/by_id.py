"""Triton python model ``<model>_by_id``: entity ids in, predictions out, for clients in any language.

It reads the model's features from the online store (Redis, one MGET per
request, mlplat's packed records decoded with numpy) and calls the ONNX model
through Triton's business-logic scripting (BLS). ``lookup.json`` beside this
file, written by ``p.deploy``, says where the features live and how they are packed;
for the embedded Redis it names its state file too, read at each connection, so a
Redis restarted (even on another port) is found.
"""

import json
import os
from urllib.parse import urlparse

import numpy as np
import redis
import triton_python_backend_utils as pb_utils
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry


class _Located(redis.Connection):
    """Reads the embedded Redis's state file each time it connects: a restarted Redis is found, on any port."""

    def __init__(self, *, state_file, **kwargs):
        super().__init__(**kwargs)
        self.state_file = state_file

    def _connect(self):
        try:
            with open(self.state_file) as handle:
                where = urlparse(json.load(handle)["url"])
            self.host, self.port = where.hostname, where.port
        except (OSError, ValueError, KeyError):
            pass  # not running now: the last address, which fails clearly
        return super()._connect()


def _dtype(descr):
    return np.dtype([(f[0], f[1]) if len(f) == 2 else (f[0], f[1], tuple(f[2])) for f in descr])


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "lookup.json")) as handle:
            self.lookup = json.load(handle)
        located = {"connection_class": _Located, "state_file": self.lookup["redis_state"]} \
            if self.lookup.get("redis_state") else {}
        # A command cut by a Redis restart is sent again, on a connection made to wherever Redis is now.
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1), 4, supported_errors=(redis.ConnectionError,))
        self.redis = redis.Redis.from_url(self.lookup["redis"], socket_timeout=5, socket_connect_timeout=2,
                                          retry=retry, **located)
        for view in self.lookup["views"]:
            view["numpy"] = _dtype(view["dtype"])

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        ids = {key: [v.decode() if isinstance(v, bytes) else str(v) for v in
                     pb_utils.get_input_tensor_by_name(request, key).as_numpy().reshape(-1)]
               for key in self.lookup["keys"]}
        rows = len(next(iter(ids.values())))
        keys = []
        for view in self.lookup["views"]:
            parts = zip(*(ids[k] for k in view["join_keys"]))
            keys.extend(view["prefix"] + "\x1f".join(p) for p in parts)
        values = self.redis.mget(keys) if keys else []
        matrix = np.full((rows, self.lookup["n_features"]), np.nan, dtype=np.float32)
        for index, view in enumerate(self.lookup["views"]):
            size = view["numpy"].itemsize
            chunk = values[index * rows:(index + 1) * rows]
            records = np.frombuffer(b"".join((v or b"\0" * size)[:size] for v in chunk), dtype=view["numpy"])
            for column, (block, slot, flag) in zip(view["columns"], view["features"]):
                present = records["valid"][:, flag].astype(bool)
                matrix[present, column] = records[block][present, slot]
        inference = pb_utils.InferenceRequest(
            model_name=self.lookup["model"], model_version=int(self.lookup["version"]),
            requested_output_names=[self.lookup["output"]], inputs=[pb_utils.Tensor("input", matrix)])
        response = inference.exec()
        if response.has_error():
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(response.error().message()))
        output = pb_utils.get_output_tensor_by_name(response, self.lookup["output"])
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.lookup["output"], output.as_numpy())])
