"""Real model files made by the real libraries, saved once per test session.

``saved_models`` maps a name ("xgboost_binary_json", "lightgbm_categorical", ...) to a
:class:`SavedModel`: the file, the trained library object and a test matrix (float64,
model column order, categorical codes) on which to compare predictions. Other test
packages may import these fixtures (``from tests.model_files import ...``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

N_FEATURES = 5
FEATURE_NAMES = [f"f{i}" for i in range(N_FEATURES)]


@dataclass(frozen=True)
class SavedModel:
    """A model file, the object it was saved from, and rows to predict on."""

    path: Path
    native: Any
    X: np.ndarray
    task: str


def make_data(seed: int = 0, n: int = 240) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A small seeded problem: X [n, 5] and a regression, binary and 3-class target."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    signal = X[:, 0] + 0.5 * X[:, 1] * X[:, 2] - 0.3 * X[:, 3]
    targets = {
        "regression": signal + 0.1 * rng.normal(size=n),
        "binary": (signal > 0).astype(np.int64),
        "multiclass": np.digitize(signal, [-0.5, 0.5]).astype(np.int64),
    }
    return X, targets


def with_missing(X: np.ndarray, seed: int = 1) -> np.ndarray:
    """A copy of X with about 5% NaN, for models that take missing values."""
    rng = np.random.default_rng(seed)
    X = X.copy()
    X[rng.random(X.shape) < 0.05] = np.nan
    return X


def _xgboost_models(root: Path, X: np.ndarray, y: dict[str, np.ndarray]) -> dict[str, SavedModel]:
    import xgboost

    out = {}
    objectives = {
        "regression": {"objective": "reg:squarederror"},
        "binary": {"objective": "binary:logistic"},
        "multiclass": {"objective": "multi:softprob", "num_class": 3},
    }
    X_test = with_missing(X[:60])
    for task, params in objectives.items():
        dtrain = xgboost.DMatrix(X, y[task], feature_names=FEATURE_NAMES)
        booster = xgboost.train({**params, "max_depth": 3, "nthread": 1, "seed": 0}, dtrain, 8)
        for ext in ("json", "ubj"):
            path = root / f"xgb_{task}.{ext}"
            booster.save_model(path)
            out[f"xgboost_{task}_{ext}"] = SavedModel(path, booster, X_test, task)
    return out


def _lightgbm_models(root: Path, X: np.ndarray, y: dict[str, np.ndarray]) -> dict[str, SavedModel]:
    import lightgbm

    rng = np.random.default_rng(2)
    colors = np.array(["red", "green", "blue", "white"])
    frame = pd.DataFrame(X[:, :4], columns=FEATURE_NAMES[:4])
    frame["color"] = pd.Categorical(rng.choice(colors, size=len(X)), categories=list(colors))
    y_cat = (y["binary"] ^ (frame["color"] == "blue").to_numpy()).astype(np.int64)
    params = {
        "objective": "binary",
        "num_leaves": 7,
        "min_data_in_leaf": 5,
        "min_data_per_group": 5,
        "cat_smooth": 1.0,
        "num_threads": 1,
        "verbose": -1,
        "seed": 0,
    }
    booster = lightgbm.train(params, lightgbm.Dataset(frame, y_cat), 10)
    path = root / "lgb_categorical.txt"
    booster.save_model(path)
    X_test = with_missing(np.column_stack([X[:60, :4], frame["color"].cat.codes.to_numpy()[:60]]))
    out = {"lightgbm_categorical": SavedModel(path, booster, X_test, "binary")}
    multi = lightgbm.train(
        {
            "objective": "multiclass",
            "num_class": 3,
            "num_leaves": 7,
            "min_data_in_leaf": 5,
            "num_threads": 1,
            "verbose": -1,
            "seed": 0,
        },
        lightgbm.Dataset(X, y["multiclass"]),
        6,
    )
    path = root / "lgb_multiclass.txt"
    multi.save_model(path)
    out["lightgbm_multiclass"] = SavedModel(path, multi, with_missing(X[:60]), "multiclass")
    return out


def _sklearn_models(root: Path, X: np.ndarray, y: dict[str, np.ndarray]) -> dict[str, SavedModel]:
    import skops.io
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
    )
    from sklearn.tree import DecisionTreeRegressor

    frame = pd.DataFrame(X, columns=FEATURE_NAMES)
    estimators = {
        "sklearn_rf_multiclass": (
            RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0),
            "multiclass",
            frame,
        ),
        "sklearn_gbm_binary": (
            GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0),
            "binary",
            X,
        ),
        "sklearn_hgb_regression": (
            HistGradientBoostingRegressor(max_iter=5, random_state=0),
            "regression",
            frame,
        ),
        "sklearn_dt_regression": (
            DecisionTreeRegressor(max_depth=4, random_state=0),
            "regression",
            X,
        ),
    }
    out = {}
    for name, (estimator, task, data) in estimators.items():
        estimator.fit(data, y[task])
        path = root / f"{name}.skops"
        skops.io.dump(estimator, path)
        X_test = X[:60] if name == "sklearn_gbm_binary" else with_missing(X[:60])
        out[name] = SavedModel(path, estimator, X_test, task)
    return out


def _onnx_models(root: Path, X: np.ndarray, y: dict[str, np.ndarray]) -> dict[str, SavedModel]:
    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        regressor = MLPRegressor(hidden_layer_sizes=(8,), max_iter=100, random_state=0).fit(
            X, y["regression"]
        )
        classifier = MLPClassifier(hidden_layer_sizes=(8,), max_iter=100, random_state=0).fit(
            X, y["multiclass"]
        )
    for name, estimator, task, options in (
        ("onnx_mlp_regression", regressor, "regression", None),
        ("onnx_mlp_multiclass", classifier, "multiclass", {"zipmap": False}),
    ):
        proto = to_onnx(estimator, X[:1].astype(np.float32), options=options, target_opset=17)
        path = root / f"{name}.onnx"
        path.write_bytes(proto.SerializeToString())
        out[name] = SavedModel(path, estimator, X[:60], task)
    return out


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SavedModel]:
    """Every format's models, trained small and seeded, saved to files."""
    root = tmp_path_factory.mktemp("models")
    X, y = make_data()
    models: dict[str, SavedModel] = {}
    for build in (_xgboost_models, _lightgbm_models, _sklearn_models, _onnx_models):
        models.update(build(root, X, y))
    return models


@pytest.fixture(scope="session")
def model_data() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The training data of ``saved_models``."""
    return make_data()


