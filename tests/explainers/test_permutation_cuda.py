"""Permutation importance of ONNX models on a GPU, against scikit-learn on the CPU.

On the GPU the rows and permutations are sent once and each permuted copy is built there,
in front of the model's graph (``models.onnx_permuted``). The model runs in float32 CUDA
kernels (TF32 off) on larger calls than scikit-learn's, so the numbers agree with
scikit-learn's (onnxruntime on the CPU) to float32 rounding, not bit for bit.

Needs only numpy, scikit-learn, onnxruntime-gpu and skl2onnx; on a GPU machine without the
service's packages: ``python -m pytest --noconftest tests/explainers/test_permutation_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.inspection import permutation_importance as sklearn_permutation_importance
from sklearn.neural_network import MLPClassifier, MLPRegressor

from explainers import permutation as module
from explainers.permutation import permutation_importance
from models.loading import load_model
from tests.onnx_reference import (
    NO_ONNX_CUDA,
    OnnxClassifier,
    OnnxRegressor,
    onnx_cuda_available,
    onnx_file,
)

pytestmark = [pytest.mark.skipif(not onnx_cuda_available(), reason=NO_ONNX_CUDA),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6))
    y = 3 * X[:, 0] + np.sin(2 * X[:, 1]) + X[:, 2] * X[:, 3] + 0.1 * rng.normal(size=3000)
    return X, y


def compare(model, reference, X, y, scoring, tolerance=1e-5, **options) -> dict:
    names = [f"x{j}" for j in range(X.shape[1])]
    assert model.place("cuda") == "cuda"
    ours = permutation_importance(model, X, y, scoring=scoring, feature_names=names,
                                  n_repeats=3, random_state=7, device="cuda", **options)
    expected = sklearn_permutation_importance(reference, X, y, scoring=scoring, n_repeats=3,
                                              random_state=7, **options)
    scale = np.abs(expected.importances).max()
    assert scale > 1e-3
    np.testing.assert_allclose(ours.importances, expected.importances, rtol=0,
                               atol=tolerance * max(scale, 1.0))
    return ours.provenance


@pytest.mark.parametrize(("scoring", "max_samples"),
                         [("r2", 1.0), ("neg_mean_squared_error", 0.7)])
def test_onnx_regressor_on_cuda_matches_sklearn_to_float32(data, scoring, max_samples,
                                                           tmp_path):
    X, y = data
    mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    reference = OnnxRegressor(onnx_file(mlp, X, tmp_path / "model.onnx")).fit(X, y)
    model = load_model(tmp_path / "model.onnx", format="onnx")
    provenance = compare(model, reference, X, y, scoring, max_samples=max_samples)
    assert provenance["path"] == "graph"  # the permuted copies built on the GPU


# A rank score moves by whole pairs: float32 rounding on the GPU reorders near-tied
# probabilities (saturated ones), which moved roc_auc importances by up to 1.1e-4 on an H200.
@pytest.mark.parametrize(("scoring", "tolerance"),
                         [("neg_log_loss", 1e-5), ("roc_auc", 1e-3)])
def test_onnx_classifier_on_cuda_matches_sklearn_to_float32(data, scoring, tolerance,
                                                            tmp_path):
    X, target = data
    # noisy labels keep the probabilities away from 0 and 1: where a float32 sigmoid
    # saturates, one unit in the last place of p moves -log(1 - p) by whole units, on any
    # two machines (CPU against GPU here), and log loss comparisons mean nothing
    noise = np.random.default_rng(1).normal(scale=4.0, size=target.shape[0])
    y = (target + noise > 0).astype(np.int64)
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    p = mlp.predict_proba(X)[:, 1]
    assert p.min() > 1e-4 and p.max() < 1 - 1e-4
    session = onnx_file(mlp, X, tmp_path / "model.onnx", zipmap=False)
    reference = OnnxClassifier(session, [0, 1]).fit(X, y)
    model = load_model(tmp_path / "model.onnx", format="onnx")
    assert compare(model, reference, X, y, scoring, tolerance)["path"] == "graph"


def test_onnx_on_cuda_with_rows_split_across_calls(data, tmp_path, monkeypatch):
    """A bound below one repeat's rows: each repeat in several GPU calls, same numbers."""
    X, y = data
    mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    reference = OnnxRegressor(onnx_file(mlp, X, tmp_path / "model.onnx")).fit(X, y)
    monkeypatch.setitem(module.GRAPH_ROWS, "cuda", 700)
    model = load_model(tmp_path / "model.onnx", format="onnx")
    assert compare(model, reference, X, y, "r2")["path"] == "graph"
