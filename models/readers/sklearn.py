"""Read fitted scikit-learn tree models into a :class:`~models.trees.TreeEnsemble`.

Supported: DecisionTree/ExtraTree, RandomForest, ExtraTrees (regressors and single-output
classifiers), GradientBoosting and HistGradientBoosting (regressors with an identity link,
binary and multiclass classifiers), and a Pipeline whose steps before the final estimator
are all ``"passthrough"``.

Semantics encoded here (checked against scikit-learn 1.9 in the tests):

- ``tree_``-based models cast the input to float32 and go left when
  ``float32(x) <= threshold`` (threshold float64); NaN follows ``missing_go_to_left``,
  which the splitter sets at fit time (towards the child with more samples when no NaN
  reached the node). Node numbering is scikit-learn's, so ``apply`` indices coincide.
- HistGradientBoosting compares the float64 input, ``x <= num_threshold``; NaN follows
  ``missing_go_to_left``. Its categorical splits run on ordinal codes produced by an
  internal OrdinalEncoder, with the categorical columns moved first; the reader maps
  both the columns and the codes back to the caller's columns and category values.
- Raw output: forests and single trees give ``predict`` / ``predict_proba`` (class
  fractions, identity link); boosting gives ``decision_function`` (``predict`` for
  regressors), with the init prior or baseline as ``base_score``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn._loss.link import HalfLogitLink, IdentityLink, LogitLink, MultinomialLogit
from sklearn.dummy import DummyClassifier, DummyRegressor
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
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from sklearn.utils.validation import check_is_fitted

from models.readers import NotATreeModel
from models.trees import MISSING_DEFAULT, Link, Tree, TreeEnsemble

__all__ = ["read_sklearn"]

_SINGLE_TREES = (DecisionTreeRegressor, DecisionTreeClassifier)
_FORESTS = (RandomForestRegressor, RandomForestClassifier, ExtraTreesRegressor,
            ExtraTreesClassifier)
_BOOSTING = (GradientBoostingRegressor, GradientBoostingClassifier)
_HIST_BOOSTING = (HistGradientBoostingRegressor, HistGradientBoostingClassifier)
# DummyClassifier strategies whose predict_proba is the same for every row.
_CONSTANT_DUMMY_CLASSIFIER = ("prior", "most_frequent", "constant")


def read_sklearn(estimator: Any) -> TreeEnsemble:
    """Read a fitted scikit-learn tree estimator (or passthrough Pipeline) exactly.

    Parameters
    ----------
    estimator : a fitted DecisionTree*/ExtraTree*, RandomForest*, ExtraTrees*,
        GradientBoosting*, HistGradientBoosting* estimator, or a Pipeline whose steps
        before the final one are all ``"passthrough"``.

    Returns
    -------
    TreeEnsemble with ``source="sklearn"``. Raw output of shape [n_rows, n_outputs]:
    ``predict`` (regressors, n_outputs 1), ``predict_proba`` (tree and forest
    classifiers, n_outputs = n_classes, binary included), ``decision_function``
    (boosted classifiers: 1 column with a logistic link for binary, K columns with a
    softmax link for K classes). GradientBoostingClassifier with ``loss="exponential"``
    is the one exception: its raw output is ``2 * decision_function``, so that the
    logistic link gives ``predict_proba``.

    Raises
    ------
    NotATreeModel
        For any other object, an unfitted estimator, a multi-output model, a
        non-constant boosting init, a non-identity regression link (poisson, gamma),
        categories that are not non-negative integers, or a Pipeline that transforms
        its input.
    """
    model = _final_estimator(estimator)
    name = type(model).__name__
    if not isinstance(model, _SINGLE_TREES + _FORESTS + _BOOSTING + _HIST_BOOSTING):
        raise NotATreeModel(f"{name} is not a scikit-learn tree model tabxai can read; "
                            "use a decision tree, random forest, extra trees or "
                            "(histogram) gradient boosting estimator")
    try:
        check_is_fitted(model)
    except NotFittedError as exc:
        raise NotATreeModel(f"{name} is not fitted; fit it before uploading") from exc
    if isinstance(model, _HIST_BOOSTING):
        return _read_hist_boosting(model)
    if getattr(model, "n_outputs_", 1) != 1:
        raise NotATreeModel(f"{name} has {model.n_outputs_} outputs; tabxai reads "
                            "single-output tree models only")
    if isinstance(model, _BOOSTING):
        return _read_boosting(model)
    members = [model] if isinstance(model, _SINGLE_TREES) else list(model.estimators_)
    return _read_forest(model, members)


def _final_estimator(estimator: Any) -> Any:
    """The estimator at the end of a Pipeline of passthrough steps, or the input."""
    if not isinstance(estimator, Pipeline):
        return estimator
    for step_name, step in estimator.steps[:-1]:
        if step is not None and step != "passthrough":
            raise NotATreeModel(
                f"the Pipeline step {step_name!r} transforms the input before the model; "
                "its trees would split on the transformed features, not the uploaded "
                "columns, so upload the final estimator with pre-transformed data instead")
    final = estimator.steps[-1][1]
    if final is None or final == "passthrough":
        raise NotATreeModel("the Pipeline ends in 'passthrough' and holds no model")
    return _final_estimator(final)


def _read_forest(model: Any, members: list[Any]) -> TreeEnsemble:
    """Single trees and forests: leaves hold means (regression) or class fractions."""
    is_classifier = isinstance(model, (DecisionTreeClassifier, RandomForestClassifier,
                                       ExtraTreesClassifier))
    trees = tuple(_tree_from_tree_(m.tree_, classifier=is_classifier, scale=1.0, output=0)
                  for m in members)
    n_outputs = int(model.n_classes_) if is_classifier else 1
    return TreeEnsemble(
        trees=trees,
        n_features=int(model.n_features_in_),
        n_outputs=n_outputs,
        base_score=np.zeros(n_outputs, dtype=np.float64),
        feature_names=_feature_names(model),
        leaf_scale=1.0 / len(members),
        link="identity",
        comparison="<=",
        input_float32=True,
        source="sklearn",
    )


def _read_boosting(model: Any) -> TreeEnsemble:
    """GradientBoosting: raw = init prior + learning_rate * sum of stage trees."""
    link, factor = _link_of(model)
    stages = model.estimators_  # [n_stages, K] DecisionTreeRegressor
    scale = float(model.learning_rate) * factor
    trees = tuple(_tree_from_tree_(stages[i, k].tree_, classifier=False, scale=scale,
                                   output=k)
                  for i in range(stages.shape[0]) for k in range(stages.shape[1]))
    return TreeEnsemble(
        trees=trees,
        n_features=int(model.n_features_in_),
        n_outputs=int(stages.shape[1]),
        base_score=_boosting_init(model) * factor,
        feature_names=_feature_names(model),
        leaf_scale=1.0,
        link=link,
        comparison="<=",
        input_float32=True,
        source="sklearn",
    )


def _boosting_init(model: Any) -> npt.NDArray[np.float64]:
    """The init estimator's raw prediction, which must not depend on the row."""
    init = model.init_
    constant = (
        (isinstance(init, str) and init == "zero")
        or type(init) is DummyRegressor
        or (type(init) is DummyClassifier and init.strategy in _CONSTANT_DUMMY_CLASSIFIER)
    )
    if not constant:
        raise NotATreeModel(
            f"{type(model).__name__} starts from the init estimator {init!r}, whose "
            "prediction can differ from row to row; tabxai reads only a constant init "
            "(the default prior, init='zero', or a constant DummyRegressor/DummyClassifier)")
    row = np.zeros((1, int(model.n_features_in_)), dtype=np.float32)
    with warnings.catch_warnings():
        # A model fitted on a DataFrame warns about the unnamed probe row; the init is
        # constant, so the row's values and names are irrelevant.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        raw = model._raw_predict_init(row)
    return np.asarray(raw, dtype=np.float64).reshape(-1)


