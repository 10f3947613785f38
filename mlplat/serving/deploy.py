"""Deploy registered models to a serving target (:mod:`mlplat.serving.target`) and call them over gRPC.

``Deployer.deploy`` exports the version to ONNX, checks the export against the native
model on rows from the model's own training data, writes a standard Triton
model repository entry (``<name>/config.pbtxt`` and ``<name>/<version>/model.onnx``,
Triton versions = registry versions) and has the target's Triton load it with explicit model control.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlplat.config import Settings
from mlplat.errors import InvalidArgument, OnnxExportError, ServingError
from mlplat.registry.logged_onnx import ONNX, PYFUNC, LoggedOnnx, difference, parity
from mlplat.registry.logged_onnx import load as load_logged
from mlplat.registry.names import check_model_name
from mlplat.serving.batching import Batching
from mlplat.serving.missing import DEFAULT as DEFAULT_POLICY
from mlplat.serving.missing import check_policy
from mlplat.serving.onnx_export import INPUT, Inputs, OnnxModel, check_parity, export
from mlplat.serving.target import BY_ID, SERVING_INFO, ServingTarget

if TYPE_CHECKING:
    from mlplat.audit import Audit
    from mlplat.features.store import FeatureStore
    from mlplat.registry.models import ModelRegistry

CONFIG = """name: "{name}"
backend: "onnxruntime"
input [ {inputs} ]
output [ {{ name: "{output}" data_type: TYPE_FP32 dims: [ {width} ] }} ]
version_policy: {{ specific: {{ versions: [ {versions} ] }} }}
{batching}"""
BY_ID_CONFIG = """name: "{name}"
backend: "python"
input [ {inputs} ]
output [ {{ name: "{output}" data_type: TYPE_FP32 dims: [ {width} ] }},
         {{ name: "{missing_output}" data_type: TYPE_BOOL dims: [ {n_features} ] }} ]
parameters: {{ key: "features" value: {{ string_value: "{features}" }} }}
parameters: {{ key: "missing" value: {{ string_value: "{missing}" }} }}
{batching}"""
PYFUNC_CONFIG = """name: "{name}"
backend: "python"
input [ {{ name: "{input}" data_type: TYPE_FP32 dims: [ {n_features} ] }} ]
output [ {{ name: "{output}" data_type: TYPE_FP32 dims: [ {width} ] }} ]
version_policy: {{ specific: {{ versions: [ {versions} ] }} }}
parameters: {{ key: "python" value: {{ string_value: "{python}" }} }}
parameters: {{ key: "pythonpath" value: {{ string_value: "{pythonpath}" }} }}
parameters: {{ key: "kind" value: {{ string_value: "{kind}" }} }}
{batching}"""
PYFUNC_MODEL = Path(__file__).parent / "backend" / "pyfunc.py"
PYFUNC_FOLDER = "mlflow_model"  # beside model.py in the version's folder: the pinned MLflow model its worker loads
RUNTIMES = {ONNX: "onnx", PYFUNC: "pyfunc (slower)"}
MISSING_OUTPUT = "missing_features"  # per row, a flag per feature (in the order of the "features" parameter)
BY_ID_MODEL = Path(__file__).parent / "backend" / "by_id.py"
BY_ID_RUNNER = "onnx_runner.py"  # beside it, the target's onnxruntime backend when by_id runs the model itself


@dataclass(frozen=True)
class Deployment:
    """A model version live on Triton."""

    name: str
    version: str
    endpoint: str  # Triton's gRPC host:port
    triton_model: str
    status: str
    features: list[str]
    http_endpoint: str = ""  # Triton's HTTP (KServe v2) host:port
    runtime: str = "onnx"  # how it is served: "onnx", or "pyfunc (slower)" for a model ONNX cannot express
    texts: list[str] = field(default_factory=list)  # the features sent as text (``input_text``), in order
    classes: list[Any] = field(default_factory=list)  # a classifier's classes, in the order of its probabilities

    def _repr_html_(self) -> str:
        return (f"<div><b>{self.triton_model}</b> v{self.version} — {self.status} at <code>{self.endpoint}</code>"
                f" (HTTP <code>{self.http_endpoint}</code>)<br>features: {', '.join(self.features)}</div>")


def config_text(name: str, versions: str, onnx: OnnxModel, width: int, batching: Batching) -> str:
    """The ``config.pbtxt`` shared by the CPU (python backend) and GPU (native onnxruntime) Tritons."""
    return CONFIG.format(name=name, versions=", ".join(versions.split()), inputs=input_text(onnx.inputs),
                         output=onnx.output, width=width, batching=batching.config())


def input_text(inputs: Inputs) -> str:
    """The ``input [...]`` entries of a config for a model's :class:`~mlplat.serving.onnx_export.Inputs`."""
    return ", ".join(f'{{ name: "{name}" data_type: {kind} dims: [ {width} ] }}' for name, kind, width in inputs.tensors())


