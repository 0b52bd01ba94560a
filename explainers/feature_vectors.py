"""Feature Vectors: a 2-D vector per feature from how often features share tree rules.

Ghorbani, Berenbaum, Ivgi, Dafna, Zou, "Beyond Importance Scores: Interpreting Tabular ML
by Visualizing Feature Semantics" (arXiv 2111.05898). The definition implemented here is
shared/methods/feature_vectors.md: rules are root→leaf condition lists of every tree,
features that appear near each other in a rule co-occur, and the rank-2 SVD of the
co-occurrence matrix gives every feature a vector whose length is its importance and
whose angle says which features play alike roles.

The whole computation is vectorized over the ensemble: the trees' node arrays are
concatenated once, every node learns its parent and depth in one breadth-first sweep (one
numpy step per tree level), and the rules of all leaves at the same depth are gathered as
one [n_rules, depth] matrix. The cost is linear in the number of conditions, with no
Python object per rule.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from explainers.progress import ProgressCallback, no_progress
from models.trees import Tree, TreeEnsemble

__all__ = [
    "DegenerateInput",
    "FeatureVectorsParams",
    "FeatureVectorsResult",
    "check_feature_groups",
    "feature_vectors",
    "run_feature_vectors",
]

logger = logging.getLogger(__name__)

Order = Literal["expected", "path", "random"]
_ORDERS = ("expected", "path", "random")
# A feature whose embedding is this small relative to the longest one is "unused".
_UNUSED_RTOL = 1e-9
# 64-bit FNV-1a constants, for hashing condition lists (collisions are checked).
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
# Entries per bincount when counting position pairs.
_BATCH = 1 << 22


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class DegenerateInput(ValueError):
    """The ensemble gives Feature Vectors nothing to embed (see the message for a fix)."""

    code = "degenerate"


@dataclass(frozen=True)
class FeatureVectorsParams:
    """Parameters of :func:`feature_vectors` (defaults as in the method doc).

    window_size: w ≥ 1; two conditions co-occur when at most w positions apart in a rule,
        and rules with fewer than 2w+1 conditions are skipped.
    order: how a rule's conditions are ordered: ``"expected"`` (the exact average over
        uniformly random orders), ``"path"`` (root→leaf) or ``"random"`` (shuffled with
        ``random_state``).
    dedup_rules: count identical condition sets anywhere in the ensemble once (compared
        as multisets, which for real trees is the same: a path never repeats a split).
    bagging: number of bootstrap samples of the trees for the confidence bounds (0: none).
    random_state: seed of the ``random`` order and of the bootstrap samples (the random
        order is drawn once; the bags reuse it, so their spread reflects the trees only).
    feature_groups: original feature name → the model columns merged into it (e.g. the
        one-hot columns of a categorical feature); columns in no group stand alone.
    """

    window_size: int = 1
    order: Order = "expected"
    dedup_rules: bool = True
    bagging: int = 0
    random_state: int = 0
    feature_groups: Mapping[str, Sequence[str]] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.window_size) or self.window_size < 1:
            raise ValueError(f"window_size must be an integer ≥ 1, got {self.window_size!r}")
        if self.order not in _ORDERS:
            raise ValueError(f"order must be one of {', '.join(_ORDERS)}, got {self.order!r}")
        if not isinstance(self.dedup_rules, bool):
            raise ValueError(f"dedup_rules must be true or false, got {self.dedup_rules!r}")
        if not _is_int(self.bagging) or self.bagging < 0:
            raise ValueError(f"bagging must be an integer ≥ 0, got {self.bagging!r}")
        if not _is_int(self.random_state) or self.random_state < 0:
            raise ValueError(f"random_state must be an integer ≥ 0, got {self.random_state!r}")
        if self.feature_groups is not None:
            if not isinstance(self.feature_groups, Mapping):
                raise ValueError("feature_groups must map a feature name to a list of "
                                 "model column names")
            for name, columns in self.feature_groups.items():
                if not isinstance(name, str) or isinstance(columns, str) or not all(
                        isinstance(c, str) for c in columns):
                    raise ValueError(f"feature_groups[{name!r}] must be a list of model "
                                     "column names")
                if len(columns) == 0:
                    raise ValueError(f"feature_groups[{name!r}] is empty; a group needs at "
                                     "least one model column")

    def to_dict(self) -> dict[str, Any]:
        """The parameters as plain JSON values."""
        groups = (None if self.feature_groups is None else
                  {name: list(cols) for name, cols in self.feature_groups.items()})
        return {"window_size": int(self.window_size), "order": self.order,
                "dedup_rules": self.dedup_rules, "bagging": int(self.bagging),
                "random_state": int(self.random_state), "feature_groups": groups}


@dataclass(frozen=True, eq=False)
class FeatureVectorsResult:
    """Feature vectors of p (original) features, in feature order.

    feature_names: the p features: model columns, with each group of ``feature_groups``
        taking the place of its first column.
    cooccurrence: float64 [p, p], the symmetric co-occurrence matrix C.
    vectors: float64 [p, 2], (v_i1, v_i2): v_i1 is the mean direction (plotted upwards).
        The longest vector has length 1.
    std: float64 [p, 2], bootstrap standard deviation of (v_i1, v_i2) (population std over
        the bags), or None without bagging.
    rules_per_feature: int64 [p], how many rules (after dedup, short rules included)
        contain a condition on the feature.
    unused: bool [p], features whose embedding is zero (never in a counted rule).
    n_trees: trees in the ensemble. n_rules: rules (leaves at depth ≥ 1) after dedup.
    n_rules_counted: those rules long enough (≥ 2w+1 conditions) to add to C.
    singular_values: the two largest singular values (σ1, σ2) of C.
    explained_fraction: (σ1² + σ2²) / Σ σk², the share of C's squared Frobenius norm that
        the rank-2 embedding keeps.
    n_bags: bootstrap samples whose C was not all zero (the ones in ``std``).
    """

    feature_names: tuple[str, ...]
    cooccurrence: npt.NDArray[np.float64]
    vectors: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64] | None
    rules_per_feature: npt.NDArray[np.int64]
    unused: npt.NDArray[np.bool_]
    n_trees: int
    n_rules: int
    n_rules_counted: int
    singular_values: tuple[float, float]
    explained_fraction: float
    n_bags: int
    params: FeatureVectorsParams

    @property
    def importance(self) -> npt.NDArray[np.float64]:
        """‖v_i‖, shape [p]; the top feature has importance 1."""
        return np.hypot(self.vectors[:, 0], self.vectors[:, 1])

    @property
    def angle(self) -> npt.NDArray[np.float64]:
        """atan2(v_i2, v_i1) in radians, shape [p]; 0 is the mean direction."""
        return np.arctan2(self.vectors[:, 1], self.vectors[:, 0])

    def summary(self) -> dict[str, Any]:
        """The JSON summary of the method doc; features sorted by importance, largest first.

        x = v_i2 and y = v_i1 are the plot coordinates; ``std`` is [std of x, std of y].
        """
        importance = self.importance
        angle_deg = np.degrees(self.angle)
        features = []
        for i in np.argsort(-importance, kind="stable"):
            std = (None if self.std is None
                   else [float(self.std[i, 1]), float(self.std[i, 0])])
            features.append({
                "feature": self.feature_names[i],
                "x": float(self.vectors[i, 1]),
                "y": float(self.vectors[i, 0]),
                "importance": float(importance[i]),
                "angle_deg": float(angle_deg[i]),
                "std": std,
                "n_rules": int(self.rules_per_feature[i]),
                "unused": bool(self.unused[i]),
            })
        return {
            "features": features,
            "n_trees": self.n_trees,
            "n_rules": self.n_rules,
            "n_rules_counted": self.n_rules_counted,
            "singular_values": [float(s) for s in self.singular_values],
            "explained_fraction": float(self.explained_fraction),
            "n_bags": self.n_bags,
            "params": self.params.to_dict(),
        }

    def arrays(self) -> dict[str, npt.NDArray[np.float64]]:
        """``cooccurrence`` [p, p] and ``vectors`` [p, 2] (v_i1, v_i2), in feature order."""
        return {"cooccurrence": self.cooccurrence, "vectors": self.vectors}


def feature_vectors(
    ensemble: TreeEnsemble,
    *,
    params: FeatureVectorsParams = FeatureVectorsParams(),
    feature_names: Sequence[str] | None = None,
    progress: ProgressCallback = no_progress,
) -> FeatureVectorsResult:
    """Embed every feature of a tree ensemble as a 2-D vector (Feature Vectors).

    ensemble: any normalized tree ensemble; only its tree structure is read (split
        features, thresholds, category sets), never leaf values.
    params: see :class:`FeatureVectorsParams`.
    feature_names: the model's n_features column names; default the ensemble's own names,
        else ``f0, f1, …``. ``params.feature_groups`` refers to these names.
    progress: called with (fraction, stage); may raise
        :class:`~explainers.progress.Cancelled` to stop.

    Raises DegenerateInput when there are fewer than 2 features or no rule is long enough
    for the window, and ValueError for invalid names or groups.
    """
    columns = _column_names(ensemble, feature_names)
    check_feature_groups(columns, params.feature_groups)
    return _run(ensemble, params, columns, progress)


def run_feature_vectors(
    ensemble: TreeEnsemble,
    *,
    params: FeatureVectorsParams,
    feature_names: Sequence[str] | None = None,
    progress: ProgressCallback = no_progress,
) -> FeatureVectorsResult:
    """:func:`feature_vectors` with ``params.feature_groups`` already checked against
    these feature names (:func:`check_feature_groups`): they are not checked again."""
    return _run(ensemble, params, _column_names(ensemble, feature_names), progress)


def _run(ensemble: TreeEnsemble, params: FeatureVectorsParams, columns: tuple[str, ...],
         progress: ProgressCallback) -> FeatureVectorsResult:
    group_of_column, names = _resolve_groups(columns, params.feature_groups)
    p = len(names)
    if p < 2:
        raise DegenerateInput(
            f"Feature Vectors needs at least 2 features to compare, but the model has {p} "
            "(after merging feature_groups); use a model with more features or fewer groups.")
    w = params.window_size
    bagging_share = 0.6 if params.bagging else 0.0
    progress(0.0, "rules")
    rule_groups = _extract_rules(ensemble, group_of_column, dedup=params.dedup_rules)
    progress(0.5 * (1.0 - bagging_share), "cooccurrence")
    order_seed, bagging_seed = np.random.SeedSequence(params.random_state).spawn(2)
    order_rng = np.random.default_rng(order_seed)
    all_trees = np.ones(ensemble.n_trees, dtype=np.float64)
    weights = [_rule_weights(g, all_trees, params.dedup_rules) for g in rule_groups]
    counted = [k for k, g in enumerate(rule_groups) if g.length >= 2 * w + 1]
    counters = [_Counter(rule_groups[k], p, w, params.order, order_rng) for k in counted]
    cooccurrence = _cooccurrence(counters, [weights[k] for k in counted], p)
    if not cooccurrence.any():
        raise DegenerateInput(_degenerate_message(rule_groups, w))
    vectors, unused, singular, explained = _embed(cooccurrence)
    progress(1.0 - bagging_share, "embedding")

    std = None
    n_bags = 0
    if params.bagging:
        rng = np.random.default_rng(bagging_seed)
        bags = []
        for b in range(params.bagging):
            sample = rng.integers(0, ensemble.n_trees, size=ensemble.n_trees)
            tree_counts = np.bincount(sample, minlength=ensemble.n_trees).astype(np.float64)
            c_bag = _cooccurrence(
                counters, [_rule_weights(c.group, tree_counts, params.dedup_rules)
                           for c in counters], p)
            if c_bag.any():
                v_bag = _embed(c_bag)[0]
                mirrored = v_bag * np.array([1.0, -1.0])
                if np.linalg.norm(mirrored - vectors) < np.linalg.norm(v_bag - vectors):
                    v_bag = mirrored
                bags.append(v_bag)
            progress(1.0 - bagging_share * (1.0 - (b + 1) / params.bagging), "bagging")
        n_bags = len(bags)
        if n_bags:
            std = np.std(np.stack(bags), axis=0)
        logger.debug("feature_vectors bagging", extra={"event": "feature_vectors.bagging",
                                                        "bags": params.bagging,
                                                        "bags_used": n_bags})

    n_rules = 0
    n_counted = 0
    rules_per_feature = np.zeros(p, dtype=np.int64)
    for g, rule_weights in zip(rule_groups, weights, strict=True):
        kept = rule_weights > 0
        n_rules += int(kept.sum())
        if g.length >= 2 * w + 1:
            n_counted += int(kept.sum())
        rules_per_feature += _features_in_rules(g.groups[kept], p)
    progress(1.0, "done")
    return FeatureVectorsResult(
        feature_names=names, cooccurrence=cooccurrence, vectors=vectors, std=std,
        rules_per_feature=rules_per_feature, unused=unused, n_trees=ensemble.n_trees,
        n_rules=n_rules, n_rules_counted=n_counted,
        singular_values=(float(singular[0]), float(singular[1])),
        explained_fraction=explained, n_bags=n_bags, params=params)


# ---------------------------------------------------------------------------- names


def _column_names(ensemble: TreeEnsemble, feature_names: Sequence[str] | None
                  ) -> tuple[str, ...]:
    if feature_names is None:
        feature_names = ensemble.feature_names
    if feature_names is None:
        return tuple(f"f{i}" for i in range(ensemble.n_features))
    names = tuple(str(n) for n in feature_names)
    if len(names) != ensemble.n_features:
        raise ValueError(f"got {len(names)} feature names for a model with "
                         f"{ensemble.n_features} features")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"feature name {name!r} appears twice; names must be unique")
        seen.add(name)
    return names


def check_feature_groups(columns: Sequence[str],
                         groups: Mapping[str, Sequence[str]] | None) -> None:
    """Refuse (ValueError) ``feature_groups`` that do not fit the model's ``columns``: a
    column it does not have, a column in two groups, a group named after a column that
    is not in it."""
    if groups is None:
        return
    index = {name: i for i, name in enumerate(columns)}
    owner: dict[int, str] = {}
    for group, members in groups.items():
        for column in members:
            if column not in index:
                raise ValueError(f"feature_groups[{group!r}] names column {column!r}, which "
                                 "the model does not have")
            if index[column] in owner:
                raise ValueError(f"column {column!r} is in two feature groups, "
                                 f"{owner[index[column]]!r} and {group!r}; a column can "
                                 "belong to one group only")
            owner[index[column]] = group
    for group in groups:
        if group in index and owner.get(index[group]) != group:
            raise ValueError(f"feature group {group!r} has the name of a model column that "
                             "is not in it; rename the group")


def _resolve_groups(columns: tuple[str, ...], groups: Mapping[str, Sequence[str]] | None
                    ) -> tuple[npt.NDArray[np.int64], tuple[str, ...]]:
    """Feature index of every model column, and the feature names in feature order, for
    groups that :func:`check_feature_groups` accepted."""
    if groups is None:
        return np.arange(len(columns), dtype=np.int64), columns
    index = {name: i for i, name in enumerate(columns)}
    owner = {index[column]: group for group, members in groups.items() for column in members}
    position: dict[str, int] = {}
    group_of_column = np.empty(len(columns), dtype=np.int64)
    for i, column in enumerate(columns):
        name = owner.get(i, column)
        group_of_column[i] = position.setdefault(name, len(position))
    return group_of_column, tuple(position)


# ---------------------------------------------------------------------------- rules


@dataclass(frozen=True, eq=False)
class _RuleGroup:
    """All rules with ``length`` conditions, in ensemble order (tree, then leaf index).

    groups: int64 [n, length], the feature (group) of each condition, root→leaf order.
    tree: int64 [n], the tree each rule comes from.
    key: int64 [n], equal exactly when two rules have the same multiset of conditions;
        None when rules are not deduplicated.
    """

    length: int
    groups: npt.NDArray[np.int64]
    tree: npt.NDArray[np.int64]
    key: npt.NDArray[np.int64] | None


def _extract_rules(ensemble: TreeEnsemble, group_of_column: npt.NDArray[np.int64], *,
                   dedup: bool) -> list[_RuleGroup]:
    """The rules of every leaf at depth ≥ 1, grouped by length (ascending)."""
    trees = ensemble.trees
    if not trees:
        return []
    sizes = np.array([t.n_nodes for t in trees], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n_nodes = int(offsets[-1])
    shift = np.repeat(offsets[:-1], sizes)
    left = np.concatenate([t.left for t in trees]).astype(np.int64)
    right = np.concatenate([t.right for t in trees]).astype(np.int64)
    feature = np.concatenate([t.feature for t in trees]).astype(np.int64)
    leaf = left < 0
    internal = np.flatnonzero(~leaf)
    left[internal] += shift[internal]
    right[internal] += shift[internal]
    bad = (feature[internal] < 0) | (feature[internal] >= ensemble.n_features)
    if bad.any():
        raise ValueError(f"a split uses feature {int(feature[internal][bad][0])}, outside "
                         f"the model's {ensemble.n_features} features")

    parent = np.full(n_nodes, -1, dtype=np.int64)
    parent[left[internal]] = internal
    parent[right[internal]] = internal
    went_left = np.zeros(n_nodes, dtype=bool)
    went_left[left[internal]] = True
    depth = _node_depths(offsets[:-1][sizes > 0], left, right, leaf)

    cond_base = flip = None
    if dedup:
        cond_base, flip = _condition_ids(trees, internal, feature)
    tree_of_node = np.repeat(np.arange(len(trees), dtype=np.int64), sizes)
    split_group = group_of_column[np.where(leaf, 0, feature)]

    leaves = np.flatnonzero(leaf & (depth >= 1))
    leaves = leaves[np.argsort(depth[leaves], kind="stable")]
    lengths, starts = np.unique(depth[leaves], return_index=True)
    out = []
    for length, chunk in zip(lengths.tolist(), np.split(leaves, starts[1:]), strict=True):
        groups = np.empty((chunk.size, length), dtype=np.int64)
        conds = np.empty((chunk.size, length), dtype=np.int64) if dedup else None
        node = chunk
        for k in range(length - 1, -1, -1):
            up = parent[node]
            groups[:, k] = split_group[up]
            if conds is not None:
                assert cond_base is not None and flip is not None
                conds[:, k] = cond_base[up] + (went_left[node] ^ flip[up])
            node = up
        key = None
        if conds is not None:
            conds.sort(axis=1)
            key = _row_ids(conds)
        out.append(_RuleGroup(length, groups, tree_of_node[chunk], key))
    return out


def _node_depths(roots: npt.NDArray[np.int64], left: npt.NDArray[np.int64],
                 right: npt.NDArray[np.int64], leaf: npt.NDArray[np.bool_]
                 ) -> npt.NDArray[np.int64]:
    """Depth of every node reachable from a root (-1 elsewhere), one step per level."""
    depth = np.full(left.shape[0], -1, dtype=np.int64)
    frontier = roots
    level = 0
    while frontier.size:
        if level > left.shape[0]:
            raise ValueError("a tree's child links form a cycle")
        depth[frontier] = level
        inner = frontier[~leaf[frontier]]
        frontier = np.concatenate([left[inner], right[inner]])
        level += 1
    return depth


def _condition_ids(trees: Sequence[Tree], internal: npt.NDArray[np.int64],
                   feature: npt.NDArray[np.int64]
                   ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Per node: 2·(id of its split) and whether its categorical set lies to the right.

    A condition is then ``base + (went_left XOR flip)``: for a numeric split it says
    (feature, threshold, direction); for a categorical one (feature, codes, whether the
    value is among the codes), so XGBoost's and LightGBM's conventions compare equal.
    """
    n_nodes = feature.shape[0]
    threshold = np.concatenate([t.threshold for t in trees]).astype(np.float64) + 0.0
    category_id = np.full(n_nodes, -1, dtype=np.int64)
    flip = np.zeros(n_nodes, dtype=bool)
    known: dict[bytes, int] = {}
    start = 0
    for tree in trees:
        if tree.has_categorical:
            assert tree.categories is not None and tree.category_set_left is not None
            for i, codes in enumerate(tree.categories):
                if codes is not None:
                    category_id[start + i] = known.setdefault(
                        np.asarray(codes, dtype=np.int64).tobytes(), len(known))
                    flip[start + i] = not bool(tree.category_set_left[i])
        start += tree.n_nodes
    categorical = category_id >= 0
    threshold[categorical] = 0.0
    split = np.stack([feature[internal], threshold[internal].view(np.int64),
                      category_id[internal]], axis=1)
    split_id = _row_ids(split)
    base = np.zeros(n_nodes, dtype=np.int64)
    base[internal] = 2 * split_id
    return base, flip


