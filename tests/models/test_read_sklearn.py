"""read_sklearn against scikit-learn itself: leaf indices and raw predictions.

Probe rows sit exactly on split thresholds, on their float64 and float32 neighbours, and
hold NaN (and, for categorical splits, unknown, negative and non-integer codes), so a
wrong comparison, rounding or missing-value direction shows up as a different leaf.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from scipy.special import expit, softmax
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from threadpoolctl import threadpool_limits

from models import tree_eval
from models.readers import NotATreeModel, read_ensemble
from models.readers.sklearn import read_sklearn
from models.trees import TreeEnsemble

N_ROWS = 300
N_FEATURES = 5
CATEGORICAL = 3  # column holding integer category codes in the HistGradientBoosting data
N_CATEGORIES = 7


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # HistGradientBoosting uses OpenMP; the shared CI machine has 2 cores.
    with threadpool_limits(1):
        yield


def _data(task: str, *, nan: bool, categorical: bool = False
          ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N_ROWS, N_FEATURES))
    X[:, 2] = np.round(X[:, 2], 1)  # repeated values: thresholds between close ties
    if categorical:
        X[:, CATEGORICAL] = rng.integers(0, N_CATEGORIES, size=N_ROWS)
    signal = X[:, 0] + np.sin(2 * X[:, 1]) + 0.5 * X[:, 2] + (X[:, CATEGORICAL] % 3 == 1)
    if nan:
        X[rng.random(X.shape) < 0.08] = np.nan
    if task == "regression":
        return X, signal + 0.1 * rng.normal(size=N_ROWS)
    if task == "binary":
        return X, (signal > np.median(signal)).astype(np.float64)
    return X, np.digitize(signal, np.quantile(signal, [0.33, 0.66])).astype(np.float64)


def _probe(X: npt.NDArray[np.float64], ensemble: TreeEnsemble,
           leaves: npt.NDArray[np.int64], *, max_trees: int = 6, max_nodes: int = 12
           ) -> npt.NDArray[np.float64]:
    """Rows reaching sampled split nodes (by the library's own leaves), with the split
    feature set on the threshold, its float64/float32 neighbours, NaN and odd codes."""
    rng = np.random.default_rng(0)
    rows = []
    for t in rng.choice(ensemble.n_trees, min(max_trees, ensemble.n_trees), replace=False):
        tree = ensemble.trees[t]
        splits = np.flatnonzero(~tree.is_leaf)
        for node in rng.choice(splits, min(max_nodes, splits.size), replace=False):
            reaching = np.flatnonzero(np.isin(leaves[:, t], _subtree_leaves(tree, node)))
            base = X[reaching[0]]
            cats = tree.categories[node] if tree.categories is not None else None
            if cats is None:
                thr = tree.threshold[node]
                f32 = np.float32(thr)
                values = [thr, np.nextafter(thr, -np.inf), np.nextafter(thr, np.inf),
                          float(f32), float(np.nextafter(f32, np.float32(-np.inf))),
                          float(np.nextafter(f32, np.float32(np.inf))), np.nan]
                # A NaN-only split has threshold +inf; scikit-learn refuses inputs
                # beyond float32's range, so only the NaN probe is kept there.
                values = [v for v in values if not abs(v) > np.finfo(np.float32).max]
            else:
                values = [*range(N_CATEGORIES), N_CATEGORIES, 99, -1, 2.5, np.nan]
            for v in values:
                row = base.copy()
                row[tree.feature[node]] = v
                rows.append(row)
    return np.vstack([X, np.array(rows)])


def _subtree_leaves(tree: Any, node: int) -> npt.NDArray[np.int64]:
    stack, found = [node], []
    while stack:
        n = stack.pop()
        if tree.left[n] < 0:
            found.append(n)
        else:
            stack += [int(tree.left[n]), int(tree.right[n])]
    return np.array(found)


def _library_leaves(est: Any, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Leaf ids in the library's own numbering, [n_rows, n_trees] in reader order."""
    if isinstance(est, (HistGradientBoostingRegressor, HistGradientBoostingClassifier)):
        return _hist_leaves(est, X)
    out = np.asarray(est.apply(X))
    return out.reshape(X.shape[0], -1).astype(np.int64)


def _hist_leaves(est: Any, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """HistGradientBoosting has no apply: run scikit-learn's own predictor on copies of
    each tree whose node values are replaced by the node ids."""
    Xi = est._preprocess_X(X, reset=False)
    known, f_idx_map = est._bin_mapper.make_known_categories_bitsets()
    columns = []
    for iteration in est._predictors:
        for p in iteration:
            nodes = p.nodes.copy()
            nodes["value"] = np.arange(nodes.shape[0])
            ids = TreePredictor(nodes, p.binned_left_cat_bitsets, p.raw_left_cat_bitsets
                                ).predict(Xi, known, f_idx_map, n_threads=1)
            columns.append(ids.astype(np.int64))
    return np.column_stack(columns)


def _raw_reference(est: Any, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if hasattr(est, "decision_function"):
        ref = est.decision_function(X)
    elif hasattr(est, "predict_proba"):
        ref = est.predict_proba(X)
    else:
        ref = est.predict(X)
    return np.asarray(ref, dtype=np.float64).reshape(X.shape[0], -1)


TREE_CASES: list[tuple[str, str, bool, Callable[[], Any]]] = [
    ("deep-tree-reg", "regression", True, lambda: DecisionTreeRegressor(random_state=0)),
    ("deep-tree-bin", "binary", False, lambda: DecisionTreeClassifier(random_state=0)),
    ("tree-multi", "multiclass", True,
     lambda: DecisionTreeClassifier(max_depth=6, random_state=0)),
    ("rf-reg-depth12", "regression", True,
     lambda: RandomForestRegressor(20, max_depth=12, random_state=0, n_jobs=1)),
    ("rf-bin", "binary", False,
     lambda: RandomForestClassifier(20, max_depth=5, random_state=0, n_jobs=1)),
    ("rf-multi", "multiclass", True,
     lambda: RandomForestClassifier(20, max_depth=5, random_state=0, n_jobs=1)),
    ("et-reg", "regression", True,
     lambda: ExtraTreesRegressor(20, max_depth=5, random_state=0, n_jobs=1)),
    ("et-bin", "binary", True,
     lambda: ExtraTreesClassifier(20, max_depth=5, random_state=0, n_jobs=1)),
    ("et-multi", "multiclass", False,
     lambda: ExtraTreesClassifier(20, max_depth=5, random_state=0, n_jobs=1)),
    ("gb-reg", "regression", False,
     lambda: GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0)),
    ("gb-reg-huber-zero", "regression", False,
     lambda: GradientBoostingRegressor(n_estimators=20, loss="huber", init="zero",
                                       subsample=0.7, random_state=0)),
    ("gb-bin", "binary", False,
     lambda: GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0)),
    ("gb-bin-exponential", "binary", False,
     lambda: GradientBoostingClassifier(n_estimators=20, loss="exponential",
                                        random_state=0)),
    ("gb-bin-most-frequent", "binary", False,
     lambda: GradientBoostingClassifier(n_estimators=20,
                                        init=DummyClassifier(strategy="most_frequent"),
                                        random_state=0)),
    ("gb-multi", "multiclass", False,
     lambda: GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0)),
    ("hgb-reg", "regression", True,
     lambda: HistGradientBoostingRegressor(max_iter=20, categorical_features=[CATEGORICAL],
                                           random_state=0)),
    ("hgb-reg-numeric", "regression", True,
     lambda: HistGradientBoostingRegressor(max_iter=20, random_state=0)),
    ("hgb-bin", "binary", True,
     lambda: HistGradientBoostingClassifier(max_iter=20,
                                            categorical_features=[CATEGORICAL],
                                            random_state=0)),
    ("hgb-multi", "multiclass", True,
     lambda: HistGradientBoostingClassifier(max_iter=20,
                                            categorical_features=[CATEGORICAL],
                                            random_state=0)),
]


