"""Load a scikit-learn estimator (skops, or pickle/joblib when trusted) and predict with it.

A skops file is loaded with an explicit allowlist of types, never ``trusted=True``.
Pickle and joblib run code when loaded: :func:`models.loading.load_model` calls
:func:`load_pickled` only when uploads are trusted. Prediction is the estimator's own
``predict``/``predict_proba``/``decision_function``, on the CPU.
"""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import InvalidModel, UnsupportedOutput, UntrustedType, first_line
from models.loaded import Device
from models.loaders.parts import LoadedParts

__all__ = ["load_skops", "load_pickled", "SKOPS_ALLOWED_BUILTINS", "SKOPS_ALLOWED_FUNCTIONS"]

SKOPS_ALLOWED_BUILTINS = frozenset(
    {
        "builtins.slice",
        "builtins.frozenset",
        "builtins.bytes",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.range",
        "collections.OrderedDict",
        "collections.defaultdict",
        # A partial is loaded from its function, arguments and keywords, each checked
        # against this allowlist on its own (an untrusted function stays refused).
        "functools.partial",
    }
)
"""Non-scikit-learn, non-numpy types a skops file may hold (plain data containers)."""

SKOPS_ALLOWED_FUNCTIONS = frozenset(
    {
        # HistGradientBoosting with categorical features validates its numeric columns
        # with partial(check_array, dtype=..., ensure_all_finite=False) in its
        # preprocessor: input validation, no I/O and no code from the file.
        "sklearn.utils.validation.check_array",
    }
)
"""Functions a skops file may hold (every other function is refused)."""

_SKOPS_ALLOWED_PACKAGES = ("sklearn.", "numpy.", "scipy.sparse.")


def load_skops(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
    import zipfile

    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, json.JSONDecodeError, OSError) as error:
        raise InvalidModel(
            f"The skops file could not be read ({first_line(error)}). "
            "Upload the whole file written by skops.io.dump."
        ) from error
    refused = [name for name in untrusted if not _skops_type_allowed(name)]
    if refused:
        raise UntrustedType(
            f"The skops file holds types outside tabxai's allowlist: {', '.join(refused)}. "
            "Only scikit-learn estimators, pipelines and preprocessors, numpy arrays and plain "
            "data containers are loaded; save a model made only of those.",
            types=refused,
        )
    try:
        estimator = skops.io.load(path, trusted=list(untrusted))
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, OSError) as error:
        raise InvalidModel(
            f"The skops file could not be loaded ({first_line(error)}). "
            "Save the model again with skops.io.dump using the same scikit-learn version."
        ) from error
    return _sklearn_parts(estimator)


def _skops_type_allowed(name: str) -> bool:
    """Allow classes from scikit-learn, numpy and scipy.sparse, a few plain builtins and
    the functions of SKOPS_ALLOWED_FUNCTIONS (no other function). Resolving a name imports
    only those trusted packages."""
    if name in SKOPS_ALLOWED_BUILTINS or name in SKOPS_ALLOWED_FUNCTIONS:
        return True
    if not name.startswith(_SKOPS_ALLOWED_PACKAGES):
        return False
    module_name, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type)


def load_pickled(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
    import pickle

    import joblib

    try:
        estimator = joblib.load(path)
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        ImportError,
        AttributeError,
        OSError,
    ) as error:
        raise InvalidModel(
            f"The pickled model could not be loaded ({first_line(error)}). "
            "Save it with skops.io.dump instead."
        ) from error
    if not type(estimator).__module__.startswith("sklearn."):
        raise InvalidModel(
            f"The pickle holds a {type(estimator).__module__}.{type(estimator).__qualname__}; "
            "only scikit-learn estimators are read from pickle and joblib files."
        )
    return _sklearn_parts(estimator)