class Deployer:
    """``p.deploy``, ``p.undeploy`` and ``p.deployments``: registered versions put live on a serving target.

    It reads versions from the model registry, their training rows and online layout from the feature
    store, writes into the target's model repository and records each change in the audit trail.
    """

    def __init__(self, target: ServingTarget, registry: ModelRegistry, features: FeatureStore, audit: Audit,
                 settings: Settings):
        self.target = target
        self.registry = registry
        self.features = features
        self.audit = audit
        self.settings = settings

    def deploy(self, name: str, version: str | int | None = None, alias: str = "champion", max_batch_size: int = 1024,
               instances: int = 1, tolerance: float = 1e-4, keep: tuple[str, ...] = (), default: bool = True,
               missing: str = DEFAULT_POLICY, queue_delay_us: int = 0) -> Deployment:
        """Export, check and load a registered version (default: the champion) on Triton.

        ``missing`` is what serving does with rows that lack feature values: ``"flag"`` them (default),
        refuse them (``"error"``) or ``"impute"`` the training rows' medians (see :mod:`mlplat.serving.missing`).

        ``keep`` names versions already deployed that stay loaded beside it (an A/B
        test serves two); ``default=False`` loads it without making it the version
        that ``predict`` uses when none is asked for; the default also gets a ``<name>_by_id`` model that reads
        its features from Redis inside Triton, unless it takes on-demand features. Dynamic batching merges
        concurrent requests up to ``max_batch_size`` rows, waiting up to ``queue_delay_us`` microseconds for more
        (default 0: no added delay); ``instances`` model copies run in parallel (one per core is a good start).
        The ``_by_id`` model gets these settings too (see :class:`~mlplat.serving.batching.Batching`).
        """
        from mlplat.features.on_demand import is_on_demand
        from mlplat.features.refs import resolve
        from mlplat.registry.artifacts import load_impute, load_model, load_spec, model_inputs, registered

        check_policy(missing)
        batching = Batching(max_batch_size, instances, queue_delay_us)
        _check_tolerance(tolerance)
        found = self.registry.get(name, version, alias if version is None else None)
        spec, entity_df = load_spec(self.settings, found.run_id)
        impute = load_impute(self.settings, found.run_id) if missing == "impute" else None
        if missing == "impute" and impute is None:
            raise ServingError(f"{name} v{found.version} was trained before mlplat recorded imputation values; "
                               "retrain it to deploy with missing='impute', or use 'flag' or 'error'.")
        requests = resolve(spec.features, self.features.get_view, set(entity_df.columns))
        columns = [c for r in requests for c in r.columns]
        entry = registered(self.settings, name, found.version)  # read once: its tags pin what is served
        tags = dict(entry.tags or {})
        logged = load_logged(self.settings, found.run_id, tags, f"Model {name!r} version {found.version}")
        categories = spec.categories or {}
        if logged is not None:
            onnx, width = self._logged(logged, columns, tolerance)
            classes = logged.classes or []
        else:
            model = load_model(self.settings, name, found.version, spec.family, entry)
            onnx = export(model, spec.family, spec.kind, columns, list(categories), spec.native_categories)
            sample = self.features.get_training_set(entity_df.head(256), spec.features,
                                                    timestamp_field=spec.timestamp_field)
            check_parity(onnx, model, spec.kind, model_inputs(sample, columns, spec.native_categories), tolerance)
            width = len(model.classes_) if spec.kind == "classifier" else 1
            classes = np.asarray(getattr(model, "classes_", [])).tolist()
        runtime = ONNX if onnx is not None else PYFUNC
        folder = self.target.models / name
        info = json.loads((folder / SERVING_INFO).read_text()) if (folder / SERVING_INFO).is_file() else {"versions": {}}
        kept = {v: info["versions"][v] for v in keep if v in info["versions"]}
        for v, other in kept.items():
            if other["features"] != spec.features:
                raise ServingError(f"{name} v{v} takes {other['features']} but v{found.version} takes "
                                   f"{spec.features}; versions served side by side must take the same features.")
        if set(keep) - set(kept):
            raise ServingError(f"Cannot keep {sorted(set(keep) - set(kept))} of {name}: deploy them first.")
        _same_runtime(name, found.version, runtime, kept)
        output = onnx.output if onnx is not None else logged.output
        versions = {**kept, found.version: {"features": spec.features, "columns": columns, "kind": spec.kind,
                                            "output": output, "missing": missing, "impute": impute,
                                            "runtime": runtime, "texts": onnx.inputs.texts if onnx else [],
                                            "categories": categories, "classes": classes}}
        (folder / found.version).mkdir(parents=True, exist_ok=True)
        loaded = " ".join(sorted(versions, key=int))
        if onnx is not None:
            (folder / found.version / "model.onnx").write_bytes(onnx.data)
            (folder / "config.pbtxt").write_text(config_text(name, loaded, onnx, width, batching))
        else:
            self._write_pyfunc(name, found.version, tags, logged, loaded, batching)
        default_version = found.version if default or not kept else info["default"]
        (folder / SERVING_INFO).write_text(json.dumps({"default": default_version, "versions": versions}))
        # On-demand features need request data and their function, which Redis alone cannot give the by-id model:
        # such a model is served through Client.predict (rows carry the request columns), with no stale by-id
        # model left.
        by_id = default and not any(is_on_demand(r.view) for r in requests)
        stale = default and not by_id and (folder.parent / f"{name}{BY_ID}").exists()
        if by_id:
            self._write_by_id(name, {**versions[found.version], "version": found.version}, requests, width,
                              batching)
        elif stale:
            shutil.rmtree(folder.parent / f"{name}{BY_ID}")
        with self.target.session() as triton:
            triton.load(name)
            if by_id:
                triton.load(f"{name}{BY_ID}")
            elif stale:
                triton.unload(f"{name}{BY_ID}")
            status = "READY" if triton.ready(name, found.version) else "UNAVAILABLE"
        where = triton.endpoints
        if runtime == PYFUNC and status == "READY":
            _check_live(where.grpc, name, found.version, logged, tolerance)
        self.audit.record("deployment", name, "deployed", found.version, endpoint=where.grpc, status=status,
                          serving=sorted(versions, key=int), default=default_version, missing=missing,
                          runtime=RUNTIMES[runtime])
        return _deployment(name, found.version, where, status, versions[found.version])

    # -- versions logged with their export (p.models.log, PyTorch), or served through their pyfunc ----------------
    def _logged(self, logged: LoggedOnnx, columns: list[str], tolerance: float) -> tuple[OnnxModel | None, int]:
        """The export logged where the model was trained (None for a pyfunc fallback), checked against the native
        outputs recorded with it: the native model is never loaded here."""
        if logged.n_features != len(columns):
            raise ServingError(f"The logged model takes {logged.n_features} features, its version {len(columns)}.")
        if logged.data is None:
            return None, logged.width
        parity(logged.data, logged.output, logged.rows, logged.native, tolerance, "the logged model")
        return OnnxModel(logged.data, logged.output, Inputs(list(range(logged.n_features)))), logged.width

    def _write_pyfunc(self, name: str, version: str, tags: dict[str, str], logged: LoggedOnnx, versions: str,
                      batching: Batching) -> None:
        """A Triton python model whose worker (the platform's interpreter) serves the version's MLflow pyfunc."""
        from mlplat.registry.integrity import verified_copy

        target = self.target.models / name / version
        shutil.rmtree(target / PYFUNC_FOLDER, ignore_errors=True)
        with verified_copy(self.settings, name, version, tags, recorded=True) as (files, _):
            shutil.copytree(files, target / PYFUNC_FOLDER)
        shutil.copyfile(PYFUNC_MODEL, target / "model.py")
        (self.target.models / name / "config.pbtxt").write_text(PYFUNC_CONFIG.format(
            name=name, versions=", ".join(versions.split()), input=INPUT, n_features=logged.n_features,
            output=logged.output, width=logged.width, batching=batching.config(), python=sys.executable,
            pythonpath=_platform_path(), kind=logged.kind))

    def _write_by_id(self, name: str, info: dict[str, Any], requests: list, width: int,
                     batching: Batching) -> None:
        """The ``<name>_by_id`` model: entity ids in, predictions out, features read from Redis inside Triton.

        Batched like the model itself (``batching``: its copies, dynamic batching and queue delay): the
        requests of one batch make one Redis MGET and one call of the model, run in by_id's own process where the
        target's onnxruntime backend is mlplat's python one (:attr:`ServingTarget.onnx_runner`).

        Its ``lookup.json`` says where the features live and how they are packed, each key's kind, and the
        version's missing-feature policy with its imputation values (see :mod:`mlplat.serving.missing`).
        """
        from mlplat.features.online import RecordCodec
        from mlplat.features.redis_service import reader_url
        from mlplat.monitoring.predlog import metrics_index, metrics_key

        online = self.features.online
        views, keys, kinds, column = [], [], {}, 0
        for request in requests:
            codec = RecordCodec(request.view)
            numbers = [(k, f) for k, f in enumerate(request.features) if f not in codec.strings]
            texts = [(k, f) for k, f in enumerate(request.features) if f in codec.strings]
            views.append({"prefix": online.key_prefix(request.view), "dtype": codec.dtype.descr,
                          "join_keys": request.view.join_keys,
                          "features": [[*codec.slot[f], codec.position[f]] for _, f in numbers],
                          "columns": [column + k for k, _ in numbers], "strings": len(codec.strings),
                          "texts": [[codec.strings.index(f), codec.position[f], column + k] for k, f in texts]})
            column += len(request.features)
            keys += [k for k in request.view.join_keys if k not in keys]
            kinds.update({k: v for k, v in self.features.offline.key_kinds(request.view).items() if k not in kinds})
        prefix, version = self.settings.online_prefix, info["version"]
        # The embedded Redis's state file says where it listens now, should a restart move it.
        located = self.settings.run_dir / "redis.json" if online.locate else None
        # Triton reads as the online store's reader (it may write the prediction counters only), where there is one.
        redis_url = reader_url(self.settings) if online.locate or self.settings.online_reader else online.url
        lookup = {"redis": redis_url, "redis_state": located and str(located), "model": name,
                  "version": version, "output": info["output"], "keys": keys,
                  "key_kinds": {k: kinds.get(k) for k in keys}, "views": views, "n_features": column,
                  "features": info["features"], "missing": info["missing"], "impute": info["impute"],
                  "texts": info.get("texts") or [], "missing_output": MISSING_OUTPUT, "metrics_key": metrics_key(prefix, name, version),
                  "metrics_index": metrics_index(prefix)}
        folder = self.target.models / f"{name}{BY_ID}"
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BY_ID_MODEL, folder / "1" / "model.py")  # not its mode: the caller's umask decides
        runner = self.target.onnx_runner if info["runtime"] == ONNX else None
        if runner:  # the model runs in by_id's own process, with the backend's own code
            shutil.copyfile(runner, folder / "1" / BY_ID_RUNNER)
            lookup.update(runner=BY_ID_RUNNER, onnx=f"{name}/{version}/model.onnx")
        else:
            (folder / "1" / BY_ID_RUNNER).unlink(missing_ok=True)
        (folder / "1" / "lookup.json").write_text(json.dumps(lookup))
        inputs = ", ".join(f'{{ name: "{k}" data_type: TYPE_STRING dims: [ 1 ] }}' for k in keys)
        (folder / "config.pbtxt").write_text(BY_ID_CONFIG.format(
            name=f"{name}{BY_ID}", inputs=inputs, output=info["output"], width=width, missing_output=MISSING_OUTPUT,
            n_features=column, features=",".join(info["features"]), missing=info["missing"],
            batching=batching.config()))

    def undeploy(self, name: str) -> None:
        """Unload a model from Triton and remove it from the model repository."""
        folder = self.target.models / check_model_name(name)
        if not folder.exists():
            raise ServingError(f"{name!r} is not deployed; deployed: {', '.join(self.target.deployed()) or 'none'}.")
        with self.target.session() as triton:
            triton.unload(name)
            if (folder.parent / f"{name}{BY_ID}").exists():
                triton.unload(f"{name}{BY_ID}")
        shutil.rmtree(folder)
        shutil.rmtree(folder.parent / f"{name}{BY_ID}", ignore_errors=True)
        self.audit.record("deployment", name, "undeployed")

    def deployments(self) -> list[Deployment]:
        """What is deployed, with Triton's view of each model's state."""
        found = []
        with self.target.session() as triton:
            where = triton.endpoints
            for name in self.target.deployed():
                info = self.target.serving_info(name)
                for version, details in sorted(info["versions"].items(), key=lambda item: int(item[0])):
                    ready = triton.ready(name, version)
                    found.append(_deployment(name, version, where, "READY" if ready else "UNAVAILABLE", details))
        return found


