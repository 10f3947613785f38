"""Where a fit runs: the GPU a workspace has, for the estimators that can use one.

A GPU workspace (the hub's ``gpu-x1`` profile, the "mlplat, GPU" kernel) sets ``MLPLAT_DEVICE=gpu:0`` and
``CUDA_VISIBLE_DEVICES``. There XGBoost fits with ``device="cuda"`` and LightGBM with ``device_type="gpu"``
(its PyPI wheel's OpenCL build, when the machine has an OpenCL GPU); elsewhere, and for estimators with no GPU
path (scikit-learn's), nothing changes. A parameter the user gave (``device``, ``tree_method``) always wins. :func:`choose` says what a fit will use and why, and each run
records it (tags ``mlplat.device`` and ``mlplat.device_reason``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CPU = "cpu"
_GPU_PARAMS = {"xgboost": {"device": "cuda"}, "lightgbm": {"device_type": "gpu"}}  # per family: fit on the GPU
_USER_CHOICES = ("device", "device_type", "tree_method")  # the user chose the device: left as given
_NVIDIA_CONTROL = Path("/dev/nvidiactl")  # present wherever the NVIDIA driver is loaded (a GPU node, a pod with one)


@dataclass(frozen=True)
class Device:
    """What a fit uses: ``name`` ("cuda:0" or "cpu"), the parameters that select it, and why."""

    name: str
    params: dict[str, Any]
    reason: str


def for_fit(family: str, params: dict[str, Any], client: Any) -> Device:
    """The device of a run's fit: :func:`choose`'s in this process, the cluster's workers' with a Dask ``client``."""
    return choose(family, params) if client is None else Device("cluster", {}, "the Dask cluster's workers")


def choose(family: str, params: dict[str, Any], environ: Any = os.environ) -> Device:
    """The device for a fit of an estimator of ``family`` with ``params``, in a workspace whose environment is
    ``environ``."""
    asked = environ.get("MLPLAT_DEVICE", CPU)
    if not asked.startswith("gpu"):
        return Device(CPU, {}, "a CPU workspace")
    if any(name in params for name in _USER_CHOICES):
        named = params.get("device") or params.get("device_type") or params.get("tree_method")
        return Device(str(named), {}, "the device the estimator's parameters name")
    if family not in _GPU_PARAMS:
        return Device(CPU, {}, f"{family} estimators fit on the CPU")
    if not environ.get("CUDA_VISIBLE_DEVICES") or not _NVIDIA_CONTROL.exists():
        return Device(CPU, {}, f"{asked} was asked for, but no NVIDIA GPU is visible here")
    if family == "lightgbm" and not _lightgbm_gpu():
        return Device(CPU, {}, "LightGBM's GPU build finds no OpenCL device here")
    return Device(f"cuda:{asked.partition(':')[2] or 0}", dict(_GPU_PARAMS[family]), "the workspace's GPU")


@functools.cache
def _lightgbm_gpu() -> bool:
    """Whether LightGBM fits with ``device_type="gpu"`` here (a GPU build and an OpenCL device): one tiny fit."""
    import lightgbm
    import numpy as np

    rows = np.arange(40, dtype=np.float64).reshape(20, 2)
    try:
        lightgbm.LGBMClassifier(device_type="gpu", n_estimators=1, verbose=-1).fit(rows, np.arange(20) % 2)
    except lightgbm.basic.LightGBMError:
        return False
    return True