def _link_of(model: Any) -> tuple[Link, float]:
    """The ensemble link of a boosting model's loss, and the factor to fold into raw."""
    link = model._loss.link
    if isinstance(link, IdentityLink):
        return "identity", 1.0
    if isinstance(link, HalfLogitLink):
        # predict_proba = expit(2 * raw): doubling raw (exact in floating point) keeps
        # the logistic link.
        return "logistic", 2.0
    if isinstance(link, LogitLink):
        return "logistic", 1.0
    if isinstance(link, MultinomialLogit):
        return "softmax", 1.0
    raise NotATreeModel(
        f"{type(model).__name__} with loss {model.loss!r} maps its raw output through a "
        f"{type(link).__name__}; tabxai reads identity, logistic and softmax links only")


def _tree_from_tree_(tree_: Any, *, classifier: bool, scale: float, output: int) -> Tree:
    """Copy a ``sklearn.tree._tree.Tree`` keeping its node numbering."""
    left = np.asarray(tree_.children_left, dtype=np.int32)
    leaf = left < 0
    if classifier:
        # DecisionTreeClassifier.predict_proba renormalizes each leaf's fractions and
        # leaves an all-zero row as is; doing it here reproduces it bit for bit.
        value = np.array(tree_.value[:, 0, :], dtype=np.float64)
        total = value.sum(axis=1, keepdims=True)
        total[total == 0.0] = 1.0
        value /= total
    else:
        value = np.asarray(tree_.value[:, 0, :1], dtype=np.float64) * scale
    return Tree(
        left=np.where(leaf, -1, left).astype(np.int32),
        right=np.where(leaf, -1, tree_.children_right).astype(np.int32),
        feature=np.where(leaf, -1, tree_.feature).astype(np.int32),
        threshold=np.where(leaf, 0.0, tree_.threshold).astype(np.float64),
        default_left=np.asarray(tree_.missing_go_to_left, dtype=bool),
        missing=np.full(left.shape[0], MISSING_DEFAULT, dtype=np.int8),
        value=value,
        cover=np.asarray(tree_.weighted_n_node_samples, dtype=np.float64).copy(),
        output=output,
    )