def _sklearn_parts(estimator: Any) -> LoadedParts:
    import sklearn
    from sklearn.base import is_classifier, is_regressor

    if not hasattr(estimator, "predict"):
        raise InvalidModel(f"The {type(estimator).__name__} in the file cannot predict.")
    if not (is_classifier(estimator) or is_regressor(estimator)):
        raise InvalidModel(
            f"{type(estimator).__name__} is neither a classifier nor a regressor; tabxai explains "
            "supervised models."
        )
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise InvalidModel(f"The {type(estimator).__name__} in the file is not fitted.")
    names = getattr(estimator, "feature_names_in_", None)
    final = estimator[-1] if hasattr(estimator, "steps") else estimator
    details: dict[str, Any] = {
        "library": "sklearn",
        "library_version": sklearn.__version__,
        "estimator": f"{type(final).__module__}.{type(final).__name__}",
    }
    if hasattr(estimator, "steps"):
        details["pipeline"] = [type(step).__name__ for _, step in estimator.steps]
    kind = "tree" if _is_sklearn_tree(final) else "other"
    labels, needs_frame = _sklearn_inputs(estimator)
    if needs_frame:
        details["input"] = "dataframe"
    if is_classifier(estimator):
        classes = estimator.classes_
        if np.ndim(classes) != 1:
            raise InvalidModel("Multi-output classifiers are not supported.")
        n_classes = len(classes)
        file_task = "binary" if n_classes == 2 else "multiclass"
        decision = type(final).__name__ in (
            "GradientBoostingClassifier",
            "HistGradientBoostingClassifier",
        ) or not hasattr(estimator, "predict_proba")
        n_outputs = (1 if n_classes == 2 else n_classes) if decision else n_classes
        details["raw_output"] = "decision_function" if decision else "predict_proba"
        class_list: list[Any] | None = np.asarray(classes).tolist()
    else:
        n_classes, file_task, decision, class_list = None, "regression", False, None
        n_outputs = int(getattr(final, "n_outputs_", 1))
        details["raw_output"] = "predict"
    return LoadedParts(
        kind=kind,
        task=file_task,
        n_features=int(n_features),
        feature_names=None if names is None else [str(n) for n in names],
        n_outputs=n_outputs,
        n_classes=n_classes,
        classes=class_list,
        categories_by_index={j: [str(v) for v in values] for j, values in labels.items()},
        details=details,
        native=estimator,
        predictor=_SklearnPredictor(estimator, file_task, n_outputs, decision,
                                       frame=(list(names), labels)
                                       if needs_frame and names is not None else None),
        capabilities=frozenset({"tree_ensemble"}),
    )


def _sklearn_inputs(estimator: Any) -> tuple[dict[int, list[Any]], bool]:
    """Which input columns hold text categories, and whether predict needs a DataFrame.

    Returns (labels, needs_frame). ``labels[j]`` lists the categories of input column j
    that an encoder of the model learned as strings (OneHotEncoder or OrdinalEncoder in a
    ColumnTransformer that starts a Pipeline, or HistGradientBoosting's own encoder), in
    the encoder's order, without its missing value: the matrix carries a value as its
    index in that list. A model fitted on a DataFrame needs one back (column names, text
    values) when a ColumnTransformer selects its columns or a column holds text.
    """
    from sklearn.compose import ColumnTransformer

    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return {}, False
    steps = [step for _, step in estimator.steps] if hasattr(estimator, "steps") else \
        [estimator]
    first, final = steps[0], steps[-1]
    found: dict[int, list[Any] | None] = {}
    if isinstance(first, ColumnTransformer):
        for name, transformer, _ in first.transformers_:
            columns = first._transformer_to_input_indices.get(name, [])
            for j, values in zip(columns, _encoder_categories(transformer), strict=False):
                found.setdefault(int(j), values)
    passthrough = all(step in ("passthrough", None) for step in steps[:-1])
    preprocessor = getattr(final, "_preprocessor", None) if passthrough else None
    if preprocessor is not None:  # HistGradientBoosting(categorical_features=...)
        encoder = preprocessor.named_transformers_["encoder"]
        columns = preprocessor._transformer_to_input_indices["encoder"]
        for j, values in zip(columns, _encoder_categories(encoder), strict=True):
            found.setdefault(int(j), values)
    labels = {j: values for j, values in found.items() if values is not None}
    return labels, bool(labels) or isinstance(first, ColumnTransformer)


def _encoder_categories(transformer: Any) -> list[list[Any] | None]:
    """Per input column of ``transformer`` (an encoder, or a Pipeline ending in one), its
    string categories without the missing value, or None for numeric categories."""
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if hasattr(transformer, "steps"):
        transformer = transformer.steps[-1][1]
    if not isinstance(transformer, OneHotEncoder | OrdinalEncoder):
        return []
    out: list[list[Any] | None] = []
    for values in transformer.categories_:
        present = [v for v in values.tolist() if not _is_missing(v)]
        out.append(present if values.dtype.kind == "O" and all(
            isinstance(v, str) for v in present) else None)
    return out


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _is_sklearn_tree(estimator: Any) -> bool:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import BaseDecisionTree

    return isinstance(
        estimator,
        (
            BaseDecisionTree,
            RandomForestClassifier,
            RandomForestRegressor,
            ExtraTreesClassifier,
            ExtraTreesRegressor,
            GradientBoostingClassifier,
            GradientBoostingRegressor,
            HistGradientBoostingClassifier,
            HistGradientBoostingRegressor,
        ),
    )


# A model fitted on a DataFrame warns about numpy input; the columns are already in its
# order (models.features). Filtered once for the process: ``warnings.catch_warnings``
# around each call is not thread-safe, and methods predict from several threads.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


