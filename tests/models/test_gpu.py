"""The GPU questions of ``models.gpu``: each answered without loading what it need not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from models.gpu import cupy_cuda, gpu_visible, xgboost_cuda, xgboost_device_after_probe


@pytest.mark.parametrize("value", ["", "-1"])
def test_hidden_devices_are_not_visible(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert gpu_visible() is False


def test_asking_for_a_gpu_on_the_machine_imports_no_library() -> None:
    code = ("import sys; from models.gpu import gpu_visible; gpu_visible(); "
            "print(sorted(m for m in ('xgboost', 'onnxruntime', 'torch', 'cupy', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(gpu_visible(), reason="a GPU is visible here: XGBoost may compute on it")
def test_without_a_gpu_xgboost_computes_on_the_cpu() -> None:
    import numpy as np
    import xgboost

    assert xgboost_cuda() is False and cupy_cuda() is False
    X = np.array([[0.0], [1.0]])
    booster = xgboost.train({"nthread": 1}, xgboost.DMatrix(X, [0.0, 1.0]), 1)
    assert xgboost_device_after_probe(booster, "cuda", 1) == "cpu"
