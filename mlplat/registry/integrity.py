"""Model artifacts pinned by digest, and loaded without pickle.

When a version is registered, :func:`pin_tags` hashes every file of its logged model (sha256 of each file,
then of the path-sorted manifest) and the registry keeps both on the version as tags. Every load of a version
(:func:`verified_copy`) downloads its files into a fresh folder, checks them against that pin and checks
that its ``MLmodel`` loads through a pickle-free path (skops with an allow-list of the types the platform's
trainers produce, or a booster's own format) BEFORE anything is deserialised; otherwise it raises
:class:`~mlplat.errors.ArtifactIntegrityError` naming the file that changed.

A model whose flavour would run its author's code when loaded (a PyTorch module, a pyfunc that ONNX could not
express: see :mod:`mlplat.registry.logged_onnx`) is pinned the same way but only *recorded* (:func:`check_recorded`):
the platform never loads it in its own processes; only the serving worker of its pyfunc fallback does.

A version registered before pins existed is refused too: an admin who has checked its files records a pin
with ``p.models.pin(name, version, reason=...)`` (pin on first use, audited).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlplat.config import Settings
from mlplat.errors import ArtifactIntegrityError

DIGEST_TAG = "mlplat.artifact_sha256"  # sha256 of the manifest below
MANIFEST_TAG = "mlplat.artifact_manifest"  # {"relative/path": sha256 of the file, ...} as JSON
_MAX_TAG = 5000  # MLflow's limit on a tag value: a larger manifest is left out (the digest still pins)

FAMILIES = {"mlflow.sklearn": "sklearn", "mlflow.xgboost": "xgboost", "mlflow.lightgbm": "lightgbm"}
OWN_PYFUNC = "mlplat_pyfunc"  # the pyfunc of mlplat's boosters (mlplat/registry/mlplat_pyfunc.py), shipped as code
# What skops may construct beyond its own safe defaults: classes of the libraries the platform trains with.
_TRUSTED_MODULES = ("sklearn", "xgboost", "lightgbm")
_TRUSTED_TYPES = {"collections.OrderedDict", "numpy.dtype"}
_XGBOOST_CLASSES = {"xgboost.sklearn.XGBClassifier", "xgboost.sklearn.XGBRegressor", "xgboost.core.Booster"}
_LIGHTGBM_CLASSES = {"lightgbm.sklearn.LGBMClassifier", "lightgbm.sklearn.LGBMRegressor"}
# Written by MLflow's client into the folder a registered version is downloaded to (its name and version), not stored.
_WRITTEN_ON_DOWNLOAD = {"registered_model_meta"}
_ADVICE = ("Do not load it: re-register the model by training it again (p.train), or ask an admin to check "
           "its files and the audit trail")


def manifest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by its path relative to it (``/``-separated, sorted)."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        if path.parent == folder and path.name in _WRITTEN_ON_DOWNLOAD:
            continue
        if path.is_symlink():
            raise ArtifactIntegrityError(f"Model file {path.relative_to(folder)} is a symbolic link; model "
                                         f"artifacts are plain files. {_ADVICE}.")
        found[path.relative_to(folder).as_posix()] = _sha256(path)
    return found


def digest(files: dict[str, str]) -> str:
    """The sha256 of a manifest: one line ``<sha256>  <path>`` per file, in path order."""
    return hashlib.sha256("".join(f"{files[p]}  {p}\n" for p in sorted(files)).encode()).hexdigest()


def pin_tags(folder: Path) -> dict[str, str]:
    """The tags that pin the model in ``folder``: its digest, and its manifest when that fits in a tag."""
    files = manifest(folder)
    tags = {DIGEST_TAG: digest(files)}
    text = json.dumps(files, sort_keys=True)
    if len(text) <= _MAX_TAG:
        tags[MANIFEST_TAG] = text
    return tags


@contextlib.contextmanager
def downloaded(settings: Settings, uri: str) -> Iterator[Path]:
    """The files of the model at ``uri`` in a fresh temporary folder (removed afterwards)."""
    import mlflow

    from mlplat.registry.tracking import session

    with tempfile.TemporaryDirectory(prefix="mlplat-model-") as folder, session(settings):
        yield Path(mlflow.artifacts.download_artifacts(uri, dst_path=folder))


@contextlib.contextmanager
def verified_copy(settings: Settings, name: str, version: str, tags: dict[str, str],
                  family: str | None = None, recorded: bool = False) -> Iterator[tuple[Path, str]]:
    """Version ``version`` of ``name`` (with its version ``tags``) downloaded, checked against its pin and checked
    to load without pickle: ``(folder, family)``. Raises ArtifactIntegrityError before anything is deserialised.
    ``recorded=True`` (for the pyfunc fallback's worker, which alone loads it) checks the pin only: ``(folder,
    loader module)``."""
    pinned = tags.get(DIGEST_TAG)
    what = f"Model {name!r} version {version}"
    if not pinned:
        raise ArtifactIntegrityError(
            f"{what} has no artifact digest: it was registered before mlplat pinned model files, so nothing "
            "proves its files are the ones trained. Retrain it (p.train), or have an admin check its files and "
            f"record a pin with p.models.pin({name!r}, {version}, reason=...).")
    with downloaded(settings, f"models:/{name}/{version}") as folder:
        files = manifest(folder)
        if digest(files) != pinned:
            raise ArtifactIntegrityError(f"{what}: its files changed since it was registered "
                                         f"({_changes(files, tags.get(MANIFEST_TAG))}). {_ADVICE}.")
        yield folder, check_recorded(folder, what) if recorded else check_flavour(folder, what, family)


def check_flavour(folder: Path, what: str, family: str | None = None) -> str:
    """The family (sklearn, xgboost, lightgbm) of the MLflow model in ``folder``, once its MLmodel is known to
    load through skops with the platform's allow-list or a booster's own format, never through pickle."""
    import yaml

    try:
        flavours = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
        loader = flavours["python_function"]["loader_module"]
    except Exception:
        raise ArtifactIntegrityError(f"{what} has no readable MLmodel file. {_ADVICE}.") from None
    if loader == OWN_PYFUNC:  # a booster whose pyfunc is mlplat's (probabilities, categories): its own flavour
        _check_own_pyfunc(folder, flavours["python_function"], what)
        loader = next((f"mlflow.{name}" for name in ("xgboost", "lightgbm") if name in flavours), loader)
    found = FAMILIES.get(loader)
    if found is None or (family is not None and found != family) or "python_model" in flavours["python_function"]:
        raise ArtifactIntegrityError(f"{what} loads through {loader!r}, not the {family or 'platform'} flavour "
                                     f"its training recorded; mlplat loads only its own flavours. {_ADVICE}.")
    conf = flavours.get(found) or {}
    if found == "sklearn" or (found == "lightgbm" and conf.get("model_class") != "lightgbm.basic.Booster"):
        _check_skops(folder, conf, what, conf.get("pickled_model") or conf.get("data"))
        if found == "lightgbm" and conf.get("model_class") not in _LIGHTGBM_CLASSES:
            raise ArtifactIntegrityError(f"{what} names model class {conf.get('model_class')!r}. {_ADVICE}.")
    elif found == "xgboost" and conf.get("model_class") not in _XGBOOST_CLASSES:
        raise ArtifactIntegrityError(f"{what} names model class {conf.get('model_class')!r}. {_ADVICE}.")
    data = conf.get("pickled_model") or conf.get("data")
    if not isinstance(data, str) or not (folder / data).resolve().is_relative_to(folder.resolve()):
        raise ArtifactIntegrityError(f"{what} names model data {data!r} outside its own files. {_ADVICE}.")
    return found


def check_recorded(folder: Path, what: str) -> str:
    """The loader module of the MLflow model in ``folder``, once its MLmodel is readable and names data inside it.

    For models registered to be recorded, never loaded by the platform: nothing here deserialises them.
    """
    import yaml

    try:
        flavours = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
        loader = flavours["python_function"]["loader_module"]
    except Exception:
        raise ArtifactIntegrityError(f"{what} has no readable MLmodel file; log it with p.models.log.") from None
    if not isinstance(loader, str):
        raise ArtifactIntegrityError(f"{what} names no loader module; log it with p.models.log.")
    return loader


def _check_own_pyfunc(folder: Path, conf: dict[str, Any], what: str) -> None:
    """The code shipped with a booster (which ``mlflow.pyfunc.load_model`` imports) must be mlplat's own loader,
    to the byte, and nothing else: anything else would run its author's code in whoever loads the model."""
    from mlplat.registry import mlplat_pyfunc

    code = folder / str(conf.get("code") or "")
    files = sorted(p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file()) if conf.get("code") else []
    own = Path(mlplat_pyfunc.__file__).read_bytes()
    if files != ["mlplat_pyfunc.py"] or (code / "mlplat_pyfunc.py").read_bytes() != own:
        raise ArtifactIntegrityError(f"{what} ships code other than mlplat's own pyfunc loader ({files}); loading "
                                     f"it would run that code. {_ADVICE}.")


