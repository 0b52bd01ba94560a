"""Inspect an uploaded model once, in a sandboxed child process, and describe it.

:func:`inspect_model` detects the format, loads the model, reads its trees (for tree
models), checks that it predicts, and returns a :class:`ModelInfo` that the service stores
as JSON. All of that runs under :func:`models.sandbox.run_isolated`, so a file that
crashes, hangs or exhausts memory in a parser becomes a ModelInspectionFailed here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import InvalidModel, ModelError
from models.formats import detect_format
from models.loaded import LoadedModel
from models.loading import load_model
from models.sandbox import run_isolated

__all__ = ["ModelInfo", "inspect_model", "describe_model"]

logger = logging.getLogger(__name__)

_CHECK_ROWS = 4


@dataclass(frozen=True)
class ModelInfo:
    """What tabxai knows about an uploaded model; stored as JSON (``to_dict``).

    format: one of models.formats.FORMATS; kind: "tree", "neural" or "other";
    task: "regression", "binary" or "multiclass"; n_features: input width;
    feature_names: the model's column names or None; n_outputs: width of the raw output
    (see LoadedModel); classes: labels in output order, None for regression;
    categories: feature name (or str(column index)) -> category labels in code order;
    details: n_trees, max_depth, n_leaves, library_version, objective, capabilities
    ({"tree_shap": bool, "reason": str}), ONNX input/output names,
    columns_by_position (uploaded to match datasets by position), unseen_categories
    ("error": values outside ``categories`` are refused), input ("dataframe": predicts
    from a DataFrame with its column names), ...
    """

    format: str
    kind: str
    task: str
    n_features: int
    feature_names: list[str] | None
    n_outputs: int
    classes: list[Any] | None
    categories: dict[str, list[str]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(
            format=data["format"],
            kind=data["kind"],
            task=data["task"],
            n_features=int(data["n_features"]),
            feature_names=None
            if data.get("feature_names") is None
            else list(data["feature_names"]),
            n_outputs=int(data["n_outputs"]),
            classes=None if data.get("classes") is None else list(data["classes"]),
            categories={k: list(v) for k, v in (data.get("categories") or {}).items()},
            details=dict(data.get("details") or {}),
        )


def inspect_model(
    path: Path,
    *,
    format: str | None = None,
    feature_names: list[str] | None = None,
    task: str | None = None,
    classes: list[Any] | None = None,
    trust_uploads: bool = False,
    by_position: bool = False,
    memory_limit_bytes: int = 2 << 30,
    time_limit_s: float = 60.0,
) -> ModelInfo:
    """Detect, load and describe the model file at ``path`` in a child process.

    format: detected from the bytes when None. feature_names, task, classes,
    trust_uploads: as for models.loading.load_model. by_position: match a model without
    feature names to datasets by position (``details["columns_by_position"]``; ONNX models
    without names are refused by jobs otherwise); InvalidModel for a model that has
    names. memory_limit_bytes (default 2 GiB)
    and time_limit_s (default 60 s): limits of the child (models.sandbox.run_isolated).

    Raises the ModelError subclass the child raised, or ModelInspectionFailed when the
    child crashed, hung or ran out of memory.
    """
    return run_isolated(
        describe_model,
        str(path),
        format=format,
        feature_names=feature_names,
        task=task,
        classes=classes,
        trust_uploads=trust_uploads,
        by_position=by_position,
        memory_limit_bytes=memory_limit_bytes,
        time_limit_s=time_limit_s,
    )


def describe_model(
    path: str,
    *,
    format: str | None = None,
    feature_names: list[str] | None = None,
    task: str | None = None,
    classes: list[Any] | None = None,
    trust_uploads: bool = False,
    by_position: bool = False,
) -> ModelInfo:
    """Detect, load and describe the model in this process (the sandbox's child body)."""
    file = Path(path)
    fmt = format or detect_format(file)
    model = load_model(
        file,
        format=fmt,
        feature_names=feature_names,
        task=task,
        classes=classes,
        trust_uploads=trust_uploads,
        n_threads=1,
    )
    if by_position:
        if model.feature_names is not None:
            raise InvalidModel(
                "by_position=true was given, but the model has feature names "
                f"({_clip(model.feature_names)}) and is matched to datasets by "
                "name; upload it without by_position.")
        model.details["columns_by_position"] = True
    _check_predicts(model)
    kind, tree_details = _tree_details(model)
    tree_details["predict_rows_per_second"] = _predict_rate(model)
    return ModelInfo(
        format=fmt,
        kind=kind,
        task=model.task,
        n_features=model.n_features,
        feature_names=model.feature_names,
        n_outputs=model.n_outputs,
        classes=_jsonable(model.classes),
        categories=model.categories,
        details=_jsonable({**model.details, **tree_details}),
    )


def _check_predicts(model: LoadedModel) -> None:
    X = np.zeros((_CHECK_ROWS, model.n_features))
    outputs = [("raw", (_CHECK_ROWS, model.n_outputs))]
    if model.task != "regression":
        outputs.append(("probability", (_CHECK_ROWS, len(model.classes or []))))
    for output, shape in outputs:
        try:
            values = model.predict(X, output=output)  # type: ignore[arg-type]
        except ModelError:
            raise
        except Exception as error:  # noqa: BLE001 - any library failure means "cannot predict"
            raise InvalidModel(
                f"The model failed to predict on {_CHECK_ROWS} rows of zeros: "
                f"{type(error).__name__}: {error}"
            ) from error
        if values.shape != shape:
            raise InvalidModel(
                f"The model's {output} output has shape {list(values.shape)} on {_CHECK_ROWS} "
                f"rows; expected {list(shape)}."
            )


def _predict_rate(model: LoadedModel, n_rows: int = 2048) -> float:
    """Rows per second of one thread predicting ``n_rows`` random rows (best of three).

    Cost estimates of jobs (``?dry_run=true``) divide the rows a job will predict by this.
    """
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, model.n_features))
    # Categorical columns get codes of their categories, as a dataset's rows would.
    keys = model.feature_names or [str(j) for j in range(model.n_features)]
    for j, key in enumerate(keys):
        if model.categories.get(key):
            X[:, j] = rng.integers(0, len(model.categories[key]), n_rows)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        model.predict(X, output="raw")
        best = min(best, time.perf_counter() - start)
    return round(n_rows / max(best, 1e-9), 1)


