"""Throughput of TreeSHAP through the XGBoost export against what a user would call directly.

    .venv/bin/python bench/tree_shap.py --device cpu --rows 2000

Models (trained here on synthetic data with ``--features`` columns):
- XGBoost, ``--trees`` trees of depth 6: TreeShap (export of the read ensemble) against
  the booster's own ``pred_contribs`` / ``pred_interactions``;
- scikit-learn RandomForest, ``--forest-trees`` trees of depth 10, and LightGBM,
  ``--trees`` trees of depth 6: TreeShap against ``shap.TreeExplainer``.
Values use ``--rows`` rows; interactions ``--interaction-rows`` through XGBoost and
``--shap-interaction-rows`` through shap (shap's interactions are slow). Rates are rows
per second of wall time; ratios are TreeShap over the other path.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger("bench.tree_shap")


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    import lightgbm
    import shap
    import xgboost
    from sklearn.ensemble import RandomForestRegressor

    from explainers.tree_shap import TreeShap
    from models.readers import read_ensemble

    rng = np.random.default_rng(0)
    X_train = rng.normal(size=(args.train_rows, args.features)).astype(np.float32)
    y = (X_train[:, 0] + X_train[:, 1] * X_train[:, 2] + np.sin(X_train[:, 3])
         + rng.normal(0, 0.3, args.train_rows)).astype(np.float32)
    X = rng.normal(size=(args.rows, args.features)).astype(np.float32)
    n_int = min(args.interaction_rows, args.rows)
    logger.info("device=%s rows=%d features=%d nthread=%s xgboost=%s shap=%s",
                args.device, args.rows, args.features, args.nthread or "all",
                xgboost.__version__, shap.__version__)

    booster = xgboost.train(
        {"max_depth": 6, "eta": 0.1, "nthread": args.nthread or -1, "device": args.device},
        xgboost.DMatrix(X_train, y), args.trees)
    lgbm = lightgbm.LGBMRegressor(n_estimators=args.trees, max_depth=6, num_leaves=63,
                                  verbose=-1, n_jobs=args.nthread or -1).fit(X_train, y)
    forest = RandomForestRegressor(n_estimators=args.forest_trees, max_depth=10,
                                   random_state=0, n_jobs=args.nthread or -1
                                   ).fit(X_train, y)

    def treeshap(model: Any) -> TreeShap:
        began = time.perf_counter()
        explainer = TreeShap(read_ensemble(model), device=args.device, nthread=args.nthread)
        logger.info("  read + export + load: %.2f s (device used: %s)",
                    time.perf_counter() - began, explainer.device_used)
        return explainer

    logger.info("XGBoost %d trees depth 6", args.trees)
    explainer = treeshap(booster)
    direct = xgboost.DMatrix(X)
    direct_int = xgboost.DMatrix(X[:n_int])
    _compare("values", args.rows,
             lambda: explainer.explain(X),
             "xgboost pred_contribs", args.rows,
             lambda: booster.predict(direct, pred_contribs=True))
    _compare("interactions", n_int,
             lambda: explainer.explain(X[:n_int], interactions=True),
             "xgboost pred_interactions", n_int,
             lambda: booster.predict(direct_int, pred_interactions=True))

    for title, model in ((f"LightGBM {args.trees} trees depth 6", lgbm),
                         (f"sklearn RandomForest {args.forest_trees} trees depth 10", forest)):
        logger.info(title)
        _against_shap(treeshap(model.booster_ if hasattr(model, "booster_") else model),
                      shap.TreeExplainer(model), X, args)


def _against_shap(explainer: Any, reference: Any, X: np.ndarray, args: argparse.Namespace
                  ) -> None:
    n_values = min(args.shap_rows, args.rows)
    n_int = min(args.interaction_rows, args.rows)
    n_shap_int = min(args.shap_interaction_rows, args.rows)
    _compare("values", args.rows, lambda: explainer.explain(X),
             "shap TreeExplainer", n_values,
             lambda: reference.shap_values(X[:n_values], check_additivity=False))
    _compare("interactions", n_int,
             lambda: explainer.explain(X[:n_int], interactions=True),
             "shap TreeExplainer", n_shap_int,
             lambda: reference.shap_interaction_values(X[:n_shap_int]))


def _compare(what: str, rows: int, ours: Callable[[], object], other_name: str,
             other_rows: int, other: Callable[[], object]) -> None:
    ours_rate = rows / _seconds(ours)
    other_rate = other_rows / _seconds(other)
    logger.info("  %-12s TreeShap %10.1f rows/s | %-26s %10.1f rows/s | ratio %6.1fx",
                what, ours_rate, other_name, other_rate, ours_rate / other_rate)


def _seconds(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return max(time.perf_counter() - began, 1e-9)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rows", type=int, default=20_000, help="rows for SHAP values")
    parser.add_argument("--interaction-rows", type=int, default=2_000,
                        help="rows for interactions through XGBoost")
    parser.add_argument("--shap-rows", type=int, default=2_000,
                        help="rows for shap.TreeExplainer values")
    parser.add_argument("--shap-interaction-rows", type=int, default=50,
                        help="rows for shap.TreeExplainer interactions")
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--forest-trees", type=int, default=100)
    parser.add_argument("--train-rows", type=int, default=5_000)
    parser.add_argument("--nthread", type=int, default=0, help="0: all cores")
    args = parser.parse_args(argv)
    for name in ("rows", "interaction_rows", "shap_rows", "shap_interaction_rows",
                 "features", "trees", "forest_trees", "train_rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


if __name__ == "__main__":
    main()