def _check_skops(folder: Path, conf: dict[str, Any], what: str, data: Any) -> None:
    fmt = conf.get("serialization_format", "pickle")
    if fmt != "skops":
        raise ArtifactIntegrityError(f"{what} is stored as {fmt!r}, which runs arbitrary code when loaded; mlplat "
                                     f"loads scikit-learn models only from skops files. {_ADVICE}.")
    untrusted = [t for t in conf.get("skops_trusted_types") or [] if not trusted_type(t)]
    if untrusted:
        raise ArtifactIntegrityError(f"{what} asks skops to trust {untrusted}, which no platform trainer produces. "
                                     f"{_ADVICE}.")


def trusted_type(name: Any) -> bool:
    """A class of scikit-learn, XGBoost or LightGBM (never a function), or one of the few other types they hold."""
    if not isinstance(name, str):
        return False
    if name in _TRUSTED_TYPES:
        return True
    module, _, attribute = name.rpartition(".")
    if module.split(".")[0] not in _TRUSTED_MODULES:
        return False
    try:
        return isinstance(getattr(importlib.import_module(module), attribute), type)
    except Exception:  # not importable here: not something this platform produced
        return False


def _changes(files: dict[str, str], recorded: str | None) -> str:
    if not recorded:
        return "the recorded digest no longer matches"
    try:
        before = json.loads(recorded)
    except ValueError:
        return "its recorded manifest is unreadable"
    changed = [f"{p} changed" for p in sorted(set(files) & set(before)) if files[p] != before[p]]
    changed += [f"{p} added" for p in sorted(set(files) - set(before))]
    changed += [f"{p} removed" for p in sorted(set(before) - set(files))]
    return "; ".join(changed) or "its recorded manifest does not match its digest"


def _sha256(path: Path) -> str:
    found = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            found.update(block)
    return found.hexdigest()
