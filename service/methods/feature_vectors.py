"""Job kind ``feature_vectors``: importance and semantics of features from tree rules.

With a model, its trees are read; without one (model-free mode), the method's default
forest is trained on the dataset: scikit-learn RandomForest, 2,500 trees of depth 3,
categorical columns one-hot encoded and merged back as feature groups, seeded.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from explainers.feature_vectors import (
    DegenerateInput,
    FeatureVectorsParams,
    check_feature_groups,
    run_feature_vectors,
)
from explainers.feature_vectors_figures import draw_feature_vectors, draw_importance
from models.dtypes import NUMERIC_DTYPES, dtype_of
from models.readers import read_ensemble
from service.errors import Unprocessable
from service.methods.inputs import (
    feature_names,
    model_columns,
    provenance,
    require_complete_target,
)
from service.registry import (
    Axis,
    CheckContext,
    JobInputError,
    JobKind,
    JobOutput,
    PlotSpec,
    RunContext,
)
from service.results.arrays import result_size

FOREST_TREES = 2500
FOREST_DEPTH = 3
MAX_CATEGORIES = 50
MAX_CLASSES = 20


class FeatureVectorsJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window_size: int = Field(1, ge=1, le=50)
    order: Literal["expected", "path", "random"] = "expected"
    dedup_rules: bool = True
    bagging: int = Field(0, ge=0, le=1000)
    random_state: int = Field(0, ge=0, lt=2**32)
    feature_groups: dict[str, list[str]] | None = Field(
        None, description="Original feature -> the model columns merged into it.")

    def method_params(self, groups: dict[str, list[str]] | None = None) -> FeatureVectorsParams:
        """The params as the method takes them (explainers.feature_vectors); ``groups``
        replaces ``feature_groups`` (model-free mode: those of the encoded columns).
        ``check`` checks the groups against the model once, at POST; the job process
        hands them to the method without checking them again."""
        return FeatureVectorsParams(
            window_size=self.window_size, order=self.order, dedup_rules=self.dedup_rules,
            bagging=self.bagging, random_state=self.random_state,
            feature_groups=groups if groups is not None else self.feature_groups)


def check(ctx: CheckContext[FeatureVectorsJobParams]) -> None:
    try:
        ctx.params.method_params()
    except ValueError as exc:
        raise Unprocessable(str(exc), code="invalid_params") from exc
    if ctx.model is None:
        if ctx.params.feature_groups:
            # Without a model the method one-hot encodes text columns and groups them
            # back itself; groups of model columns would be silently replaced.
            raise Unprocessable(
                "feature_groups merges the columns of an uploaded model; without model_id "
                "the default forest groups each text column's one-hot columns itself. "
                "Leave feature_groups out, or send the model_id whose columns they name.",
                code="invalid_params")
        # The default forest is trained on the target: every row needs a label.
        require_complete_target(ctx.dataset)
        return None
    if ctx.model.kind != "tree":
        raise Unprocessable(
            f"Feature Vectors reads the rules of tree models and this is a {ctx.model.kind} "
            "model; use permutation_importance, which works with any model, or leave out "
            "model_id to train the method's default forest on the dataset.",
            code="not_a_tree_model")
    names = feature_names(ctx.model, model_columns(ctx))
    for group, columns in (ctx.params.feature_groups or {}).items():
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise Unprocessable(f"feature_groups[{group!r}] names {unknown}, which are not "
                                f"features of the model.", code="invalid_params")
    try:
        check_feature_groups(names, ctx.params.feature_groups)
    except ValueError as exc:
        raise Unprocessable(f"{exc}.", code="invalid_params") from exc
    return None


def estimate(ctx: CheckContext[FeatureVectorsJobParams]) -> dict[str, Any]:
    if ctx.model is None:
        rows = ctx.dataset.n_rows
        # Categorical columns are one-hot encoded, then merged back into one feature.
        p = sum(1 for c in ctx.dataset.columns if c.name != ctx.dataset.target)
        return {"rows_to_predict": 0,
                "seconds": round(rows * FOREST_TREES * len(ctx.dataset.columns) / 4e7 + 2, 1),
                **result_size(result_arrays(p))}
    leaves = float(ctx.model.details.get("n_leaves") or 1000)
    owner = {column: group for group, columns in (ctx.params.feature_groups or {}).items()
             for column in columns}
    names = feature_names(ctx.model, model_columns(ctx))
    p = len({owner.get(name, name) for name in names})
    return {"rows_to_predict": 0,
            "seconds": round(leaves * (1 + ctx.params.bagging) / 5e5 + 0.5, 1),
            **result_size(result_arrays(p))}


def result_arrays(p: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of every array a result on ``p`` features (groups) stores."""
    return {"cooccurrence": ((p, p), "float32"), "vectors": ((p, 2), "float32")}


