"""An XGBoost gbtree model's trees, evaluated in any subset, one output per tree.

XGBoost starts every row at the base margin and adds each tree's leaf value to its output
group's float32 accumulator in tree order. :class:`TreeSubsets` gives each tree's own
leaf values (exactly: a booster holding just those trees, one output each, with a zero
base score) and the base margin, so a caller can re-add them in that order and get the
model's margins bit for bit; ``LoadedModel.predict_from_margin`` then applies the
objective. Reached through ``LoadedModel.tree_subsets()``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TreeSubsets"]


class TreeSubsets:
    """The trees of an XGBoost gbtree Booster, evaluated in any subset, one output each.

    ``evaluate(X, trees)`` loads (once per subset) a booster holding exactly those trees
    as a multi-target regression model with tree j feeding output j and predicts with a
    zero base margin, so output j is tree j's leaf value for every row.

    groups: the output group of each tree; of_group: the trees of each group, in order;
    n_trees: how many trees the model has.
    """

    def __init__(self, header: str, trees: list[str], groups: list[int],
                 features: list[frozenset[int]], nthread: int, identity: Any) -> None:
        self.header = header  # the model's JSON with a placeholder for the trees
        self.tree_json = trees  # each tree's JSON object, without its "id"
        self.groups = groups  # output group of each tree
        self.features = features  # features each tree splits on
        self.nthread = nthread
        self.identity = identity
        self.of_group = [[t for t, g in enumerate(groups) if g == k]
                         for k in range(max(groups, default=-1) + 1)]
        self._boosters: dict[tuple[int, ...], Any] = {}
        self._touched: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._lock = threading.Lock()

    @property
    def n_trees(self) -> int:
        return len(self.groups)

    @classmethod
    def read(cls, booster: Any, *, identity: Any, nthread: int) -> TreeSubsets | None:
        """The trees of ``booster``, or None where one tree's output is not its leaf
        value alone (DART's dropout weights, vector leaves).

        identity: the model's booster with one zero leaf
        (``models.loaders.xgboost.identity_booster``), for the base margin.
        nthread: the threads each subset's booster predicts with.
        """
        doc = json.loads(bytes(booster.save_raw("json")))
        learner = doc["learner"]
        model = learner["gradient_booster"]["model"]
        trees = model["trees"]
        groups = [int(g) for g in model["tree_info"]]
        if any(float(w) != 1.0 for w in model.pop("weight_drop", None) or ()):
            return None  # dropout-weighted trees (DART): their outputs are scaled
        if any(int(t["tree_param"].get("size_leaf_vector", "1")) > 1 for t in trees):
            return None
        features = [frozenset(int(f) for f, left in zip(t["split_indices"],
                                                        t["left_children"], strict=True)
                              if left != -1) for t in trees]
        tree_json = [json.dumps({k: v for k, v in t.items() if k != "id"})[1:]
                     for t in trees]
        learner["objective"] = {"name": "reg:squarederror",
                                "reg_loss_param": {"scale_pos_weight": "1"}}
        learner["attributes"] = {}
        params = learner["learner_model_param"]
        params["num_class"] = "0"
        params["num_target"] = "@@K@@"
        params["base_score"] = "@@BASE@@"
        model["trees"] = ["@@TREES@@"]
        model["tree_info"] = ["@@INFO@@"]
        model["iteration_indptr"] = ["@@INDPTR@@"]
        model["gbtree_model_param"] = {**model["gbtree_model_param"],
                                       "num_trees": "@@K@@", "num_parallel_tree": "1"}
        return cls(json.dumps(doc), tree_json, groups, features, nthread, identity)

    def touched(self, cols: Sequence[int]) -> tuple[int, ...]:
        """The trees that split on any of the columns ``cols``, in order."""
        key = tuple(cols)
        found = self._touched.get(key)
        if found is None:
            wanted = set(cols)
            found = tuple(t for t, used in enumerate(self.features) if used & wanted)
            self._touched[key] = found
        return found

    def base_margin(self, n_outputs: int) -> np.ndarray:
        """The float32 value XGBoost starts each output's accumulator from."""
        base = self.identity.inplace_predict(np.zeros((1, 1), dtype=np.float32),
                                             predict_type="margin")
        return np.asarray(base, dtype=np.float32).reshape(-1)[:n_outputs]

    def evaluate(self, X: np.ndarray, trees: tuple[int, ...], *,
                 cache: bool = True) -> np.ndarray:
        """float32 [n_rows, len(trees)]: each tree's leaf value for each row of X.

        cache: keep the booster of this subset for the next call with it.
        """
        booster = self._booster(trees, cache=cache)
        # the booster's base score is 0 for every output: no base margin to pass (a
        # rows x trees array of zeros cost more than the trees' evaluation on wide subsets)
        out = booster.inplace_predict(X, predict_type="margin")
        return np.asarray(out, dtype=np.float32).reshape(X.shape[0], len(trees))

    def _booster(self, trees: tuple[int, ...], *, cache: bool = True) -> Any:
        booster = self._boosters.get(trees)
        if booster is not None:
            return booster
        import xgboost

        k = len(trees)
        text = (self.header
                .replace('"@@TREES@@"', ",".join(f'{{"id":{j},{self.tree_json[t]}'
                                                 for j, t in enumerate(trees)))
                .replace('"@@INFO@@"', ",".join(str(j) for j in range(k)))
                .replace('"@@INDPTR@@"', f"0,{k}")
                .replace("@@K@@", str(k))
                .replace("@@BASE@@", "[" + ",".join(["0"] * k) + "]"))
        booster = xgboost.Booster()
        booster.load_model(bytearray(text.encode()))
        booster.set_param({"nthread": self.nthread})
        if not cache:
            return booster
        with self._lock:
            if len(self._boosters) > 4096:
                self._boosters.clear()
            self._boosters[trees] = booster
        return booster