@pytest.mark.parametrize(("task", "train_nan", "make"), [c[1:] for c in TREE_CASES],
                         ids=[c[0] for c in TREE_CASES])
def test_leaves_and_raw_output_match_sklearn(task: str, train_nan: bool,
                                             make: Callable[[], Any]) -> None:
    est = make()
    is_hist = isinstance(est, (HistGradientBoostingRegressor,
                               HistGradientBoostingClassifier))
    X, y = _data(task, nan=train_nan, categorical=is_hist)
    est.fit(X, y)
    ensemble = read_sklearn(est)
    assert ensemble.source == "sklearn"
    assert ensemble.comparison == "<="
    assert ensemble.input_float32 is not is_hist

    probe = _probe(X, ensemble, _library_leaves(est, X))
    assert np.isnan(probe).any()
    np.testing.assert_array_equal(tree_eval.apply(ensemble, probe),
                                  _library_leaves(est, probe))

    # GradientBoosting's apply takes NaN but its decision_function refuses it.
    rows = probe[~np.isnan(probe).any(axis=1)] if isinstance(
        est, (GradientBoostingRegressor, GradientBoostingClassifier)) else probe
    raw = tree_eval.predict_raw(ensemble, rows)
    reference = _raw_reference(est, rows)
    if getattr(est, "loss", None) == "exponential":
        reference = 2.0 * reference  # documented: raw is the log-odds
    assert raw.shape == reference.shape == (rows.shape[0], ensemble.n_outputs)
    np.testing.assert_allclose(raw, reference, rtol=1e-9, atol=1e-12)

    if ensemble.link == "logistic":
        np.testing.assert_allclose(expit(raw[:, 0]), est.predict_proba(rows)[:, 1],
                                   rtol=1e-9, atol=1e-12)
    elif ensemble.link == "softmax":
        np.testing.assert_allclose(softmax(raw, axis=1), est.predict_proba(rows),
                                   rtol=1e-9, atol=1e-12)


