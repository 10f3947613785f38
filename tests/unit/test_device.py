"""Which device a fit uses: the workspace's GPU for XGBoost and LightGBM, the CPU otherwise, the user's choice first.

No GPU is lent to these tests: whether the NVIDIA driver is there is decided by its control device, which a test
replaces by a file (or by nothing), and LightGBM's GPU build is really asked, the test knowing LightGBM's answer.
"""

import pytest

from mlplat.training import device

CPU_WORKSPACE = {"MLPLAT_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
GPU_WORKSPACE = {"MLPLAT_DEVICE": "gpu:0", "CUDA_VISIBLE_DEVICES": "0"}


@pytest.fixture
def nvidia_driver(tmp_path, monkeypatch):
    control = tmp_path / "nvidiactl"
    control.touch()
    monkeypatch.setattr(device, "_NVIDIA_CONTROL", control)


@pytest.mark.parametrize("family", ["xgboost", "lightgbm", "sklearn"])
def test_a_cpu_workspace_changes_nothing(family):
    assert device.choose(family, {}, CPU_WORKSPACE) == device.Device("cpu", {}, "a CPU workspace")
    assert device.choose(family, {}, {}) == device.Device("cpu", {}, "a CPU workspace")  # a laptop


def test_a_gpu_workspace_fits_xgboost_on_its_gpu(nvidia_driver):
    assert device.choose("xgboost", {"max_depth": 3}, GPU_WORKSPACE) == device.Device(
        "cuda:0", {"device": "cuda"}, "the workspace's GPU")


def test_lightgbm_uses_the_gpu_only_where_its_gpu_build_finds_a_device(nvidia_driver):
    import lightgbm
    import numpy as np

    try:  # what LightGBM itself says of this machine
        lightgbm.LGBMRegressor(device_type="gpu", n_estimators=1, verbose=-1).fit(np.ones((8, 1)), np.arange(8))
        expected = device.Device("cuda:0", {"device_type": "gpu"}, "the workspace's GPU")
    except lightgbm.basic.LightGBMError:
        expected = device.Device("cpu", {}, "LightGBM's GPU build finds no OpenCL device here")
    assert device.choose("lightgbm", {}, GPU_WORKSPACE) == expected


def test_the_users_choice_wins_and_estimators_without_a_gpu_path_stay_on_the_cpu(nvidia_driver):
    assert device.choose("xgboost", {"device": "cpu"}, GPU_WORKSPACE) == device.Device(
        "cpu", {}, "the device the estimator's parameters name")
    assert device.choose("sklearn", {}, GPU_WORKSPACE) == device.Device(
        "cpu", {}, "sklearn estimators fit on the CPU")


def test_no_gpu_visible_means_the_cpu_saying_so(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "_NVIDIA_CONTROL", tmp_path / "no-driver")
    assert device.choose("xgboost", {}, GPU_WORKSPACE) == device.Device(
        "cpu", {}, "gpu:0 was asked for, but no NVIDIA GPU is visible here")
    monkeypatch.undo()
    assert device.choose("xgboost", {}, {**GPU_WORKSPACE, "CUDA_VISIBLE_DEVICES": ""}).reason == (
        "gpu:0 was asked for, but no NVIDIA GPU is visible here")