def _deployment(name: str, version: str, where: Any, status: str, details: dict[str, Any]) -> Deployment:
    """A :class:`Deployment` from a version's serving info."""
    texts = [details["features"][i] for i in details.get("texts") or []]
    return Deployment(name, version, where.grpc, name, status, details["features"], where.http,
                      RUNTIMES[details.get("runtime", ONNX)], texts, details.get("classes") or [])


def _same_runtime(name: str, version: str, runtime: str, kept: dict[str, Any]) -> None:
    """Versions served side by side share one Triton config, so one runtime."""
    for other, info in kept.items():
        if info.get("runtime", ONNX) != runtime:
            raise ServingError(f"{name} v{other} is served by {RUNTIMES[info.get('runtime', ONNX)]} but v{version} by "
                               f"{RUNTIMES[runtime]}; versions served side by side must share a runtime: deploy "
                               "it alone (without keep=), or under another name.")


def _platform_path() -> str:
    """Where this mlplat is imported from: the pyfunc worker, run by the same interpreter, imports it there too."""
    return str(Path(__file__).resolve().parents[2])  # the folder holding the mlplat package


def _check_tolerance(tolerance: Any) -> None:
    """InvalidArgument unless ``tolerance`` (the export's allowed difference from the model) is a number >= 0."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < float("inf"):
        raise InvalidArgument(f"p.deploy(..., tolerance=) takes a number >= 0 (the largest difference allowed "
                              f"between the ONNX export's outputs and the model's), not {tolerance!r}.")


def _check_live(endpoint: str, name: str, version: str, logged: LoggedOnnx, tolerance: float) -> None:
    """Ask the loaded pyfunc model for the recorded sample rows; refuse outputs other than the native model's."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(endpoint)
    try:
        tensor = grpc.InferInput(INPUT, list(logged.rows.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(logged.rows, dtype=np.float32))
        result = client.infer(name, [tensor], model_version=version).as_numpy(logged.output)
    finally:
        client.close()
    worst = difference(result, logged.native)
    if not worst <= tolerance:
        raise OnnxExportError(f"{name} v{version}'s pyfunc answers differ from the outputs recorded when it was "
                              f"logged by up to {worst:.3g} (allowed {tolerance:g}); it stays loaded but check it.")