def test_depth_and_cover_follow_the_library() -> None:
    X, y = _data("regression", nan=True)
    tree = DecisionTreeRegressor(random_state=0).fit(X, y)
    ensemble = read_sklearn(tree)
    assert ensemble.max_depth() == tree.get_depth() >= 10
    assert ensemble.n_leaves() == tree.get_n_leaves()
    assert ensemble.trees[0].cover[0] == N_ROWS

    Xc, yc = _data("multiclass", nan=True, categorical=True)
    hist = HistGradientBoostingClassifier(max_iter=5, categorical_features=[CATEGORICAL],
                                          random_state=0).fit(Xc, yc)
    hist_ensemble = read_sklearn(hist)
    predictors = [p for iteration in hist._predictors for p in iteration]
    assert [t.depth() for t in hist_ensemble.trees] == [p.get_max_depth()
                                                        for p in predictors]
    assert [t.output for t in hist_ensemble.trees[:3]] == [0, 1, 2]
    assert any(t.has_categorical for t in hist_ensemble.trees)
    for t in (*ensemble.trees, *hist_ensemble.trees):
        split = ~t.is_leaf
        np.testing.assert_array_equal(t.cover[t.left[split]] + t.cover[t.right[split]],
                                      t.cover[split])


def test_forest_and_boosting_layout() -> None:
    X, y = _data("binary", nan=False)
    forest = RandomForestClassifier(3, max_depth=3, random_state=0, n_jobs=1).fit(X, y)
    ensemble = read_sklearn(forest)
    assert (ensemble.n_outputs, ensemble.leaf_scale, ensemble.link) == (2, 1 / 3, "identity")
    np.testing.assert_array_equal(ensemble.base_score, [0.0, 0.0])

    boosted = GradientBoostingClassifier(n_estimators=4, learning_rate=0.3,
                                         random_state=0).fit(X, y)
    gb = read_sklearn(boosted)
    assert (gb.n_trees, gb.n_outputs, gb.link) == (4, 1, "logistic")
    prior = y.mean()
    np.testing.assert_allclose(gb.base_score, [np.log(prior / (1 - prior))], rtol=1e-12)
    leaves = boosted.estimators_[0, 0].tree_.children_left < 0
    np.testing.assert_array_equal(
        gb.trees[0].value[leaves, 0],
        0.3 * boosted.estimators_[0, 0].tree_.value[leaves, 0, 0])


def test_feature_names_and_passthrough_pipeline() -> None:
    X, y = _data("regression", nan=False)
    frame = pd.DataFrame(X, columns=[f"col_{i}" for i in range(N_FEATURES)])
    pipe = Pipeline([("a", "passthrough"), ("b", None),
                     ("model", RandomForestRegressor(4, max_depth=4, random_state=0,
                                                     n_jobs=1))]).fit(frame, y)
    ensemble = read_ensemble(pipe)
    assert ensemble.feature_names == tuple(frame.columns)
    assert ensemble.n_features == N_FEATURES
    np.testing.assert_allclose(tree_eval.predict_raw(ensemble, X)[:, 0],
                               pipe.predict(frame), rtol=1e-9)

    boosted = GradientBoostingRegressor(n_estimators=3, random_state=0).fit(frame, y)
    np.testing.assert_allclose(tree_eval.predict_raw(read_sklearn(boosted), X)[:, 0],
                               boosted.predict(frame), rtol=1e-9)


def _refused_models() -> list[tuple[str, Any]]:
    X, y = _data("regression", nan=False)
    Xb, yb = _data("binary", nan=False)
    Xc, _ = _data("regression", nan=False, categorical=True)
    Xneg = Xc.copy()
    Xneg[:, CATEGORICAL] -= 1  # a category -1 cannot be carried as a code
    two_targets = np.column_stack([y, -y])
    return [
        ("linear model", LinearRegression().fit(X, y)),
        ("isolation forest", IsolationForest(n_estimators=3, random_state=0).fit(X)),
        ("unfitted", RandomForestRegressor()),
        ("transforming pipeline",
         Pipeline([("scale", StandardScaler()),
                   ("model", DecisionTreeRegressor(max_depth=2))]).fit(X, y)),
        ("passthrough-only pipeline", Pipeline([("model", "passthrough")])),
        ("multi-output forest",
         RandomForestRegressor(2, max_depth=2, n_jobs=1).fit(X, two_targets)),
        ("row-dependent init",
         GradientBoostingRegressor(n_estimators=2, init=LinearRegression()).fit(X, y)),
        ("random init",
         GradientBoostingClassifier(n_estimators=2,
                                    init=DummyClassifier(strategy="uniform")).fit(Xb, yb)),
        ("poisson link",
         HistGradientBoostingRegressor(max_iter=2, loss="poisson").fit(X, np.exp(y))),
        ("negative categories",
         HistGradientBoostingRegressor(max_iter=2, categorical_features=[CATEGORICAL]
                                       ).fit(Xneg, y)),
    ]


def test_refuses_what_it_cannot_read_exactly() -> None:
    for label, model in _refused_models():
        with pytest.raises(NotATreeModel) as info:
            read_sklearn(model)
        assert len(str(info.value)) > 30, label