def _read_hist_boosting(model: Any) -> TreeEnsemble:
    """HistGradientBoosting: raw = baseline + sum of predictor leaves (already shrunk)."""
    link, factor = _link_of(model)
    columns, categories = _hist_input_map(model)
    known, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    trees = tuple(
        _tree_from_predictor(predictor, output=k, columns=columns, categories=categories,
                             known=known, f_idx_map=f_idx_map)
        for iteration in model._predictors for k, predictor in enumerate(iteration))
    return TreeEnsemble(
        trees=trees,
        n_features=int(model.n_features_in_),
        n_outputs=int(model.n_trees_per_iteration_),
        base_score=np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
        * factor,
        feature_names=_feature_names(model),
        leaf_scale=1.0,
        link=link,
        comparison="<=",
        input_float32=False,
        source="sklearn",
    )


def _hist_input_map(model: Any
                    ) -> tuple[npt.NDArray[np.int32], dict[int, npt.NDArray[np.int64]]]:
    """Map the predictors' feature space back to the caller's columns.

    Returns ``columns[j]``, the caller's column of internal feature ``j``, and, for each
    internal categorical feature, the caller's category value of each ordinal code.
    """
    preprocessor = model._preprocessor
    if preprocessor is None:
        return np.arange(model.n_features_in_, dtype=np.int32), {}
    columns = np.empty(preprocessor.n_features_in_, dtype=np.int32)
    for step_name, _, selected in preprocessor.transformers_:
        out = preprocessor.output_indices_[step_name]
        columns[out] = np.flatnonzero(np.asarray(selected))
    encoder = preprocessor.named_transformers_["encoder"]
    start = preprocessor.output_indices_["encoder"].start
    categories: dict[int, npt.NDArray[np.int64]] = {}
    for j, values in enumerate(encoder.categories_):
        raw = np.asarray(values)
        # NaN is the encoder's missing value, never a code.
        if raw.dtype.kind == "f":
            raw = raw[~np.isnan(raw)]
        present = [v for v in raw.tolist() if isinstance(v, str)]
        if raw.dtype.kind == "O" and len(present) == len(raw) - sum(
                v is None or v != v for v in raw.tolist()):
            # Text categories reach the model as their index among the encoder's
            # categories (models.loaders.sklearn, models.features), which is the encoder's own
            # ordinal code.
            categories[start + j] = np.arange(len(present), dtype=np.int64)
            continue
        if raw.dtype.kind not in "iuf" or not (
                np.all(raw >= 0) and np.all(raw == np.floor(raw))
                and np.all(raw < 2**53)):
            column = columns[start + j]
            name = model.feature_names_in_[column] if hasattr(model, "feature_names_in_") \
                else column
            raise NotATreeModel(
                f"categorical feature {name!r} of {type(model).__name__} has categories "
                f"{raw[:5].tolist()}…; tabxai carries categories as non-negative integer "
                "codes, so encode them as 0, 1, 2, … before fitting")
        categories[start + j] = raw.astype(np.int64)
    return columns, categories


