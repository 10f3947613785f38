"""Triton python model ``<model>_by_id``: entity ids in, predictions out, for clients in any language.

It reads the model's features from the online store (Redis, one MGET per
batch that Triton's dynamic batcher forms, mlplat's packed records decoded with numpy) and runs the model:
in its own process when deploy put the local ``onnxruntime`` backend beside it (``runner`` in
``lookup.json``: on the embedded Triton, whose onnxruntime backend is that python file), else through
Triton's business-logic scripting (BLS), so that a GPU Triton's native backend, or a pyfunc model's worker,
runs it. ``lookup.json`` beside this file, written by ``p.deploy``, says where the features live and how
they are packed, each join key's kind, and the version's missing-feature policy (as ``p.predict`` applies
it, see ``mlplat.serving.missing``): ``flag`` (the ``missing_features`` output marks each row's missing
features), ``error`` (the request fails) or ``impute``. Keys that cannot name an entity (``1.5`` or ``01``
for an int64 key, bytes that are not UTF-8) fail the request with a message saying which. For the embedded
Redis it names Redis's state file too, read at each connection, so a Redis restarted (even on another port)
is found.
"""

import importlib.util
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


INT64_RANGE = (-(2**63), 2**63 - 1)


def _dtype(descr):
    return np.dtype([(f[0], f[1]) if len(f) == 2 else (f[0], f[1], tuple(f[2])) for f in descr])


class BadRequest(Exception):
    """The request cannot be served as sent; its message goes back to the client."""


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
            view["blocks"] = _blocks(view)
        self.impute = np.array([np.nan if v is None else v for v in self.lookup["impute"] or []], dtype=np.float32)
        self.runner = _runner(args, self.lookup["runner"], self.lookup["onnx"]) if self.lookup.get("runner") else None

    def execute(self, requests):
        """The requests Triton batched together: one Redis MGET and one model call for all of them, split back.

        A request that cannot be served (a bad key, rows lacking features under ``missing='error'``) fails
        alone; the others in the batch are answered from their own rows.
        """
        answers, good = [None] * len(requests), []
        for index, request in enumerate(requests):
            try:
                good.append((index, self._ids(request)))
            except BadRequest as exc:
                answers[index] = _failed(str(exc))
        if good:
            self._answer(good, answers)
        return answers

    def _answer(self, good, answers):
        """Fill ``answers`` for the requests in ``good`` (index, ids): features, policy, one model call."""
        sizes = [len(next(iter(ids.values()), ())) for _, ids in good]
        merged = {key: [text for _, ids in good for text in ids[key]] for key in self.lookup["keys"]}
        matrix, texts = self._features(merged, sum(sizes))
        gaps = np.isnan(matrix)
        bounds = np.cumsum([0, *sizes]).tolist()
        served = []
        for (index, _), start, stop in zip(good, bounds[:-1], bounds[1:]):
            try:
                self._refuse(gaps[start:stop])
                served.append((index, start, stop))
            except BadRequest as exc:
                answers[index] = _failed(str(exc))
        if not served:
            return
        if len(served) < len(good):  # only the rows of the requests still served go to the model
            rows = np.concatenate([np.arange(start, stop) for _, start, stop in served])
            matrix, texts, gaps = matrix[rows], texts[rows], gaps[rows]
        if gaps.any():
            matrix = self._fill(matrix, gaps)
        outputs = self._infer(matrix, texts)
        offset = 0
        for index, start, stop in served:
            part = slice(offset, offset + stop - start)
            offset = part.stop
            answers[index] = outputs if isinstance(outputs, pb_utils.InferenceResponse) else \
                pb_utils.InferenceResponse([pb_utils.Tensor(self.lookup["output"], outputs[part]),
                                            pb_utils.Tensor(self.lookup["missing_output"], gaps[part])])

    def _infer(self, matrix, texts):
        """The model's outputs for the rows (one call), or the failed response to give every request."""
        feeds = self._feeds(matrix, texts)
        if self.runner:
            session, feed = self.runner
            try:
                return session.run([self.lookup["output"]], {name: feed(value) for name, value in feeds.items()})[0]
            except Exception as exc:  # onnxruntime's errors share no base class
                return _failed(f"{self.lookup['model']} v{self.lookup['version']} failed: {exc}")
        inference = pb_utils.InferenceRequest(
            model_name=self.lookup["model"], model_version=int(self.lookup["version"]),
            requested_output_names=[self.lookup["output"]],
            inputs=[pb_utils.Tensor(name, value) for name, value in feeds.items()])
        response = inference.exec()
        if response.has_error():
            return _failed(response.error().message())
        return pb_utils.get_output_tensor_by_name(response, self.lookup["output"]).as_numpy()

    def _ids(self, request):
        """The request's key texts by key, each input with the same number of rows."""
        ids = {key: self._keys(request, key) for key in self.lookup["keys"]}
        rows = {len(texts) for texts in ids.values()}
        if len(rows) > 1:
            raise BadRequest(f"the key inputs have different numbers of rows ({sorted(rows)}); send one per row")
        return ids

    def _keys(self, request, key):
        """The key texts of one input, each checked against the key's kind (a pass over the whole column first;
        row by row only to say which row is wrong)."""
        kind = self.lookup["key_kinds"].get(key)
        values = pb_utils.get_input_tensor_by_name(request, key).as_numpy().reshape(-1).tolist()
        try:
            texts = [value.decode() if isinstance(value, bytes) else str(value) for value in values]
        except UnicodeDecodeError:
            texts = None
        if texts is None or (kind == "int64" and not _int64_texts(texts)):
            _refuse_key(key, kind, values)
        return texts

    def _feeds(self, matrix, texts):
        """The model's inputs by name: its numeric columns as ``input``, its string columns as ``input_text``."""
        if not self.lookup["texts"]:
            return {"input": matrix}
        numbers = [i for i in range(matrix.shape[1]) if i not in self.lookup["texts"]]
        found = {"input": np.ascontiguousarray(matrix[:, numbers])} if numbers else {}
        return {**found, "input_text": texts}

    def _features(self, ids, rows):
        """The feature matrix of the ``rows`` entities (NaN where Redis has no value; 0 for a string that is
        there), and their string features (``b""`` where missing): one MGET for them all."""
        keys = []
        for view in self.lookup["views"]:
            parts = zip(*(ids[k] for k in view["join_keys"]))
            keys.extend(view["prefix"] + "\x1f".join(p) for p in parts)
        values = self.redis.mget(keys) if keys else []
        matrix = np.full((rows, self.lookup["n_features"]), np.nan, dtype=np.float32)
        texts = np.full((rows, len(self.lookup["texts"])), b"", dtype=object)
        for index, view in enumerate(self.lookup["views"]):
            size = view["numpy"].itemsize
            chunk = values[index * rows:(index + 1) * rows]
            records = np.frombuffer(b"".join((v or b"\0" * size)[:size] for v in chunk), dtype=view["numpy"])
            valid = records["valid"].astype(bool)
            for block, (columns, slots, flags) in view["blocks"].items():
                matrix[:, columns] = np.where(valid[:, flags], records[block][:, slots], np.nan)
            for string, flag, column in view.get("texts", ()):
                present = records["valid"][:, flag].astype(bool)
                matrix[present, column] = 0
                k = self.lookup["texts"].index(column)
                texts[:, k] = [_text(v, size, string) if ok else b"" for v, ok in zip(chunk, present.tolist())]
        return matrix, texts

    def _refuse(self, gaps):
        """Under ``missing='error'``, refuse one request whose rows lack features."""
        if self.lookup["missing"] != "error" or not gaps.any():
            return
        features = self.lookup["features"]
        rows = np.flatnonzero(gaps.any(axis=1))
        shown = "; ".join(f"row {r}: {', '.join(features[c] for c in np.flatnonzero(gaps[r]))}" for r in rows[:5])
        raise BadRequest(f"{self.lookup['model']} v{self.lookup['version']} is deployed with missing='error' "
                         f"and {len(rows)} row(s) lack features ({shown}): unknown or expired entities, or "
                         "null values")

    def _fill(self, matrix, gaps):
        """Count, and for ``impute`` fill, the missing features of the rows served (the deployed policy)."""
        self._count(gaps)
        if self.lookup["missing"] == "impute":
            matrix = np.where(gaps, self.impute, matrix)
        return matrix

    def _count(self, gaps):
        """Rows lacking features, in the counters behind mlplat's metrics (as ``p.predict`` counts them)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.lookup["metrics_index"], f"{self.lookup['model']}\t{self.lookup['version']}")
        pipe.hincrby(self.lookup["metrics_key"], "missing:", int(gaps.any(axis=1).sum()))
        for column, count in enumerate(gaps.sum(axis=0).tolist()):
            if count:
                pipe.hincrby(self.lookup["metrics_key"], "missing:" + self.lookup["features"][column], count)
        try:
            pipe.execute()
        except redis.RedisError:  # a counter is not worth failing a prediction for
            pass


def _runner(args, file, onnx):
    """The model's onnxruntime session and feed decoder, from the backend ``file`` beside this one, on the model
    file ``onnx`` (relative to the model repository) with this model's thread parameters."""
    spec = importlib.util.spec_from_file_location(
        "onnx_runner", os.path.join(args["model_repository"], args["model_version"], file))
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    path = os.path.join(os.path.dirname(args["model_repository"]), onnx)
    return runner.session(path, json.loads(args["model_config"]).get("parameters")), runner.feed


