"""Load an uploaded model file into a :class:`~models.loaded.LoadedModel`, in-process.

:func:`load_model` runs in whatever process calls it: the inspection sandbox at upload
time, a job process (which already has its limits) afterwards. Formats that can run code
when loaded (pickle, joblib, TorchScript) are refused unless ``trust_uploads`` is true;
skops files are loaded with an explicit allowlist of types, never ``trusted=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.errors import InvalidModel, UnsupportedModelFormat, UntrustedFormat
from models.formats import FORMATS, SERVED_FORMATS
from models.loaded import LoadedModel
from models.loaders.lightgbm import load_lightgbm
from models.loaders.onnx import ONNX_NAMES_KEY, load_onnx
from models.loaders.parts import LoadedParts
from models.loaders.sklearn import (
    SKOPS_ALLOWED_BUILTINS,
    SKOPS_ALLOWED_FUNCTIONS,
    load_pickled,
    load_skops,
)
from models.loaders.torchscript import load_torchscript
from models.loaders.xgboost import load_xgboost

__all__ = ["load_model", "TASKS", "SKOPS_ALLOWED_BUILTINS", "SKOPS_ALLOWED_FUNCTIONS",
           "ONNX_NAMES_KEY"]

TASKS = ("regression", "binary", "multiclass")

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
        "sklearn": load_skops,
        "pickle": load_pickled,
        "joblib": load_pickled,
        "onnx": load_onnx,
        "torchscript": load_torchscript,
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
            if stored is None and n_classes is None:
                raise InvalidModel("The model names no classes and states no class count; "
                                   "upload it with classes=[...].")
            final_classes = list(stored) if stored is not None else \
                list(range(int(n_classes or 0)))
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
        capabilities=parts.capabilities,
        serial_predict=parts.serial_predict,
        probability_dtype=parts.probability_dtype,
    )
