"""Estimators by name or instance, their kind, and their distributed (Dask) twins.

``"xgboost.XGBClassifier"``, ``"lightgbm.LGBMRegressor"`` and any scikit-learn
estimator path (``"sklearn.ensemble.RandomForestClassifier"``) resolve to a
class; an instance is used as given (cloned, with ``params`` applied on top).
"""

from __future__ import annotations

import base64
import difflib
import importlib
import inspect
import numbers
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlplat.errors import InvalidArgument, MissingDependency

SHORT_NAMES = {
    "xgboost": "xgboost.XGBClassifier", "xgboost_regressor": "xgboost.XGBRegressor",
    "lightgbm": "lightgbm.LGBMClassifier", "lightgbm_regressor": "lightgbm.LGBMRegressor",
    "random_forest": "sklearn.ensemble.RandomForestClassifier",
    "logistic_regression": "sklearn.linear_model.LogisticRegression",
}
_EXTRAS = {"xgboost": "xgboost", "lightgbm": "lightgbm", "sklearn": "training", "skorch": "torch", "torch": "torch"}
_SEED_PARAMS = ("random_state", "seed")


@dataclass(frozen=True)
class EstimatorSpec:
    """What a training run needs to know about an estimator."""

    path: str  # importable "module.Class"
    params: dict[str, Any]  # constructor parameters as given by the user (plus the seed)
    kind: str  # "classifier" or "regressor"
    family: str  # "sklearn", "xgboost", "lightgbm" or "torch" (skorch): decides the MLflow flavour and the Dask path
    template: str | None = None  # a composite estimator (a Pipeline, ...), unfitted: see :func:`build`

    def build(self, **extra: Any) -> Any:
        """A fresh, unfitted estimator."""
        return build(self.path, self.params, self.template, **extra)


def build(path: str, params: dict[str, Any], template: str | None = None, **extra: Any) -> Any:
    """A fresh, unfitted estimator: ``path``'s class with ``params`` (and ``extra``), or the composite estimator
    ``template`` holds (skops, base64; only the types of the libraries mlplat trains with are loaded)."""
    if template is None:
        return load_class(path)(**decode_params(params), **extra)
    import skops.io

    from mlplat.registry.integrity import trusted_type

    data = base64.b64decode(template)
    found = skops.io.get_untrusted_types(data=data)
    refused = [t for t in found if not trusted_type(t)]
    if refused:
        raise InvalidArgument(f"The estimator holds {refused}, which mlplat does not load: build pipelines from "
                              "scikit-learn, XGBoost and LightGBM parts, or log a model trained elsewhere.")
    model = skops.io.loads(data, trusted=found)
    return model.set_params(**params, **extra) if params or extra else model


def _composite(estimator: Any) -> bool:
    """Whether an estimator instance holds other estimators (a Pipeline, a ColumnTransformer, a stack, ...) or
    cannot be made from its class alone: then it is recorded whole, not as a class and parameters."""
    try:
        type(estimator)()
    except TypeError:
        return True
    return any(hasattr(v, "get_params") for v in estimator.get_params(deep=False).values())


def _template(estimator: Any, params: dict[str, Any], seed: int) -> EstimatorSpec:
    """The spec of a composite estimator: a clone with ``params`` applied and ``seed`` for every unset seed."""
    import skops.io
    from sklearn.base import clone, is_classifier, is_regressor

    model = clone(estimator)
    try:
        model.set_params(**params)
    except ValueError as exc:
        raise InvalidArgument(f"{type(estimator).__name__}: {exc}") from None
    model.set_params(**{k: seed for k, v in model.get_params(deep=True).items()
                        if k.split("__")[-1] in _SEED_PARAMS and v is None})
    path = f"{type(model).__module__}.{type(model).__qualname__}"
    kind = "classifier" if is_classifier(model) else "regressor" if is_regressor(model) else None
    if kind is None:
        raise InvalidArgument(f"{path} is neither a classifier nor a regressor; mlplat trains those two kinds.")
    return EstimatorSpec(path, {}, kind, "sklearn", base64.b64encode(skops.io.dumps(model)).decode())