def run(ctx: RunContext[FeatureVectorsJobParams]) -> JobOutput:
    ctx.progress(0.0, "loading")
    if ctx.model is None:
        ensemble, names, groups, model_note = _train_default_forest(ctx)
    else:
        names = feature_names(ctx.model, model_columns(ctx))
        ensemble = ctx.load_model().tree_ensemble()
        groups, model_note = ctx.params.feature_groups, {"model": "uploaded"}
    try:
        result = run_feature_vectors(
            ensemble, params=ctx.params.method_params(groups), feature_names=names,
            progress=lambda p, s: ctx.progress(0.3 + 0.7 * p, s))
    except DegenerateInput as exc:
        raise JobInputError("degenerate", str(exc)) from exc
    summary = result.summary()
    summary["provenance"] = {**summary.get("provenance", {}), **model_note,
                             **provenance(seed=ctx.params.random_state)}
    arrays = result.arrays()
    features = Axis("feature", [str(n) for n in result.feature_names])
    return JobOutput(summary=summary, arrays=arrays, array_dims={
        "cooccurrence": [features, Axis("feature_2", features.labels)],
        "vectors": [features, Axis("component", ["v1", "v2"])]})



def _train_default_forest(ctx: RunContext[FeatureVectorsJobParams]
                          ) -> tuple[Any, list[str], dict[str, list[str]] | None, dict[str, Any]]:
    """The method's default forest on the dataset (model-free mode)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    target = ctx.dataset.target
    if target is None:
        raise JobInputError("no_target", "Model-free Feature Vectors trains a forest on the "
                            "target column; upload the dataset with target=<column>.")
    table: pa.Table = ctx.load_dataset()
    X, names, groups = _encode(table, exclude=target)
    y_column = table.column(target)
    if y_column.null_count:
        raise JobInputError("missing_target", f"The target column {target!r} has "
                            f"{y_column.null_count} missing values; fill or drop those rows.")
    y = np.asarray(y_column.to_numpy(zero_copy_only=False))
    # Labels are classes; so are integers with few distinct values (codes, counts of
    # a handful of levels); every other number is a regression target.
    numeric = pa.types.is_integer(y_column.type) or pa.types.is_floating(y_column.type)
    classify = not numeric or (pa.types.is_integer(y_column.type)
                               and len(np.unique(y)) <= MAX_CLASSES)
    forest_class = RandomForestClassifier if classify else RandomForestRegressor
    ctx.progress(0.05, "training")
    forest = forest_class(n_estimators=FOREST_TREES, max_depth=FOREST_DEPTH,
                          random_state=ctx.params.random_state, n_jobs=ctx.n_threads)
    forest.fit(X, y)
    ctx.progress(0.25, "reading")
    ensemble = read_ensemble(forest)
    note = {"model": "default_forest", "forest": type(forest).__name__,
            "n_estimators": FOREST_TREES, "max_depth": FOREST_DEPTH}
    return ensemble, names, groups or None, note


def _encode(table: pa.Table, *, exclude: str
            ) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """Numeric columns (models.dtypes.NUMERIC_DTYPES) as numbers, NaN for nulls; others
    (string, category, datetime) one-hot, grouped back."""
    columns: list[np.ndarray] = []
    names: list[str] = []
    groups: dict[str, list[str]] = {}
    for name in table.column_names:
        if name == exclude:
            continue
        column = table.column(name)
        if dtype_of(column.type) in NUMERIC_DTYPES:
            columns.append(np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False),
                                      dtype=np.float64))
            names.append(name)
            continue
        values = np.asarray(column.cast(pa.string()).to_numpy(zero_copy_only=False),
                            dtype=object)
        levels = sorted({v for v in values if v is not None})
        if len(levels) > MAX_CATEGORIES:
            raise JobInputError(
                "too_many_categories", f"Column {name!r} has {len(levels)} distinct values; "
                f"model-free Feature Vectors one-hot encodes at most {MAX_CATEGORIES}. Drop "
                "the column or upload a model.")
        members = []
        for level in levels:
            columns.append((values == level).astype(np.float64))
            member = f"{name}={level}"
            names.append(member)
            members.append(member)
        groups[name] = members
    if not columns:
        raise JobInputError("no_features", "The dataset has no feature columns besides the "
                            "target.")
    return np.column_stack(columns), names, groups


KIND = JobKind(
    name="feature_vectors",
    params_model=FeatureVectorsJobParams,
    result_advice="merge columns into feature_groups",
    needs_model="optional",
    check=check,
    estimate=estimate,
    run=run,
    plots={"feature_vectors": PlotSpec(draw=draw_feature_vectors),
           "importance": PlotSpec(draw=draw_importance)},
)