def _blocks(view):
    """A view's numeric features grouped by the record block holding them: block -> (matrix columns, slots in
    the block, validity flags), so that each block fills its columns in one step."""
    found = {}
    for column, (block, slot, flag) in zip(view["columns"], view["features"]):
        found.setdefault(block, ([], [], []))
        for part, value in zip(found[block], (column, slot, flag)):
            part.append(value)
    return {block: tuple(np.array(part, dtype=np.intp) for part in parts) for block, parts in found.items()}


def _failed(message):
    """A response that fails one request with ``message``."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _text(value, offset, index):
    """The ``index``-th string of a packed record (``uint32`` length + UTF-8 bytes each, after the fixed part)."""
    for _ in range(index):
        offset += 4 + int.from_bytes(value[offset:offset + 4], "little")
    length = int.from_bytes(value[offset:offset + 4], "little")
    return value[offset + 4:offset + 4 + length]


def _refuse_key(key, kind, values):
    """Raise :class:`BadRequest` naming the first row whose key is not UTF-8 or not an int64 (for an int64 key)."""
    for row, value in enumerate(values):
        try:
            text = value.decode() if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            raise BadRequest(f"row {row}: {key}={value!r} is not UTF-8 text") from None
        if kind == "int64" and not _int64_texts([text]):
            raise BadRequest(f"row {row}: {key}={text!r} is not an int64 key; send whole numbers as plain "
                             "decimal text such as '42' (no decimals, exponent, sign '+' or leading zeros)")


def _int64_texts(texts):
    """Whether every text is an int64 written as ``str(int)`` writes it, the form online keys are stored in."""
    try:
        numbers = list(map(int, texts))
    except ValueError:
        return False
    return list(map(str, numbers)) == texts and (not numbers or INT64_RANGE[0] <= min(numbers) <= max(numbers) <= INT64_RANGE[1])
