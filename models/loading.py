"""Load an uploaded model file into a :class:`~models.loaded.LoadedModel`, in-process.

:func:`load_model` runs in whatever process calls it: the inspection sandbox at upload
time, a job process (which already has its limits) afterwards. Formats that can run code
when loaded (pickle, joblib, TorchScript) are refused unless ``trust_uploads`` is true;
skops files are loaded with an explicit allowlist of types, never ``trusted=True``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import (
    InvalidModel,
    UnsupportedModelFormat,
    UnsupportedOutput,
    UntrustedFormat,
    UntrustedType,
    first_line,
)
from models.formats import FORMATS, SERVED_FORMATS
from models.loaded import Device, LoadedModel
from models.loaders.lightgbm import load_lightgbm
from models.loaders.parts import LoadedParts
from models.loaders.probabilities import sigmoid, softmax, two_columns
from models.loaders.xgboost import booster_nthread, identity_booster, load_xgboost

__all__ = ["load_model", "TASKS", "SKOPS_ALLOWED_BUILTINS", "SKOPS_ALLOWED_FUNCTIONS",
           "ONNX_NAMES_KEY", "identity_booster", "booster_nthread"]

logger = logging.getLogger(__name__)

TASKS = ("regression", "binary", "multiclass")

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

_UNTRUSTED_SENTENCE = (
    "Files in the {fmt} format can run arbitrary code when loaded, so this server refuses "
    "them (the operator can allow them with TABXAI_TRUST_UPLOADS=1). Save a scikit-learn "
    "model with skops.io.dump(model, 'model.skops'), or convert the model to ONNX "
    "(skl2onnx, torch.onnx.export) and upload that instead."
)


def load_model(
    path: Path,
    *,
    format: str,
    feature_names: list[str] | None = None,
    task: str | None = None,
    classes: list[Any] | None = None,
    trust_uploads: bool = False,
    n_threads: int | None = None,
) -> LoadedModel:
    """Load the model file at ``path``, saved in ``format`` (see models.formats.FORMATS).

    feature_names: names for the model's columns; required for models that store none
        only if the caller wants name matching; must agree with names the model stores.
    task: "regression", "binary" or "multiclass"; required where the file cannot tell
        (ONNX graphs with one multi-column output); must agree with what the file says.
    classes: class labels in output order; must agree with labels the model stores;
        defaults to 0..K-1 where the model stores none.
    trust_uploads: allow pickle, joblib and TorchScript.
    n_threads: threads for the library's prediction (None: the library's default).

    Raises a ModelError subclass for anything wrong with the file or the arguments.
    """
    if format not in FORMATS:
        raise UnsupportedModelFormat(
            f"Unknown model format {format!r}; choose one of {', '.join(SERVED_FORMATS)}."
        )
    if task is not None and task not in TASKS:
        raise InvalidModel(f"task must be one of {', '.join(TASKS)}, got {task!r}.")
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}")
    path = Path(path)
    if format in ("pickle", "joblib", "torchscript") and not trust_uploads:
        raise UntrustedFormat(_UNTRUSTED_SENTENCE.format(fmt=format))
    loader = {
        "xgboost": load_xgboost,
        "lightgbm": load_lightgbm,
        "sklearn": _load_skops,
        "pickle": _load_pickled,
        "joblib": _load_pickled,
        "onnx": _load_onnx,
        "torchscript": _load_torchscript,
    }[format]
    parts = loader(path, task=task, n_threads=n_threads)
    return _assemble(parts, format=format, feature_names=feature_names, task=task,
                     classes=classes)


def _assemble(
    parts: LoadedParts,
    *,
    format: str,
    feature_names: list[str] | None,
    task: str | None,
    classes: list[Any] | None,
) -> LoadedModel:
    """Reconcile what the file says with the caller's arguments and build the model."""
    n_features = int(parts.n_features)
    names = parts.feature_names
    if feature_names is not None:
        feature_names = [str(n) for n in feature_names]
        if len(feature_names) != n_features:
            raise InvalidModel(
                f"feature_names has {len(feature_names)} names but the model takes "
                f"{n_features} features."
            )
        if names is not None and list(names) != feature_names:
            raise InvalidModel(
                f"feature_names do not match the names stored in the model: {list(names)}."
            )
        names = feature_names
    file_task = parts.task
    if task is not None and task != file_task:
        raise InvalidModel(f"task={task!r} was given but the model is a {file_task} model.")
    n_classes = parts.n_classes
    stored = parts.classes
    if file_task == "regression":
        if classes is not None:
            raise InvalidModel("classes were given for a regression model.")
        final_classes = None
    else:
        if classes is not None:
            if len(classes) != n_classes:
                raise InvalidModel(
                    f"{len(classes)} classes were given but the model has {n_classes}."
                )
            if stored is not None and [str(c) for c in stored] != [str(c) for c in classes]:
                raise InvalidModel(f"classes do not match the model's own classes {stored}.")
            final_classes = list(classes)
        else:
            final_classes = list(stored) if stored is not None else list(range(int(n_classes)))
    categories = parts.categories_by_index
    keyed = {(names[i] if names is not None else str(i)): list(v) for i, v in categories.items()}
    return LoadedModel(
        format=format,
        kind=parts.kind,
        task=file_task,
        n_features=n_features,
        feature_names=None if names is None else list(names),
        n_outputs=int(parts.n_outputs),
        classes=final_classes,
        categories=keyed,
        details=parts.details,
        native=parts.native,
        predictor=parts.predictor,
    )