def _tree_details(model: LoadedModel) -> tuple[str, dict[str, Any]]:
    """The model's kind after trying to read its trees, and the tree facts for details."""
    if model.kind != "tree":
        return model.kind, {
            "capabilities": {
                "tree_shap": False,
                "reason": (f"This {model.format} model is not a tree ensemble (kind "
                           f"{model.kind!r}): it has no trees to read."),
            }
        }
    try:
        ensemble = model.tree_ensemble()
    except ValueError as error:  # NotATreeModel, or a reader refusing this model's trees
        return "other", {"capabilities": {"tree_shap": False, "reason": str(error)}}
    except ImportError as error:
        logger.warning(
            "tree reader unavailable", extra={"event": "tree_reader_missing", "error": str(error)}
        )
        return "tree", {
            "capabilities": {
                "tree_shap": False,
                "reason": f"The tree reader is not installed: {error}",
            }
        }
    caps = ensemble.capabilities
    exportable = bool(caps.get("xgboost_export", True))
    capabilities: dict[str, Any] = {"tree_shap": exportable}
    if not exportable:
        capabilities["reason"] = str(
            caps.get("xgboost_export_reason", "the trees cannot be exported")
        )
    return "tree", {
        "n_trees": ensemble.n_trees,
        "max_depth": ensemble.max_depth(),
        "n_leaves": ensemble.n_leaves(),
        "capabilities": capabilities,
    }


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _clip(names: list[str], n: int = 10) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