class _SklearnPredictor:
    """``frame``: (column names, labels by column) for a model that predicts from a
    DataFrame (see ``_sklearn_inputs``); rows then reach it as one, with each category code
    turned back into its label."""

    def __init__(self, estimator: Any, task: str, n_outputs: int, decision: bool,
                 frame: tuple[list[str], dict[int, list[Any]]] | None = None) -> None:
        self._estimator = estimator
        self._task = task
        self._n_outputs = n_outputs
        self._decision = decision
        self._unchecked = {} if frame is not None else _unchecked_methods(estimator)
        self._frame = None if frame is None else (
            frame[0], {j: np.asarray(v, dtype=object) for j, v in frame[1].items()})
        import sklearn

        self._sklearn_config = sklearn.get_config

    def use_device(self, device: Device) -> Device:
        return "cpu"

    def _call(self, method: str, X: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        if self._frame is not None:
            return np.asarray(getattr(self._estimator, method)(self._as_frame(X)))
        unchecked = self._unchecked.get(method)
        # Rows that scikit-learn would refuse (NaN, inf) go to it, for its own error.
        if unchecked is not None and (self._sklearn_config()["assume_finite"]
                                      or bool(np.isfinite(X).all())):
            return np.asarray(unchecked(X))
        return np.asarray(getattr(self._estimator, method)(X))

    def _as_frame(self, X: npt.NDArray[np.float64]) -> Any:
        """X as the DataFrame the model was fitted on: its column names, numbers as float64,
        text columns as Python strings (object dtype) with NaN for missing values; a code
        that is no label's index (NaN, an unseen value) is missing."""
        import pandas as pd

        assert self._frame is not None
        names, labels = self._frame
        columns: dict[str, Any] = {}
        for j, name in enumerate(names):
            values = labels.get(j)
            if values is None:
                columns[name] = X[:, j]
                continue
            codes = X[:, j]
            with np.errstate(invalid="ignore"):
                valid = (codes >= 0) & (codes < len(values)) & (codes == np.floor(codes))
            text = np.full(codes.shape[0], np.nan, dtype=object)
            text[valid] = values[codes[valid].astype(np.intp)]
            columns[name] = text
        return pd.DataFrame(columns, copy=False)

    def raw(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._task == "regression":
            method = "predict"
        else:
            method = "decision_function" if self._decision else "predict_proba"
        return np.asarray(self._call(method, X), dtype=np.float64).reshape(
            X.shape[0], self._n_outputs
        )

    def probability(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if not hasattr(self._estimator, "predict_proba"):
            raise UnsupportedOutput(
                f"{type(self._estimator).__name__} gives no probabilities; ask for output='raw' "
                "or 'label'."
            )
        return np.asarray(self._call("predict_proba", X), dtype=np.float64)

    def label(self, X: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        predicted = self._call("predict", X)
        if self._task == "regression":
            return predicted.astype(np.float64)
        classes = self._estimator.classes_
        index = np.searchsorted(classes, predicted)  # classes_ are sorted in scikit-learn
        return index.astype(np.int64)


def _unchecked_methods(estimator: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``predict`` (and ``predict_proba``) of a scikit-learn MLP, alone or after
    StandardScaler steps of a Pipeline, computed bit for bit as scikit-learn computes them
    but without its input validation on every call: the same array operations in the same
    order, on rows the caller has checked (float64, C-contiguous, the model's width). On
    the 10,000-row calls of a Rashomon job on a scaled MLP the validation was a quarter of
    the time (bench.rashomon's case: 5.3-5.4 s against 6.9-7.2 s). Only these exact types;
    any other estimator (or a scikit-learn whose MLP lacks ``check_input``) is called as
    it is. tests/models/test_loading.py checks the equality."""
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    final, scalers = estimator, []
    if type(estimator) is Pipeline:
        *head, (_, final) = estimator.steps
        for _, step in head:
            if type(step) is not StandardScaler:
                return {}
            scalers.append(step)
    if type(final) not in (MLPRegressor, MLPClassifier) or "check_input" not in \
            inspect.signature(final._forward_pass_fast).parameters:
        return {}

    def scaled(X: np.ndarray) -> np.ndarray:
        for scaler in scalers:  # StandardScaler.transform on a dense float64 array
            X = X.copy()
            if scaler.with_mean:
                X -= scaler.mean_.astype(X.dtype)
            if scaler.with_std:
                X /= scaler.scale_.astype(X.dtype)
        return X

    if type(final) is MLPRegressor:
        return {"predict": lambda X: final._predict(scaled(X), check_input=False)}

    def predict_proba(X: np.ndarray) -> np.ndarray:  # MLPClassifier.predict_proba
        y_pred = final._forward_pass_fast(scaled(X), check_input=False)
        if final.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return np.vstack([1 - y_pred, y_pred]).T if y_pred.ndim == 1 else y_pred

    return {"predict": lambda X: final._predict(scaled(X), check_input=False),
            "predict_proba": predict_proba}
