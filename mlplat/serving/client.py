"""``mlplat.serving.Client``: entity ids in, predictions out, over Triton's gRPC API.

Features are looked up online (one MGET) and sent as one FP32 tensor to the serving target's
Triton (:mod:`mlplat.serving.target`). The gRPC channel is kept open between calls. If Triton
has died, or hangs (a request past its deadline and no answer to a health check within a second),
the client has the target bring it back (the embedded one is restarted with the deployed models)
and retries the request once.
Every request is counted, failed ones by error class, and (at
``prediction_sample_rate``) logged, off the request path (:mod:`mlplat.monitoring.predlog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from mlplat.errors import ServiceError, ServingError
from mlplat.serving import missing
from mlplat.serving.coalesce import Coalescer, ThreadCoalescer
from mlplat.serving.onnx_export import INPUT, TEXT_INPUT
from mlplat.serving.target import ServingTarget

if TYPE_CHECKING:
    from mlplat.features.store import FeatureStore
    from mlplat.monitoring.predlog import PredictionLogger

INFER_TIMEOUT = 10.0  # seconds a request may take before Triton is suspected of hanging


@dataclass(frozen=True)
class Prediction:
    """Outputs for each row and the model version that served them.

    ``missing`` maps each row that lacked feature values (an unknown or expired entity, a null) to the
    features it lacked; how they were served is the deployment's policy (:mod:`mlplat.serving.missing`).
    """

    model: str
    version: str
    outputs: np.ndarray  # class probabilities (rows x classes) or values (rows x 1)
    latency_ms: float  # the whole call: online lookup and gRPC round trip
    features: list[str] = field(default_factory=list)  # the version's features, in column order
    gaps: np.ndarray | None = None  # rows x features, True where a value was missing; None when none was

    @cached_property
    def missing(self) -> dict[int, list[str]]:
        """Each row that lacked features, with the features it lacked (built when first asked for)."""
        return missing.lacking(self.gaps, self.features)


class Client:
    """Predict with models deployed on a serving target, with features from the feature store.

    ``prediction_log`` makes the :class:`~mlplat.monitoring.predlog.PredictionLogger` that counts and logs
    the requests, on first use.
    """

    def __init__(self, target: ServingTarget, features: FeatureStore, prediction_log: Callable[[], PredictionLogger]):
        self.target = target
        self.features = features
        self._prediction_log = prediction_log
        self._grpc: Any = None
        self._aio: tuple[Any, Any] | None = None  # (event loop, its asyncio gRPC client)
        self._info: dict[str, dict[str, Any]] = {}

    def predict(self, name: str, entity_rows: Any = None, features: Any = None, version: str | None = None,
                arm: str = "") -> Prediction:
        """Rows of entity ids (``[{"driver_id": 1}]`` or ``{"driver_id": [1, 2]}``), or a feature matrix.

        A model that takes on-demand features needs their request data in the rows too
        (``[{"driver_id": 1, "distance_km": 4.2}]``): they are computed as in training.

        ``version`` picks one of the loaded versions (default: the deployed default); ``arm`` is the
        experiment arm recorded in the prediction log. A call that fails is counted, by the class of its
        error, and re-raised.

        Calls from concurrent threads for one model version are coalesced, as :meth:`apredict`'s are: a call
        that finds none in flight is sent at once; the calls that arrive meanwhile go out together next, as
        one online lookup and one inference, each answered with its own rows.
        """
        try:
            info = self._version(name, version)
            return self._threads.submit((name, info["version"]), (entity_rows, features, arm, time.perf_counter()))
        except Exception as exc:
            self._count_error(name, version, exc)
            raise

    async def apredict(self, name: str, entity_rows: Any = None, features: Any = None, version: str | None = None,
                       arm: str = "") -> Prediction:
        """:meth:`predict` for asyncio callers, over Triton's asyncio gRPC client.

        Concurrent calls for one model version are coalesced (:mod:`mlplat.serving.coalesce`): while a request
        is in flight, the calls that arrive wait and then go out together, as one online lookup and one
        inference, each answered with its own rows; a call whose rows are refused (a bad value, a missing
        feature under ``missing="error"``) fails alone. A lone caller is sent at once. The online lookup itself
        is a short blocking call (one MGET for the whole batch).
        """
        try:
            info = self._version(name, version)
            return await self._coalescer.submit((name, info["version"]), (entity_rows, features, arm,
                                                                           time.perf_counter()))
        except Exception as exc:
            self._count_error(name, version, exc)
            raise

    def _count_error(self, name: str, version: str | None, exc: Exception) -> None:
        """Count a failed call by the class of its error."""
        label = version or self._info.get(name, {}).get("default", "")
        with contextlib.suppress(Exception):  # counting it must never hide the error itself
            self.log.error(name, str(label), type(exc).__name__)

    @cached_property
    def _threads(self) -> ThreadCoalescer:
        return ThreadCoalescer(self._send)

    @cached_property
    def _coalescer(self) -> Coalescer:
        return Coalescer(self._asend)

    def _send(self, key: tuple[str, str], calls: list[tuple]) -> list[Any]:
        """One batch of :meth:`predict` calls: a Prediction for each, or the error of each call refused."""
        info, prepared, tensors = self._prepared(key, calls)
        if tensors is None:
            return prepared
        return self._answers(key[0], info, calls, prepared, self._infer(key[0], info, tensors))

    async def _asend(self, key: tuple[str, str], calls: list[tuple]) -> list[Any]:
        """One batch of :meth:`apredict` calls, as :meth:`_send`."""
        info, prepared, tensors = self._prepared(key, calls)
        if tensors is None:
            return prepared
        return self._answers(key[0], info, calls, prepared, await self._ainfer(key[0], info, tensors))

    def _prepared(self, key: tuple[str, str], calls: list[tuple]) -> tuple[dict[str, Any], list[Any], Any]:
        """The version's info, each call's checked rows (or its error), and the tensors of all the rows accepted
        (None when none is): one online lookup for every call that sent entity ids."""
        name, version = key
        info = self._version(name, version)
        online = iter(self._looked_up(info, [rows for rows, features, *_ in calls if features is None]))
        prepared: list[Any] = []
        for _, features, *_ in calls:
            try:
                rows = next(online) if features is None else features
                if isinstance(rows, Exception):
                    raise rows
                prepared.append(self._checked(name, info, rows))
            except Exception as exc:
                prepared.append(exc)
        ok = [p for p in prepared if not isinstance(p, Exception)]
        tensors = {k: np.concatenate([p[2][k] for p in ok]) for k in ok[0][2]} if ok else None
        return info, prepared, tensors

    def _looked_up(self, info: dict[str, Any], calls: list[Any]) -> list[Any]:
        """Each call's online feature rows, from one lookup for them all. When that one fails for what a caller
        sent (a missing key, a key of the wrong kind, rows of another shape), each call is looked up alone, so
        that the error, in its place in the list, is that caller's only; Redis being down fails them all."""
        try:
            return _split(self._online(info, _merged(calls)), [_count(r) for r in calls]) if calls else []
        except ServiceError:
            raise
        except Exception:
            if len(calls) == 1:
                raise
        found: list[Any] = []
        for rows in calls:
            try:
                found.append(self._online(info, rows))
            except ServiceError:
                raise
            except Exception as exc:
                found.append(exc)
        return found

    def _answers(self, name: str, info: dict[str, Any], calls: list[tuple], prepared: list[Any],
                 result: Any) -> list[Any]:
        """Each call's Prediction from its share of the batch's ``result``, or its error."""
        outputs, served = result.as_numpy(info["output"]), result.get_response().model_version
        answers, start = [], 0
        for (_, _, arm, started), found in zip(calls, prepared):
            if isinstance(found, Exception):
                answers.append(found)
                continue
            features, gaps, _ = found
            answers.append(self._answer(name, info, features, gaps, outputs[start:start + len(features)], served,
                                        started, arm))
            start += len(features)
        return answers

    def _version(self, name: str, version: str | None) -> dict[str, Any]:
        """The serving info of ``name``'s ``version`` (default: the deployed default), with its version."""
        deployed = self._info.get(name) or self._info.setdefault(name, self.target.serving_info(name))
        version = str(version or deployed["default"])
        if version not in deployed["versions"]:
            raise ServingError(f"{name} v{version} is not loaded on Triton; loaded: {sorted(deployed['versions'])}.")
        details = deployed["versions"][version]
        if details.get("texts") and "codes" not in details:  # each string feature's category codes, made once
            details["codes"] = [{c: float(i) for i, c in enumerate(found)} for found in details["categories"].values()]
        self._columns(details)
        return {**details, "version": version}

    def _answer(self, name: str, info: dict[str, Any], features: np.ndarray, gaps: np.ndarray | None,
                outputs: np.ndarray, served: str, started: float, arm: str) -> Prediction:
        """A call's Prediction, logged and its missing features counted."""
        latency = (time.perf_counter() - started) * 1000
        self.log.log(name, info["version"], info["columns"], features, outputs, latency, arm)
        if gaps is not None:
            self.log.missing(name, info["version"], info["features"], gaps)
        return Prediction(name, served, outputs, latency, info["features"], gaps)

    def _checked(self, name: str, info: dict[str, Any],
                 features: Any) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """The feature matrix sent (strings as their category codes), where it lacked values (see
        :func:`missing.apply`), and the input tensors."""
        texts = info.get("texts") or []
        strings = None
        if texts:
            features, strings = _coded(name, info, features)
        try:
            with np.errstate(over="ignore"):  # too large for float32 becomes inf, refused below
                features = np.ascontiguousarray(features, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ServingError(f"{name} takes numeric features; these cannot be read as float32 ({exc}).") from None
        if features.ndim != 2 or features.shape[1] != len(info["features"]):
            raise ServingError(f"{name} takes rows of {len(info['features'])} features ({info['features']}), "
                               f"got an array of shape {features.shape}.")
        if np.isinf(features).any():
            row, column = (int(i[0]) for i in np.nonzero(np.isinf(features)))
            raise ServingError(f"{name}: row {row}'s {info['features'][column]} is infinite or beyond float32 "
                               "(about 3.4e38); send finite values (NaN marks a missing one).")
        features, gaps = missing.apply(name, info, features)
        return features, gaps, {INPUT: features} if strings is None else _tensors(features, strings, texts)

    @cached_property
    def log(self) -> PredictionLogger:
        """The :class:`~mlplat.monitoring.predlog.PredictionLogger` of this client."""
        return self._prediction_log()

    def _columns(self, info: dict[str, Any]) -> list[str]:
        """The feature columns a version takes, as named in training (and in its drift reference)."""
        if "columns" not in info:  # deployed before mlplat recorded them
            from mlplat.features.refs import resolve

            info["columns"] = [c for r in resolve(info["features"], self.features.get_view, set())
                               for c in r.columns]
        return info["columns"]

    def _online(self, info: dict[str, Any], entity_rows: Any) -> np.ndarray:
        online = self.features.get_online_features(info["features"], entity_rows).to_dict()
        keys = entity_rows if isinstance(entity_rows, dict) else (entity_rows[0] if entity_rows else {})
        return np.array([v for k, v in online.items() if k not in keys],
                        dtype=object if info.get("texts") else np.float32).T

    def _infer(self, name: str, info: dict[str, Any], tensors: dict[str, np.ndarray]) -> Any:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        for attempt in (1, 2):
            try:
                return self._client().infer(name, **_request(grpcclient, info, tensors), model_version=info["version"],
                                            client_timeout=INFER_TIMEOUT)
            except InferenceServerException as exc:
                if attempt == 2 or not self._recovered(str(exc.status())):
                    raise ServingError(f"Triton could not serve {name}: {exc.message()}") from None

    async def _ainfer(self, name: str, info: dict[str, Any], tensors: dict[str, np.ndarray]) -> Any:
        """:meth:`_infer` over the asyncio gRPC client (one per event loop), recovering Triton off the loop."""
        import tritonclient.grpc.aio as aioclient
        from tritonclient.utils import InferenceServerException

        for attempt in (1, 2):
            loop = asyncio.get_running_loop()
            if self._aio is None or self._aio[0] is not loop:
                where = await asyncio.to_thread(self.target.ensure)
                self._aio = (loop, aioclient.InferenceServerClient(where.grpc))
            try:
                return await self._aio[1].infer(name, **_request(aioclient, info, tensors),
                                                model_version=info["version"], client_timeout=INFER_TIMEOUT)
            except InferenceServerException as exc:
                status = str(exc.status())
                if attempt == 2 or not ("UNAVAILABLE" in status or "DEADLINE_EXCEEDED" in status):
                    raise ServingError(f"Triton could not serve {name}: {exc.message()}") from None
                client, self._aio = self._aio[1], None
                await client.close()
                if not await asyncio.to_thread(self.target.recover, late="UNAVAILABLE" not in status):
                    raise ServingError(f"Triton could not serve {name}: {exc.message()}") from None

    def _client(self) -> Any:
        if self._grpc is None:
            import tritonclient.grpc as grpcclient

            self._grpc = grpcclient.InferenceServerClient(self.target.ensure().grpc)
        return self._grpc

    def _recovered(self, status: str) -> bool:
        """After a failed request: if Triton is gone or hangs, have the target bring it back; True to retry.

        A server past a request's deadline that still answers a health check within a second is
        only slow: it is kept, and the request is not retried.
        """
        gone, late = "UNAVAILABLE" in status, "DEADLINE_EXCEEDED" in status
        if not gone and not late:
            return False
        self._grpc.close()
        self._grpc = None
        return self.target.recover(late=not gone)

    def forget(self, name: str) -> None:
        """Drop what is cached about ``name`` (after a (re)deployment)."""
        self._info.pop(name, None)

    def close(self) -> None:
        if "log" in self.__dict__:
            self.__dict__.pop("log").close()
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None
        self._aio = None  # its channel belongs to its event loop, which closes it


def _coded(name: str, info: dict[str, Any], features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a model that takes strings: every column as a float (strings as the index of their category in
    training, NaN where missing or never seen; what the missing-feature policy and the prediction log see),
    and the string columns as text (``""`` where missing)."""
    rows = np.asarray(features, dtype=object)
    if rows.ndim != 2 or rows.shape[1] != len(info["features"]):
        raise ServingError(f"{name} takes rows of {len(info['features'])} features ({info['features']}), "
                           f"got an array of shape {rows.shape}.")
    coded = rows.copy()
    strings = np.empty((len(rows), len(info["texts"])), dtype=object)
    for k, column in enumerate(info["texts"]):
        texts = ["" if v is None or v != v else v for v in rows[:, column].tolist()]  # None, NaN: missing
        wrong = next((v for v in texts if not isinstance(v, str) or "\0" in v), None)
        if wrong is not None:  # a NUL would end the string inside the model (ONNX strings are C strings)
            raise ServingError(f"{name}: {info['features'][column]} is a string feature, got {wrong!r}; send "
                               "text without NUL characters (None or '' marks a missing one).")
        strings[:, k] = texts
        codes = info["codes"][k]
        coded[:, column] = [codes.get(v, np.nan) for v in texts]
    return coded, strings


def _tensors(coded: np.ndarray, strings: np.ndarray, texts: list[int]) -> dict[str, np.ndarray]:
    """The numeric and string input tensors of a model that takes strings (see ``onnx_export.Inputs``)."""
    numbers = [i for i in range(coded.shape[1]) if i not in texts]
    found = {INPUT: np.ascontiguousarray(coded[:, numbers])} if numbers else {}
    try:
        return {**found, TEXT_INPUT: np.char.encode(strings.astype(str), "utf-8").astype(object)}
    except UnicodeEncodeError as exc:
        raise ServingError(f"A string feature holds {exc.object[exc.start:exc.end]!r}, which is not text (UTF-8 "
                           "has no lone surrogates); send valid text.") from None


def _request(module: Any, info: dict[str, Any], tensors: dict[str, np.ndarray]) -> dict[str, list]:
    """The inputs and requested output of an inference, for ``tritonclient.grpc`` or its ``aio`` twin."""
    inputs = []
    for name, values in tensors.items():
        inputs.append(module.InferInput(name, list(values.shape), "BYTES" if values.dtype == object else "FP32"))
        inputs[-1].set_data_from_numpy(values)
    return {"inputs": inputs, "outputs": [module.InferRequestedOutput(info["output"])]}


def _count(entity_rows: Any) -> int:
    """How many rows ``entity_rows`` holds (a list of dicts, or a dict of lists)."""
    if isinstance(entity_rows, dict):
        return len(next(iter(entity_rows.values()), []))
    return len(entity_rows)


def _merged(calls: list[Any]) -> list[dict[str, Any]]:
    """The entity rows of several calls as one list of dicts, in order (a lone call's rows as they are)."""
    if len(calls) == 1:
        return calls[0]
    rows: list[dict[str, Any]] = []
    for found in calls:
        if isinstance(found, dict):
            rows.extend(dict(zip(found, values)) for values in zip(*found.values()))
        else:
            rows.extend(found)
    return rows


def _split(matrix: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """``matrix``'s rows cut into consecutive parts of ``counts`` rows."""
    return np.split(matrix, np.cumsum(counts)[:-1])
