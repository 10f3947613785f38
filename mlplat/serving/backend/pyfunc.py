"""Triton python model of a pyfunc-fallback version: a worker process with the platform's interpreter runs it.

Triton's environment (numpy<2, onnxruntime, redis) cannot import MLflow or the model's libraries, and loading a
pyfunc runs its author's code, so neither happens here: on initialize this starts
``python -m mlplat.registry.pyfunc_worker`` (the interpreter and ``PYTHONPATH`` that ``p.deploy`` recorded in
the config's parameters) on the MLflow model copied beside this file, and sends it each batch over its
stdin/stdout (see that module for the framing). A spare worker is kept loaded beside it: one that dies is
replaced by the spare on the next batch at once, and a new spare starts loading (two processes of the model's
size per instance).
Inputs and outputs are named as the ONNX models' are, so clients call both alike.
"""

import io
import json
import os
import struct
import subprocess
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


def _read(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the pyfunc worker stopped")
    (size,) = struct.unpack("<Q", head)
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("the pyfunc worker stopped")
    return np.load(io.BytesIO(body), allow_pickle=False)


def _write(stream, array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    stream.write(struct.pack("<Q", buffer.tell()) + buffer.getvalue())
    stream.flush()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.version_folder = os.path.join(args["model_repository"], args["model_version"])
        model = os.path.join(self.version_folder, "mlflow_model")
        self.command = [params["python"], "-m", "mlplat.registry.pyfunc_worker", model, params["kind"]]
        # A clean environment: none of Triton's library paths or preloads reach the platform's interpreter.
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": params["pythonpath"],
                    "HOME": os.environ.get("HOME", "/"), "PYTHONNOUSERSITE": "1"}
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        self.lock = threading.Lock()
        self.worker, self.spare = None, self._spawn()
        self._take_over()

    def _spawn(self):
        """A spare worker process, loading the model; a thread waits for its first frame (sent once loaded)."""
        worker = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env,
                                  cwd=self.version_folder)
        worker.loaded = threading.Event()
        threading.Thread(target=self._wait_loaded, args=(worker,), daemon=True).start()
        return worker

    def _wait_loaded(self, worker):
        try:
            worker.pid_frame = int(_read(worker.stdout))
            with open(os.path.join(self.version_folder, "spare.pid"), "w") as handle:
                handle.write(str(worker.pid_frame))
        except Exception:  # it died while loading: whoever takes it over finds no pid and fails
            worker.pid_frame = None
        worker.loaded.set()

    def _take_over(self):
        """The spare worker replaces the current one, and a new spare starts loading: a worker that died is
        replaced at once, not after the seconds a start takes (unless the spare is still loading)."""
        _stop(self.worker)
        self.worker, worker, self.spare = None, self.spare or self._spawn(), None
        worker.loaded.wait()
        if worker.pid_frame is None:
            _stop(worker)
            raise EOFError("the pyfunc worker stopped while loading the model (its log says why)")
        self.worker = worker
        with open(os.path.join(self.version_folder, "worker.pid"), "w") as handle:
            handle.write(str(worker.pid_frame))
        self.spare = self._spawn()

    def _ask(self, rows):
        with self.lock:
            for attempt in (1, 2):  # a worker found dead is replaced, and the batch sent once more
                try:
                    if self.worker is None or self.worker.poll() is not None:
                        self._take_over()
                    _write(self.worker.stdin, rows)
                    return _read(self.worker.stdout)
                except (OSError, EOFError, ValueError):
                    _stop(self.worker)
                    self.worker = None
                    if attempt == 2:
                        raise

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, self.inputs[0]).as_numpy() for r in requests]
        sizes = [len(rows) for rows in inputs]
        try:
            result = self._ask(np.ascontiguousarray(np.concatenate(inputs), dtype=np.float32))
        except Exception as exc:
            error = pb_utils.TritonError(f"the pyfunc worker failed: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        if result.dtype.kind == "U":  # the model itself raised
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result))) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensor = pb_utils.Tensor(self.outputs[0], np.ascontiguousarray(result[start:start + size]))
            responses.append(pb_utils.InferenceResponse([tensor]))
            start += size
        return responses

    def finalize(self):
        for worker in (self.worker, self.spare):
            _stop(worker)


def _stop(worker):
    if worker is not None and worker.poll() is None:
        worker.kill()
    if worker is not None:
        worker.wait()
