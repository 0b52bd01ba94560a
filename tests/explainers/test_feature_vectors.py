"""Feature Vectors against hand-computed matrices, closed forms and the method's invariants.

The real forests are scikit-learn models read through ``models.readers.read_ensemble``.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from scipy.stats import spearmanr
from sklearn.datasets import make_friedman1
from sklearn.ensemble import RandomForestRegressor

from explainers import feature_vectors as feature_vectors_module
from explainers.feature_vectors import (
    DegenerateInput,
    FeatureVectorsParams,
    _row_ids,
    check_feature_groups,
    feature_vectors,
    run_feature_vectors,
)
from explainers.feature_vectors_figures import LABEL_GID, draw_feature_vectors, draw_importance
from explainers.progress import Cancelled
from models.readers import read_ensemble
from models.trees import Tree, TreeEnsemble


def _tree(left: list[int], right: list[int], feature: list[int], threshold: list[float],
          categories: tuple[np.ndarray | None, ...] | None = None,
          category_set_left: list[bool] | None = None) -> Tree:
    n = len(left)
    return Tree(left=np.array(left, dtype=np.int32), right=np.array(right, dtype=np.int32),
                feature=np.array(feature, dtype=np.int32),
                threshold=np.array(threshold, dtype=np.float64),
                default_left=np.ones(n, dtype=bool), missing=np.zeros(n, dtype=np.int8),
                value=np.zeros((n, 1)), cover=np.ones(n), categories=categories,
                category_set_left=(None if category_set_left is None
                                   else np.array(category_set_left, dtype=bool)))


def _ensemble(trees: list[Tree], names: tuple[str, ...]) -> TreeEnsemble:
    return TreeEnsemble(trees=tuple(trees), n_features=len(names), n_outputs=1,
                        base_score=np.zeros(1), feature_names=names)


# Tree 1: a<1 → b<2 → c<3; rules [a,b,c] twice (leaves 5, 6), plus shorter ones.
T1 = _tree([1, 3, -1, 5, -1, -1, -1], [2, 4, -1, 6, -1, -1, -1], [0, 1, -1, 2, -1, -1, -1],
           [1, 2, 0, 3, 0, 0, 0])
# Tree 2: c<0.5 → a<1 → c<0.2; rules [c,a,c] twice, plus shorter ones.
T2 = _tree([1, 3, -1, 5, -1, -1, -1], [2, 4, -1, 6, -1, -1, -1], [2, 0, -1, 2, -1, -1, -1],
           [0.5, 1, 0, 0.2, 0, 0, 0])
HAND = _ensemble([T1, T2], ("a", "b", "c"))

# Window 1, root→leaf order: each [a,b,c] adds 1 to (a,b),(b,a),(b,c),(c,b); each [c,a,c]
# adds 2 to (a,c) and (c,a).
C_PATH = np.array([[0, 2, 4], [2, 0, 2], [4, 2, 0]], dtype=np.float64)
# Expected order, P(3, 1) = 2/3 per ordered pair of distinct positions: [a,b,c] adds 2/3
# to every off-diagonal entry; [c,a,c] adds 4/3 to (a,c), (c,a) and (c,c).
C_EXPECTED = np.array([[0, 4 / 3, 4], [4 / 3, 0, 4 / 3], [4, 4 / 3, 8 / 3]])


@pytest.fixture(scope="module")
def forest() -> TreeEnsemble:
    X, y = make_friedman1(n_samples=400, n_features=10, random_state=0)
    model = RandomForestRegressor(n_estimators=60, max_depth=5, random_state=0, n_jobs=1)
    return read_ensemble(model.fit(X, y))


@pytest.fixture(scope="module")
def wide_result() -> dict:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 200))
    y = X[:, :20].sum(axis=1) + rng.normal(size=300)
    model = RandomForestRegressor(n_estimators=30, max_depth=5, max_features=0.3,
                                  random_state=0, n_jobs=1).fit(X, y)
    result = feature_vectors(read_ensemble(model),
                             feature_names=[f"feature_number_{i}" for i in range(200)])
    return {"summary": result.summary(), "arrays": result.arrays()}


def _oracle_vectors(c: np.ndarray) -> np.ndarray:
    """Steps 3–5 of the method doc with an eigen-solver instead of the SVD."""
    lam, q = np.linalg.eigh(c)
    top = np.argsort(-np.abs(lam), kind="stable")[:2]
    e = q[:, top] * np.abs(lam[top])
    for k in range(2):
        if e[np.argmax(np.abs(e[:, k])), k] < 0:
            e[:, k] *= -1
    length = np.linalg.norm(e, axis=1)
    phi = np.where(length <= 1e-9 * length.max(), 0.0, np.arctan2(e[:, 1], e[:, 0]))
    phi -= phi.mean()
    return np.stack([length * np.cos(phi), length * np.sin(phi)], axis=1) / length.max()


# ------------------------------------------------------------------ exact small cases


def test_path_order_matches_hand_matrix_and_closed_form_vectors() -> None:
    result = feature_vectors(HAND, params=FeatureVectorsParams(order="path"))
    np.testing.assert_array_equal(result.cooccurrence, C_PATH)
    # C = 2·M with M = [[0,1,2],[1,0,1],[2,1,0]]: eigenpairs 2+2√3 along (1, √3−1, 1) and
    # −4 along (1, 0, −1); the mean angle is already 0, so no rotation.
    s3 = math.sqrt(3)
    e = (2 + 2 * s3) / math.sqrt(6 - 2 * s3)
    norm = math.sqrt(e * e + 8)
    expected = np.array([[e, 2 * math.sqrt(2)], [e * (s3 - 1), 0.0],
                         [e, -2 * math.sqrt(2)]]) / norm
    np.testing.assert_allclose(result.vectors, expected, atol=1e-12)
    assert result.singular_values == pytest.approx((2 + 2 * s3, 4.0))
    assert result.explained_fraction == pytest.approx(
        ((2 + 2 * s3) ** 2 + 16) / np.sum(C_PATH ** 2))
    assert result.n_rules == 8 and result.n_rules_counted == 4


def test_expected_order_matches_hand_matrix_and_eigen_oracle() -> None:
    result = feature_vectors(HAND)
    np.testing.assert_allclose(result.cooccurrence, C_EXPECTED, rtol=0, atol=1e-14)
    np.testing.assert_allclose(result.vectors, _oracle_vectors(C_EXPECTED), atol=1e-12)
    summary = result.summary()
    assert [f["feature"] for f in summary["features"]] == ["c", "a", "b"]
    top = summary["features"][0]
    assert top["importance"] == pytest.approx(1.0)
    assert (top["x"], top["y"]) == (result.vectors[2, 1], result.vectors[2, 0])
    # rules containing each feature, short rules included: a in 4 + 3, b in 3, c in 2 + 4
    assert {f["feature"]: f["n_rules"] for f in summary["features"]} == {"a": 7, "b": 3,
                                                                         "c": 6}
    json.dumps(summary, allow_nan=False)


def test_wider_window_counts_pairs_two_apart() -> None:
    # window 2 needs 5 conditions; a depth-5 chain f0..f4 gives 2 rules [0,1,2,3,4].
    n = 11
    left = [1, 3, -1, 5, -1, 7, -1, 9, -1, -1, -1]
    right = [2, 4, -1, 6, -1, 8, -1, 10, -1, -1, -1]
    feature = [0, 1, -1, 2, -1, 3, -1, 4, -1, -1, -1]
    chain = _ensemble([_tree(left, right, feature, list(range(n)))],
                      tuple(f"f{i}" for i in range(5)))
    result = feature_vectors(chain, params=FeatureVectorsParams(window_size=2, order="path"))
    expected = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):
            if 0 < abs(i - j) <= 2:
                expected[i, j] = 2
    np.testing.assert_array_equal(result.cooccurrence, expected)
    p = 2 * ((5 - 1) + (5 - 2)) / (5 * 4)
    expected_c = feature_vectors(chain, params=FeatureVectorsParams(window_size=2))
    np.testing.assert_allclose(expected_c.cooccurrence, 2 * p * (1 - np.eye(5)))


def test_dedup_counts_identical_condition_sets_once() -> None:
    doubled = _ensemble([T1, T2, T1], ("a", "b", "c"))
    once = feature_vectors(doubled, params=FeatureVectorsParams(order="path"))
    np.testing.assert_array_equal(once.cooccurrence, C_PATH)
    assert once.n_rules == 8
    twice = feature_vectors(doubled, params=FeatureVectorsParams(order="path",
                                                                 dedup_rules=False))
    c_t1 = np.array([[0, 2, 0], [2, 0, 2], [0, 2, 0]], dtype=np.float64)
    np.testing.assert_array_equal(twice.cooccurrence, C_PATH + c_t1)
    assert twice.n_rules == 12 and twice.n_rules_counted == 6


def test_dedup_equates_categorical_splits_written_both_ways() -> None:
    codes = (np.array([1, 3]), None, None, None, None, None, None)
    # LightGBM style: codes {1, 3} go left; XGBoost style: they go right, children swapped.
    lgb = _tree([1, 3, -1, 5, -1, -1, -1], [2, 4, -1, 6, -1, -1, -1],
                [0, 1, -1, 2, -1, -1, -1], [0, 2, 0, 3, 0, 0, 0], codes,
                [True] + [False] * 6)
    xgb = _tree([1, -1, 3, 5, -1, -1, -1], [2, -1, 4, 6, -1, -1, -1],
                [0, -1, 1, 2, -1, -1, -1], [0, 0, 2, 3, 0, 0, 0], codes, [False] * 7)
    both = _ensemble([lgb, xgb], ("a", "b", "c"))
    result = feature_vectors(both, params=FeatureVectorsParams(order="path"))
    np.testing.assert_array_equal(result.cooccurrence,
                                  [[0, 2, 0], [2, 0, 2], [0, 2, 0]])
    assert result.n_rules == 4


def test_rule_ids_stay_exact_when_hashes_collide() -> None:
    # Two different rows built to have the same FNV-1a digest: the ids must still differ.
    offset, prime = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):  # FNV arithmetic wraps modulo 2**64
        mix = (offset ^ np.uint64(5)) * prime ^ (offset ^ np.uint64(9)) * prime
    rows = np.array([[5, 7], [9, int((np.uint64(7) ^ mix).view(np.int64))],
                     [5, 7], [1, 2]], dtype=np.int64)
    ids = _row_ids(rows)
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3
    rng = np.random.default_rng(0)
    many = rng.integers(0, 4, size=(500, 3))
    reference = np.unique(many, axis=0, return_inverse=True)[1].reshape(-1)
    np.testing.assert_array_equal(_row_ids(many) == _row_ids(many)[:, None],
                                  reference == reference[:, None])


# ----------------------------------------------------------------- real forests


def test_importance_follows_row_sums_of_c(forest: TreeEnsemble) -> None:
    result = feature_vectors(forest)
    rho = spearmanr(result.importance, result.cooccurrence.sum(axis=1)).statistic
    assert rho > 0.95
    # friedman1: features 0–4 drive the target, 5–9 are noise.
    top5 = {f["feature"] for f in result.summary()["features"][:5]}
    assert top5 == {f"f{i}" for i in range(5)}


def test_expected_is_the_mean_of_random_orders(forest: TreeEnsemble) -> None:
    small = TreeEnsemble(trees=forest.trees[:8], n_features=forest.n_features, n_outputs=1,
                         base_score=forest.base_score)
    expected = feature_vectors(small).cooccurrence
    draws = np.stack([
        feature_vectors(small, params=FeatureVectorsParams(order="random",
                                                           random_state=seed)).cooccurrence
        for seed in range(200)])
    mean = draws.mean(axis=0)
    error = draws.std(axis=0) / math.sqrt(len(draws))
    assert np.all(np.abs(mean - expected) <= 5 * error + 1e-9)
    assert np.abs(mean - expected).max() > 0  # the random orders did vary


def test_reruns_are_bit_identical(forest: TreeEnsemble) -> None:
    for params in (FeatureVectorsParams(), FeatureVectorsParams(order="random", bagging=5,
                                                                random_state=3)):
        a = feature_vectors(forest, params=params)
        b = feature_vectors(forest, params=params)
        assert a.summary() == b.summary()
        for name, array in a.arrays().items():
            assert array.tobytes() == b.arrays()[name].tobytes()


def test_top_vector_does_not_depend_on_tree_order(forest: TreeEnsemble) -> None:
    reference = feature_vectors(forest)
    order = np.random.default_rng(0).permutation(forest.n_trees)
    shuffled = TreeEnsemble(trees=tuple(forest.trees[i] for i in order),
                            n_features=forest.n_features, n_outputs=1,
                            base_score=forest.base_score, feature_names=forest.feature_names)
    result = feature_vectors(shuffled)
    np.testing.assert_array_equal(result.cooccurrence, reference.cooccurrence)
    top = int(np.argmax(reference.importance))
    np.testing.assert_allclose(result.vectors[top], reference.vectors[top], atol=1e-12)
    np.testing.assert_allclose(result.vectors, reference.vectors, atol=1e-10)


def test_feature_groups_fold_the_matrix(forest: TreeEnsemble) -> None:
    names = [f"col{i}" for i in range(10)]
    plain = feature_vectors(forest, feature_names=names)
    groups = {"pair": ["col3", "col1"], "noise": ["col7", "col8", "col9"]}
    grouped = feature_vectors(forest, feature_names=names,
                              params=FeatureVectorsParams(feature_groups=groups))
    assert grouped.feature_names == ("col0", "pair", "col2", "col4", "col5", "col6",
                                     "noise")
    member = np.zeros((10, 7))
    for column, feature in enumerate([0, 1, 2, 1, 3, 4, 5, 6, 6, 6]):
        member[column, feature] = 1
    np.testing.assert_allclose(grouped.cooccurrence, member.T @ plain.cooccurrence @ member,
                               rtol=1e-12)
    assert grouped.summary()["params"]["feature_groups"] == groups


def test_feature_groups_merge_two_one_hot_columns() -> None:
    # Columns x, colour=red, colour=blue; the chain x → red → blue puts both one-hot
    # columns in one rule, so merged they co-occur with themselves (the diagonal).
    chain = _tree([1, 3, -1, 5, -1, -1, -1], [2, 4, -1, 6, -1, -1, -1],
                  [0, 1, -1, 2, -1, -1, -1], [1, 0.5, 0, 0.5, 0, 0, 0])
    other = _tree([1, 3, -1, 5, -1, -1, -1], [2, 4, -1, 6, -1, -1, -1],
                  [1, 0, -1, 0, -1, -1, -1], [0.5, 2, 0, 3, 0, 0, 0])
    model = _ensemble([chain, other], ("x", "colour=red", "colour=blue"))
    params = FeatureVectorsParams(order="path",
                                  feature_groups={"colour": ["colour=red", "colour=blue"]})
    result = feature_vectors(model, params=params)
    assert result.feature_names == ("x", "colour")
    # chain: [x, c, c] twice → (x,c), (c,x), (c,c)×2 each; other: [c, x, x] twice.
    np.testing.assert_array_equal(result.cooccurrence, [[4, 4], [4, 4]])
    assert result.rules_per_feature.tolist() == [7, 7]


@pytest.mark.parametrize(("groups", "message"), [
    ({"g": ["a", "zzz"]}, "does not have"),
    ({"g": ["a", "b"], "h": ["b"]}, "two feature groups"),
    ({"c": ["a", "b"]}, "rename the group"),
])
def test_invalid_feature_groups_are_refused(groups: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        feature_vectors(HAND, params=FeatureVectorsParams(feature_groups=groups))
    with pytest.raises(ValueError, match=message):
        check_feature_groups(HAND.feature_names or (), groups)


def test_run_entry_takes_checked_groups_without_checking_them_again(
        forest: TreeEnsemble, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"col{i}" for i in range(10)]
    params = FeatureVectorsParams(feature_groups={"pair": ["col3", "col1"]}, bagging=2)
    expected = feature_vectors(forest, feature_names=names, params=params)

    def refuse(*args: object) -> None:
        raise AssertionError("the groups were checked again")

    monkeypatch.setattr(feature_vectors_module, "check_feature_groups", refuse)
    result = run_feature_vectors(forest, feature_names=names, params=params)
    np.testing.assert_array_equal(result.cooccurrence, expected.cooccurrence)
    np.testing.assert_array_equal(result.vectors, expected.vectors)
    assert result.feature_names == expected.feature_names


def test_bagging_gives_deterministic_bounds(forest: TreeEnsemble) -> None:
    params = FeatureVectorsParams(bagging=10, random_state=1)
    a = feature_vectors(forest, params=params)
    b = feature_vectors(forest, params=params)
    assert a.std is not None and a.std.shape == (10, 2) and np.all(a.std >= 0)
    assert a.std.max() > 0
    np.testing.assert_array_equal(a.std, b.std)
    assert a.n_bags == 10
    np.testing.assert_array_equal(a.vectors, feature_vectors(forest).vectors)
    other = feature_vectors(forest, params=FeatureVectorsParams(bagging=10, random_state=2))
    assert not np.array_equal(a.std, other.std)
    for f in a.summary()["features"]:
        assert len(f["std"]) == 2


# ------------------------------------------------------------------------ errors


def test_stumps_with_window_one_are_degenerate() -> None:
    stump = _tree([1, -1, -1], [2, -1, -1], [0, -1, -1], [0.5, 0, 0])
    stump2 = _tree([1, -1, -1], [2, -1, -1], [1, -1, -1], [0.5, 0, 0])
    with pytest.raises(DegenerateInput, match="depth ≥ 3") as info:
        feature_vectors(_ensemble([stump, stump2], ("a", "b")))
    assert info.value.code == "degenerate"


def test_window_too_wide_suggests_a_window_that_works() -> None:
    with pytest.raises(DegenerateInput, match="use window_size 1") as info:
        feature_vectors(HAND, params=FeatureVectorsParams(window_size=2))
    assert info.value.code == "degenerate"


def test_single_feature_is_degenerate() -> None:
    chain = _tree([1, 3, -1, 5, -1, -1, -1], [2, 4, -1, 6, -1, -1, -1],
                  [0, 0, -1, 0, -1, -1, -1], [1, 0.5, 0, 0.2, 0, 0, 0])
    with pytest.raises(DegenerateInput, match="at least 2 features") as info:
        feature_vectors(_ensemble([chain], ("only",)))
    assert info.value.code == "degenerate"


@pytest.mark.parametrize("kwargs", [{"window_size": 0}, {"order": "sorted"},
                                    {"bagging": -1}, {"random_state": -2},
                                    {"feature_groups": {"g": "ab"}}, {"feature_groups": {"g": []}}])
def test_invalid_params_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FeatureVectorsParams(**kwargs)


def test_cancellation_stops_the_run(forest: TreeEnsemble) -> None:
    stages = []

    def cancel_at_bagging(fraction: float, stage: str) -> None:
        stages.append((fraction, stage))
        if stage == "bagging":
            raise Cancelled

    with pytest.raises(Cancelled):
        feature_vectors(forest, params=FeatureVectorsParams(bagging=5),
                        progress=cancel_at_bagging)
    fractions = [f for f, _ in stages]
    assert fractions == sorted(fractions) and stages[0][1] == "rules"


# ----------------------------------------------------------------------- figures


def _render(fig, fmt: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    return buffer.getvalue()


def _labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts if t.get_gid() == LABEL_GID]


def test_figures_render_for_a_few_features(forest: TreeEnsemble) -> None:
    groups = {"f3+f4": ["f3", "f4"], "noise": [f"f{i}" for i in range(5, 10)]}
    result = feature_vectors(forest, params=FeatureVectorsParams(bagging=4,
                                                                 feature_groups=groups))
    summary, arrays = result.summary(), result.arrays()
    assert len(summary["features"]) == 5
    fig = draw_feature_vectors(summary, arrays)
    assert sorted(_labels(fig)) == sorted(f["feature"] for f in summary["features"]
                                          if not f["unused"])
    assert _render(fig, "svg").lstrip().startswith(b"<?xml")
    assert _render(fig, "png").startswith(b"\x89PNG")
    bars = draw_importance(summary, arrays)
    assert _render(bars, "svg") and _render(bars, "png").startswith(b"\x89PNG")


def test_figures_render_for_many_features(wide_result: dict) -> None:
    summary, arrays = wide_result["summary"], wide_result["arrays"]
    assert len(summary["features"]) == 200
    fig = draw_feature_vectors(summary, arrays)
    labels = _labels(fig)
    assert 0 < len(labels) <= 20
    assert labels == [f["feature"] for f in summary["features"] if not f["unused"]][:20]
    assert _render(fig, "png").startswith(b"\x89PNG")
    assert b"<svg" in _render(fig, "svg")
    bars = draw_importance(summary, arrays, max_display=30)
    assert len(bars.axes[0].patches) == 30
    assert _render(bars, "png").startswith(b"\x89PNG")


def test_labels_do_not_overlap(wide_result: dict) -> None:
    fig = draw_feature_vectors(wide_result["summary"], wide_result["arrays"])
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    # Text's own extent: an Annotation's would include its leader line.
    boxes = [Text.get_window_extent(t, renderer) for t in fig.axes[0].texts
             if t.get_gid() == LABEL_GID]
    assert len(boxes) == 20
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