def _tree_from_predictor(predictor: Any, *, output: int, columns: npt.NDArray[np.int32],
                         categories: dict[int, npt.NDArray[np.int64]],
                         known: npt.NDArray[np.uint32], f_idx_map: npt.NDArray[np.uint32]
                         ) -> Tree:
    """Copy a HistGradientBoosting TreePredictor keeping its node numbering."""
    nodes = predictor.nodes
    leaf = nodes["is_leaf"].astype(bool)
    n = leaf.shape[0]
    default_left = nodes["missing_go_to_left"].astype(bool)
    is_categorical = nodes["is_categorical"].astype(bool) & ~leaf
    node_categories: list[npt.NDArray[np.int64] | None] = [None] * n
    set_left = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(is_categorical):
        feature = int(nodes["feature_idx"][i])
        values = categories[feature]
        left_codes = _bitset_members(predictor.raw_left_cat_bitsets[nodes["bitset_idx"][i]],
                                     values.shape[0])
        known_codes = _bitset_members(known[f_idx_map[feature]], values.shape[0])
        # scikit-learn sends the left set left, the other known codes right, and unknown
        # or negative values (and NaN) the missing way. Listing the set whose direction
        # differs from the missing way sends everything unlisted the missing way.
        if default_left[i]:
            node_categories[i] = np.sort(values[np.setdiff1d(known_codes, left_codes)])
            set_left[i] = False
        else:
            node_categories[i] = np.sort(values[left_codes])
            set_left[i] = True
    any_categorical = bool(is_categorical.any())
    return Tree(
        left=np.where(leaf, -1, nodes["left"].astype(np.int64)).astype(np.int32),
        right=np.where(leaf, -1, nodes["right"].astype(np.int64)).astype(np.int32),
        feature=np.where(leaf, -1, columns[nodes["feature_idx"]]).astype(np.int32),
        threshold=np.where(leaf | is_categorical, 0.0, nodes["num_threshold"]
                           ).astype(np.float64),
        default_left=default_left,
        missing=np.full(n, MISSING_DEFAULT, dtype=np.int8),
        value=np.asarray(nodes["value"], dtype=np.float64).reshape(-1, 1).copy(),
        cover=np.asarray(nodes["count"], dtype=np.float64),
        output=output,
        categories=tuple(node_categories) if any_categorical else None,
        category_set_left=set_left if any_categorical else None,
    )


def _bitset_members(bitset: npt.NDArray[np.uint32], n_codes: int) -> npt.NDArray[np.int64]:
    """Codes below ``n_codes`` present in a scikit-learn bitset of 32-bit words."""
    codes = np.arange(n_codes, dtype=np.int64)
    words = np.asarray(bitset, dtype=np.uint64)[codes // 32]
    return codes[((words >> (codes % 32).astype(np.uint64)) & 1).astype(bool)]


def _feature_names(model: Any) -> tuple[str, ...] | None:
    names = getattr(model, "feature_names_in_", None)
    return None if names is None else tuple(str(n) for n in names)