def load_class(path: str) -> type:
    """Import ``module.Class``; clear errors for typos and missing packages."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise InvalidArgument(
            f"Unknown estimator {path!r}: give 'module.Class' (e.g. 'xgboost.XGBClassifier') or one of "
            f"{', '.join(SHORT_NAMES)}."
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        root = module_name.split(".")[0]
        if root in _EXTRAS and exc.name and exc.name.split(".")[0] == root:
            raise MissingDependency(f"{path} needs {root}: pip install 'mlplat[{_EXTRAS[root]}]'.") from None
        raise InvalidArgument(f"Unknown estimator {path!r}: there is no module {module_name!r}.") from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise InvalidArgument(f"Unknown estimator {path!r}: {module_name} has no {class_name!r}"
                              f"{_did_you_mean(class_name, dir(module))}.") from None


def resolve(estimator: Any, params: dict[str, Any] | None, seed: int) -> EstimatorSpec:
    """An EstimatorSpec from a name, a class or an instance, with the seed applied where supported."""
    if params is not None and not isinstance(params, Mapping):
        raise InvalidArgument(f"params must be a dict of estimator parameters, e.g. {{'n_estimators': 200}}; "
                              f"got {type(params).__name__}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InvalidArgument(f"seed must be a whole number, e.g. seed=0; got {seed!r}.")
    params = dict(params or {})
    if not isinstance(estimator, str) and not hasattr(estimator, "get_params"):
        raise InvalidArgument(
            f"estimator {reprlib.repr(estimator)} is not an estimator; give a name ('xgboost.XGBClassifier' or one "
            f"of {', '.join(SHORT_NAMES)}), a scikit-learn style class, or an instance of one.")
    if not isinstance(estimator, (str, type)) and _family(type(estimator).__module__) != "torch" \
            and _composite(estimator):
        return _template(estimator, params, seed)
    if isinstance(estimator, str):
        path = SHORT_NAMES.get(estimator, estimator)
        cls = load_class(path)
        if _family(path) == "torch":
            return _torch_spec(cls, path, params)
    elif _family((estimator if isinstance(estimator, type) else type(estimator)).__module__) == "torch":
        cls = estimator if isinstance(estimator, type) else type(estimator)
        explicit = {} if isinstance(estimator, type) else _torch_explicit(estimator)
        return _torch_spec(cls, f"{cls.__module__}.{cls.__qualname__}", {**explicit, **params})
    else:
        cls = estimator if isinstance(estimator, type) else type(estimator)
        path = f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(estimator, type):
            params = {**_explicit_params(estimator), **params}
    if not (hasattr(cls, "fit") and hasattr(cls, "predict")):
        raise InvalidArgument(f"{path} is not an estimator: it needs fit() and predict().")
    try:
        accepted = cls().get_params()
    except TypeError:
        accepted = {}
    unknown = sorted(set(params) - set(accepted)) if accepted else []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()):
        # **kwargs go on to the booster (xgboost, lightgbm): refuse only what looks like a typo.
        unknown = [name for name in unknown if difflib.get_close_matches(name, accepted, n=1, cutoff=0.85)]
    if unknown:
        raise InvalidArgument(f"{path} has no parameter {unknown[0]!r}{_did_you_mean(unknown[0], accepted)}; "
                              f"it takes {', '.join(sorted(accepted))}.")
    if _family(path) == "lightgbm":
        params.setdefault("verbose", -1)  # LightGBM logs every tree otherwise
    for name in _SEED_PARAMS:
        if name in accepted and params.get(name) is None:
            params[name] = seed
            break
    return EstimatorSpec(path, params, _kind(cls, path), _family(path))


def _did_you_mean(word: str, choices: Any) -> str:
    hint = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _explicit_params(estimator: Any) -> dict[str, Any]:
    """Parameters of an instance that differ from the class defaults."""
    defaults = type(estimator)().get_params()
    return {k: v for k, v in estimator.get_params().items() if k in defaults and defaults[k] is not v
            and not _same(defaults[k], v)}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _kind(cls: type, path: str) -> str:
    estimator_type = getattr(cls, "_estimator_type", None)
    if estimator_type is None:
        from sklearn.base import is_classifier, is_regressor

        instance = cls()
        estimator_type = "classifier" if is_classifier(instance) else "regressor" if is_regressor(instance) else None
    if estimator_type not in ("classifier", "regressor"):
        raise InvalidArgument(f"{path} is neither a classifier nor a regressor; mlplat trains those two kinds.")
    return estimator_type


def _family(path: str) -> str:
    root = path.split(".")[0]
    return root if root in ("xgboost", "lightgbm") else "torch" if root == "skorch" else "sklearn"


# -- skorch nets (family "torch") ----------------------------------------------------------------------------------
_CLASS = "class"  # a parameter that is a class or function is recorded as {"class": "module.qualname"}


def _torch_explicit(net: Any) -> dict[str, Any]:
    """The parameters a skorch net was made with (those differing from its constructor's defaults)."""
    defaults: dict[str, Any] = {}
    for cls in type(net).__mro__:  # skorch passes most parameters on to its base classes through **kwargs
        if "__init__" in vars(cls):
            for name, parameter in inspect.signature(cls.__init__).parameters.items():
                defaults.setdefault(name, parameter.default)
    empty = inspect.Parameter.empty
    return {k: v for k, v in net.get_params(deep=False).items() if not k.startswith("_")  # skorch's bookkeeping
            and (defaults.get(k, empty) is empty or not _same(defaults[k], v))}


def _torch_spec(cls: type, path: str, params: dict[str, Any]) -> EstimatorSpec:
    """A skorch net's spec: its module (a class, or its 'module.Class' name) and plain parameters, as JSON."""
    from sklearn.base import ClassifierMixin

    if "module" not in params:
        raise InvalidArgument(f"{path} needs its torch module: params={{'module': MyModule}} (the class, or its "
                              "'package.module.Class' name), or pass skorch.NeuralNetClassifier(MyModule, ...).")
    encoded = {}
    for key, value in params.items():
        if isinstance(value, str) and key in ("module", "criterion", "optimizer"):
            load_class(value)
            value = {_CLASS: value}
        elif isinstance(value, type) or inspect.isfunction(value):
            value = {_CLASS: f"{value.__module__}.{value.__qualname__}"}
        elif not isinstance(value, (str, int, float, bool, type(None))):
            raise InvalidArgument(f"{path} parameter {key}={reprlib.repr(value)}: mlplat records a net's parameters "
                                  "to rebuild it; give classes and plain values (numbers, strings), not instances.")
        encoded[key] = value
    return EstimatorSpec(path, encoded, "classifier" if issubclass(cls, ClassifierMixin) else "regressor", "torch")


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    """Constructor parameters from a spec: classes recorded by name are imported again."""
    return {k: load_class(v[_CLASS]) if isinstance(v, dict) and set(v) == {_CLASS} else v for k, v in params.items()}


def dask_twin(path: str, family: str) -> type | None:
    """The library's own distributed estimator for ``path`` (xgboost.dask, lightgbm.dask), if any."""
    name = path.rsplit(".", 1)[1]
    if family == "xgboost":
        import xgboost.dask

        return getattr(xgboost.dask, f"Dask{name}", None)
    if family == "lightgbm":
        import lightgbm

        return getattr(lightgbm, f"Dask{name}", None)
    return None