# ---------------------------------------------------------------------- scikit-learn


def _load_skops(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
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


def _load_pickled(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
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
                                       frame=(list(names), labels) if needs_frame else None),
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
    labels: dict[int, list[Any]] = {}
    if isinstance(first, ColumnTransformer):
        for name, transformer, _ in first.transformers_:
            columns = first._transformer_to_input_indices.get(name, [])
            for j, values in zip(columns, _encoder_categories(transformer), strict=False):
                labels.setdefault(int(j), values)
    passthrough = all(step in ("passthrough", None) for step in steps[:-1])
    preprocessor = getattr(final, "_preprocessor", None) if passthrough else None
    if preprocessor is not None:  # HistGradientBoosting(categorical_features=...)
        encoder = preprocessor.named_transformers_["encoder"]
        columns = preprocessor._transformer_to_input_indices["encoder"]
        for j, values in zip(columns, _encoder_categories(encoder), strict=True):
            labels.setdefault(int(j), values)
    labels = {j: values for j, values in labels.items() if values is not None}
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

    def use_device(self, device: Device) -> str:
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


# ------------------------------------------------------------------------------ ONNX

_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def _load_onnx(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
    import onnx
    import onnxruntime
    from google.protobuf.message import DecodeError

    model_bytes = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(model_bytes)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise InvalidModel(
            f"The ONNX file could not be parsed ({first_line(error)}). "
            "Upload the whole .onnx file your converter wrote."
        ) from error
    session = _onnx_session(model_bytes, ["CPUExecutionProvider"], n_threads)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InvalidModel(
            f"The ONNX graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "tabxai needs exactly one 2-D float input holding all features."
        )
    (graph_input,) = inputs
    if graph_input.type not in _ONNX_FLOAT_TYPES:
        raise InvalidModel(
            f"The ONNX input {graph_input.name!r} has type {graph_input.type}; tabxai needs a "
            "2-D float (float32 or float64) tensor."
        )
    if len(graph_input.shape) != 2:
        raise InvalidModel(
            f"The ONNX input {graph_input.name!r} has shape {graph_input.shape}; tabxai needs a "
            "2-D tensor [rows, features]."
        )
    batch, width = graph_input.shape
    if not isinstance(width, int):
        raise InvalidModel(
            f"The ONNX input {graph_input.name!r} has no fixed number of features; re-export it "
            "with a static second dimension."
        )
    outputs = session.get_outputs()
    for out in outputs:
        if out.type.startswith("seq(map"):
            raise InvalidModel(
                f"The ONNX output {out.name!r} is a list of dictionaries (a ZipMap); tabxai reads "
                "probabilities as a tensor. Convert with skl2onnx using "
                "options={'zipmap': False}."
            )
    float_outputs = [o for o in outputs if o.type in _ONNX_FLOAT_TYPES]
    label_outputs = [o for o in outputs if o.type not in _ONNX_FLOAT_TYPES and len(o.shape) == 1]
    input_dtype = _ONNX_FLOAT_TYPES[graph_input.type]
    fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
    if not float_outputs:
        raise InvalidModel("The ONNX graph has no float output to read predictions from.")
    if label_outputs and len(float_outputs) == 1 and len(float_outputs[0].shape) == 2:
        form = "label_and_probabilities"
        value_output = float_outputs[0]
    elif len(float_outputs) == 1:
        form = "single"
        value_output = float_outputs[0]
    else:
        raise InvalidModel(
            f"The ONNX graph has {len(float_outputs)} float outputs "
            f"({', '.join(o.name for o in float_outputs)}); tabxai reads one."
        )
    predictor = _OnnxPredictor(
        model_bytes,
        session,
        graph_input.name,
        value_output.name,
        input_dtype,
        fixed_batch,
        n_threads,
    )
    out_width = value_output.shape[1] if len(value_output.shape) == 2 else 1
    if not isinstance(out_width, int):
        out_width = predictor.run(np.zeros((1, width))).shape[1]
    producer = next((n.op_type for n in proto.graph.node if value_output.name in n.output), "")
    if form == "label_and_probabilities":
        is_probability = True
        file_task = "binary" if out_width == 2 else "multiclass"
        if task is not None and task != "regression":
            file_task = task
        n_classes = out_width
    else:
        is_probability = producer in ("Softmax", "Sigmoid")
        if task is None:
            if out_width != 1:
                raise InvalidModel(
                    f"The ONNX graph has one output with {out_width} columns: say what it predicts "
                    "by passing task= ('regression', 'binary' or 'multiclass')."
                )
            file_task = "regression"
        else:
            file_task = task
        n_classes = None if file_task == "regression" else (2 if out_width == 1 else out_width)
        if file_task == "binary" and out_width not in (1, 2):
            raise InvalidModel(
                f"A binary model needs 1 or 2 output columns, the graph has {out_width}."
            )
    predictor.configure(file_task, is_probability, out_width)
    ops = {n.op_type for n in proto.graph.node}
    neural = bool(ops & {"MatMul", "Gemm", "Conv", "LSTM", "GRU", "RNN"})
    return LoadedParts(
        kind="neural" if neural else "other",
        task=file_task,
        n_features=width,
        feature_names=_onnx_feature_names(proto, width),
        n_outputs=out_width,
        n_classes=n_classes,
        classes=_onnx_class_labels(proto, n_classes) if n_classes else None,
        details={
            "library": "onnxruntime",
            "library_version": onnxruntime.__version__,
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "opset": max(
                (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0
            ),
            "input_name": graph_input.name,
            "input_type": graph_input.type,
            "output_names": [o.name for o in outputs],
            "prediction_output": value_output.name,
            "output_is_probability": is_probability,
        },
        native=session,
        predictor=predictor,
    )


ONNX_NAMES_KEY = "feature_names"
"""The key of the ONNX model's ``metadata_props`` entry that names its input columns:
a JSON list of strings, one per column of the 2-D input, in order."""


def _onnx_feature_names(proto: Any, width: int) -> list[str] | None:
    """Column names stored in the graph's metadata_props, or None. An ONNX input is one
    tensor [rows, width]: its name (e.g. "float_input") names no column."""
    entry = next((p.value for p in proto.metadata_props if p.key == ONNX_NAMES_KEY), None)
    if entry is None:
        return None
    try:
        names = json.loads(entry)
    except json.JSONDecodeError as error:
        raise InvalidModel(
            f"The ONNX metadata entry {ONNX_NAMES_KEY!r} is not JSON ({error.msg}); store a "
            'JSON list of column names there, e.g. ["age", "income"].') from error
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or len(names) != width or len(set(names)) != width:
        raise InvalidModel(
            f"The ONNX metadata entry {ONNX_NAMES_KEY!r} must be a JSON list of {width} "
            "distinct column names, one per input column.")
    return names


def _onnx_session(model_bytes: bytes, providers: list[Any], n_threads: int | None) -> Any:
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    options = onnxruntime.SessionOptions()
    if n_threads is not None:
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(model_bytes, options, providers=providers)
    except (
        ort_state.Fail,
        ort_state.InvalidGraph,
        ort_state.InvalidProtobuf,
        ort_state.InvalidArgument,
        ort_state.NotImplemented,
        ort_state.RuntimeException,
    ) as error:
        raise InvalidModel(
            f"onnxruntime cannot run the ONNX graph ({first_line(error)}). "
            "Convert the model again with a supported opset."
        ) from error


def _onnx_class_labels(proto: Any, n_classes: int) -> list[Any] | None:
    """Class labels stored in the graph by skl2onnx (classifier node attributes or a
    'classes' initializer), or None."""
    from onnx import numpy_helper

    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name == "classlabels_ints" and len(attr.ints) == n_classes:
                return list(attr.ints)
            if attr.name == "classlabels_strings" and len(attr.strings) == n_classes:
                return [s.decode() for s in attr.strings]
    for init in proto.graph.initializer:
        if init.name == "classes":
            values = numpy_helper.to_array(init).reshape(-1)
            if len(values) == n_classes:
                return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
    return None


# Rows per onnxruntime call on the CPU. Each row's output does not depend on the call's
# other rows (tested bit for bit), and calls this size keep a network's hidden layers in
# cache: a 64-64 MLP on 50,000 x 30 took 5.1 ms in one call and 2.4 ms in five (2 cores;
# 2.4 ms from 2,000 to 25,000 rows per call, 3.0 ms at 1,000).
ONNX_CPU_CALL_ROWS = 10_000


# onnxruntime's CUDA provider without TF32 matrix products (its default), which keep 10
# bits of mantissa: 1e-4 relative errors where float32 gives 1e-7.
_ONNX_CUDA = ("CUDAExecutionProvider", {"use_tf32": "0"})


class _OnnxPredictor:
    def __init__(
        self,
        model_bytes: bytes,
        session: Any,
        input_name: str,
        output_name: str,
        input_dtype: type,
        fixed_batch: int | None,
        n_threads: int | None,
    ) -> None:
        self._bytes = model_bytes
        self._sessions = {"cpu": session}
        self._session = session
        self._input = input_name
        self._output = output_name
        self._dtype = input_dtype
        self._fixed_batch = fixed_batch
        self._n_threads = n_threads
        self._task = "regression"
        self._is_probability = False
        self._width = 1

    @property
    def input_dtype(self) -> type:
        return self._dtype

    def configure(self, task: str, is_probability: bool, width: int) -> None:
        self._task = task
        self._is_probability = is_probability
        self._width = width

    def use_device(self, device: Device) -> str:
        import onnxruntime

        if device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            if "cuda" not in self._sessions:
                session = _onnx_session(
                    self._bytes, [_ONNX_CUDA, "CPUExecutionProvider"], self._n_threads
                )
                # onnxruntime falls back to the CPU with a warning when the CUDA libraries
                # do not load; say where the model really runs.
                if "CUDAExecutionProvider" not in session.get_providers():
                    logger.warning("onnxruntime could not start its CUDA provider (CUDA or "
                                   "cuDNN libraries not found); the model runs on the CPU")
                    session = self._sessions["cpu"]
                self._sessions["cuda"] = session
            self._session = self._sessions["cuda"]
            return "cuda" if self._session is not self._sessions["cpu"] else "cpu"
        self._session = self._sessions["cpu"]
        return "cpu"

    def run(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        X = X.astype(self._dtype, copy=False)
        if self._fixed_batch is None:
            step = X.shape[0] if self._session is not self._sessions["cpu"] \
                else ONNX_CPU_CALL_ROWS
            if X.shape[0] <= step:
                out = self._session.run([self._output], {self._input: X})[0]
                return np.asarray(out, dtype=np.float64).reshape(X.shape[0], -1)
            parts = [self._session.run([self._output], {self._input: X[a:a + step]})[0]
                     for a in range(0, X.shape[0], step)]
            return np.asarray(np.concatenate(parts), dtype=np.float64).reshape(X.shape[0], -1)
        # A graph with a static batch size takes exactly that many rows per call.
        b = self._fixed_batch
        parts = []
        for start in range(0, X.shape[0], b):
            chunk = X[start : start + b]
            padded = np.zeros((b, X.shape[1]), dtype=self._dtype)
            padded[: chunk.shape[0]] = chunk
            out = self._session.run([self._output], {self._input: padded})[0]
            parts.append(np.asarray(out, dtype=np.float64).reshape(b, -1)[: chunk.shape[0]])
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, self._width))

    def raw(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self.run(X)

    def probability(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self.from_output(self.run(X), "probability")

    def label(self, X: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        return self.from_output(self.run(X), "label")

    def from_output(self, out: npt.NDArray[np.float64], output: str) -> npt.NDArray[Any]:
        """``raw``/``probability``/``label`` from the graph's output ``run`` returned."""
        if output == "raw":
            return out
        if output == "label" and self._task == "regression":
            return out.reshape(-1) if self._width == 1 else out
        if self._width == 1:
            probability = two_columns(out if self._is_probability else sigmoid(out))
        else:
            probability = out if self._is_probability else softmax(out)
        return probability if output == "probability" else np.argmax(probability, axis=1)

    def permuted_runs(self, X: npt.NDArray[Any], base: npt.NDArray[np.intp],
                      permutations: list[npt.NDArray[np.intp]], device: Device,
                      rows_per_call: int) -> Any:
        """A :class:`models.onnx_permuted.PermutedRuns` on ``device`` (after ``use_device``),
        or None where the graph has a fixed batch size or cannot be wrapped."""
        from models.onnx_permuted import PermutedRuns, permuting_graph

        if self._fixed_batch is not None:
            return None
        on_cuda = device == "cuda" and self._session is not self._sessions["cpu"]
        key = "permuting-cuda" if on_cuda else "permuting-cpu"
        if key not in self._sessions:
            graph = permuting_graph(self._bytes, self._input, self._output, X.shape[1],
                                    np.dtype(self._dtype))
            if graph is None:
                return None
            providers: list[Any] = ["CPUExecutionProvider"]
            if on_cuda:
                providers.insert(0, _ONNX_CUDA)
            try:
                session = _onnx_session(graph, providers, self._n_threads)
            except InvalidModel as error:
                logger.info("permuted copies stay on the host: %s", error)
                return None
            if on_cuda and "CUDAExecutionProvider" not in session.get_providers():
                return None
            self._sessions[key] = session
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        try:
            return PermutedRuns(self._sessions[key], self._output,
                                np.asarray(X, dtype=self._dtype), base, permutations,
                                device="cuda" if on_cuda else "cpu",
                                rows_per_call=rows_per_call)
        except (ort_state.Fail, ort_state.RuntimeException) as error:  # device memory
            logger.warning("permuted copies stay on the host: the rows could not be placed "
                           "on the device (%s)", first_line(error))
            return None


# ------------------------------------------------------------------------ TorchScript


def _load_torchscript(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
    try:
        import torch
    except ImportError as error:
        raise UnsupportedModelFormat(
            "TorchScript models need PyTorch, which is not installed on this server; install "
            "tabxai with the 'torch' extra (pip install 'tabxai[torch]')."
        ) from error
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise InvalidModel(
            f"The TorchScript file could not be loaded ({first_line(error)}). "
            "Save it with torch.jit.save."
        ) from error
    module.eval()
    predictor = _TorchPredictor(module, n_threads)
    n_features = _torchscript_width(module)
    out_width = predictor.run(np.zeros((2, n_features))).shape[1]
    if task is None and out_width != 1:
        raise InvalidModel(
            f"The TorchScript module returns {out_width} columns: pass task= ('regression', "
            "'binary' or 'multiclass')."
        )
    file_task = task or "regression"
    predictor.configure(file_task, out_width)
    return LoadedParts(
        kind="neural",
        task=file_task,
        n_features=n_features,
        feature_names=None,
        n_outputs=out_width,
        n_classes=None if file_task == "regression" else (2 if out_width == 1 else out_width),
        details={
            "library": "torch",
            "library_version": torch.__version__,
            "output": "logits (probabilities by sigmoid/softmax)",
        },
        native=module,
        predictor=predictor,
    )


def _torchscript_width(module: Any) -> int:
    """The input width, from the first Linear layer's in_features."""
    for sub in module.modules():
        width = getattr(sub, "in_features", None)
        if isinstance(width, int):
            return width
    raise InvalidModel(
        "The TorchScript module's input width cannot be found (no Linear layer); tabxai needs "
        "a module taking a 2-D float tensor [rows, features]."
    )


class _TorchPredictor:
    def __init__(self, module: Any, n_threads: int | None) -> None:
        self._module = module
        self._n_threads = n_threads
        self._device = "cpu"
        self._task = "regression"
        self._width = 1

    def configure(self, task: str, width: int) -> None:
        self._task = task
        self._width = width

    def use_device(self, device: Device) -> str:
        import torch

        target = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        if target != self._device:
            self._module.to(target)
            self._device = target
        return target

    def run(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        import torch

        if self._n_threads is not None:
            torch.set_num_threads(self._n_threads)
        with torch.inference_mode():
            out = self._module(torch.as_tensor(X, dtype=torch.float32, device=self._device))
        return np.asarray(out.detach().cpu().numpy(), dtype=np.float64).reshape(X.shape[0], -1)

    def raw(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self.run(X)

    def probability(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out = self.run(X)
        return two_columns(sigmoid(out)) if self._width == 1 else softmax(out)

    def label(self, X: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        if self._task == "regression":
            out = self.run(X)
            return out.reshape(-1) if self._width == 1 else out
        return np.argmax(self.probability(X), axis=1)