def _row_ids(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """An id per row of ``rows`` [n, k], equal exactly when two rows are equal.

    Each row is hashed to one uint64 (FNV-1a over its columns), which sorts far faster
    than whole rows; the ids are then checked against the rows themselves, and after a
    hash collision an exact lexicographic sort decides instead.
    """
    digest = np.full(rows.shape[0], _FNV_OFFSET, dtype=np.uint64)
    for column in rows.T:
        digest = (digest ^ column.view(np.uint64)) * _FNV_PRIME
    _, first, ids = np.unique(digest, return_index=True, return_inverse=True)
    if np.array_equal(rows, rows[first[ids]]):
        return ids.astype(np.int64)
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    new = np.ones(rows.shape[0], dtype=bool)
    new[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    exact = np.empty(rows.shape[0], dtype=np.int64)
    exact[order] = np.cumsum(new) - 1
    return exact


def _rule_weights(group: _RuleGroup, tree_counts: npt.NDArray[np.float64], dedup: bool
                  ) -> npt.NDArray[np.float64]:
    """How many times each rule counts when tree t is drawn tree_counts[t] times.

    With dedup, a condition set counts once, through its first rule in ensemble order
    among the drawn trees.
    """
    weights = tree_counts[group.tree]
    if not dedup:
        return weights
    assert group.key is not None
    drawn = np.flatnonzero(weights > 0)
    first = np.unique(group.key[drawn], return_index=True)[1]
    once = np.zeros_like(weights)
    once[drawn[first]] = 1.0
    return once


def _features_in_rules(groups: npt.NDArray[np.int64], p: int) -> npt.NDArray[np.int64]:
    """For each feature, how many rows of ``groups`` [n, L] mention it."""
    ordered = np.sort(groups, axis=1)
    new = np.ones(ordered.shape, dtype=bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return np.bincount(ordered[new], minlength=p).astype(np.int64)


# ---------------------------------------------------------------------- co-occurrence


class _Counter:
    """Co-occurrence counts of the rules of one length, for any rule weights.

    A rule adds 1 to C[g_i, g_j] and C[g_j, g_i] for each position pair i < j in
    ``positions``: every pair for ``expected`` (then scaled by P(L, w), the chance that
    a random order puts the two within the window), the pairs at most w apart in the
    root→leaf or shuffled order for ``path`` and ``random``. Counts stay integers until
    scaled, so sums do not depend on the order of the trees.
    """

    def __init__(self, group: _RuleGroup, p: int, window: int, order: Order,
                 rng: np.random.Generator) -> None:
        self.group = group
        self.p = p
        length = group.length
        if order == "expected":
            self.scale = _pair_probability(length, window)
            self.positions = [(i, j) for i in range(length) for j in range(i + 1, length)]
            self.groups = group.groups
        else:
            self.scale = 1.0
            self.positions = [(i, i + d) for d in range(1, window + 1)
                              for i in range(length - d)]
            self.groups = (group.groups if order == "path"
                           else rng.permuted(group.groups, axis=1))

    def count(self, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Unscaled C contribution [p, p] with rule r counted weights[r] times."""
        p = self.p
        kept = np.flatnonzero(weights)
        groups, kept_weights = self.groups[kept], weights[kept]
        upper = np.zeros(p * p, dtype=np.float64)
        # Position pairs are counted in batches of about _BATCH entries: one bincount per
        # batch, and memory bounded however long the rules are.
        per_batch = max(1, _BATCH // max(1, kept.size))
        for start in range(0, len(self.positions), per_batch):
            pairs = self.positions[start:start + per_batch]
            codes = np.concatenate([groups[:, i] * p + groups[:, j] for i, j in pairs])
            upper += np.bincount(codes, weights=np.tile(kept_weights, len(pairs)),
                                 minlength=p * p)
        square = upper.reshape(p, p)
        return square + square.T


def _cooccurrence(counters: Sequence[_Counter],
                  weights: Sequence[npt.NDArray[np.float64]], p: int
                  ) -> npt.NDArray[np.float64]:
    """C [p, p] from the counted rule groups, each with its rule weights."""
    c = np.zeros((p, p), dtype=np.float64)
    for counter, rule_weights in zip(counters, weights, strict=True):
        c += counter.scale * counter.count(rule_weights)
    return c


def _degenerate_message(groups: Sequence[_RuleGroup], window: int) -> str:
    needed = 2 * window + 1
    longest = max((g.length for g in groups), default=0)
    if longest == 0:
        return ("The ensemble has no split (every tree is a single leaf), so Feature Vectors "
                f"has no rules; window_size {window} needs trees of depth ≥ {needed}.")
    usable = (longest - 1) // 2
    message = (f"No rule has the {needed} conditions that window_size {window} needs (the "
               f"deepest leaf is at depth {longest}), so the co-occurrence matrix is all zero; ")
    if usable >= 1:
        return message + f"use window_size {usable} or trees of depth ≥ {needed}."
    alternative = ", or depth ≥ 3 with window_size 1" if window > 1 else ""
    return message + f"use trees of depth ≥ {needed}{alternative}."


# -------------------------------------------------------------------------- embedding


def _embed(c: npt.NDArray[np.float64]
           ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_],
                      npt.NDArray[np.float64], float]:
    """Steps 3–5 of the method: vectors [p, 2], unused [p], singular values, explained."""
    u, s, _ = np.linalg.svd(c)
    e = u[:, :2] * s[:2]
    for k in range(2):
        top = int(np.argmax(np.abs(e[:, k])))
        if e[top, k] < 0:
            e[:, k] = -e[:, k]
    length = np.hypot(e[:, 0], e[:, 1])
    unused = length <= _UNUSED_RTOL * length.max()
    phi = np.where(unused, 0.0, np.arctan2(e[:, 1], e[:, 0]))
    phi = phi - phi.mean()
    vectors = np.stack([length * np.cos(phi), length * np.sin(phi)], axis=1) / length.max()
    explained = float((s[0] ** 2 + s[1] ** 2) / np.sum(s ** 2))
    return vectors, unused, s[:2], explained


def _pair_probability(length: int, window: int) -> float:
    """P(L, w): the chance that two given conditions of a rule of ``length`` conditions
    land at most ``window`` positions apart in a uniformly random order."""
    return 2.0 * sum(length - d for d in range(1, window + 1)) / (length * (length - 1))
