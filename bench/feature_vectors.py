"""Benchmark Feature Vectors on a large XGBoost model (default: 2,000 trees of depth 8 on
200 features, about 500k leaves).

    .venv/bin/python bench/feature_vectors.py [--trees 2000] [--depth 8] [--features 200]
        [--rows 5000] [--nthread 2] [--repeat 3] [--model saved.ubj]

Training time, reading time (``models.readers.read_ensemble``) and the method's time are
reported separately; the method's time is the best of ``--repeat`` runs per setting.
``--model`` loads a saved booster instead of training (it is saved there after training
when the file does not exist yet). XGBoost stops splitting where the gain vanishes, so
its trees hold far fewer than 2**depth leaves (about 34 per depth-8 tree here);
``--complete`` instead times the method on complete trees of that depth with random
splits (2,000 × 256 = 512k leaves by default), no training.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import xgboost

from explainers.feature_vectors import FeatureVectorsParams, feature_vectors
from models.readers import read_ensemble
from models.trees import Tree, TreeEnsemble

logger = logging.getLogger("bench.feature_vectors")


def train_booster(*, n_trees: int, depth: int, n_features: int, n_rows: int, nthread: int,
                  seed: int = 0) -> xgboost.Booster:
    """A regression booster of ``n_trees`` trees of depth ``depth`` on Gaussian features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    informative = min(10, n_features)
    y = (X[:, :informative] @ rng.normal(size=informative)
         + rng.normal(scale=3.0, size=n_rows))
    params = {"tree_method": "hist", "max_depth": depth, "eta": 0.05,
              "min_child_weight": 0.5, "nthread": nthread, "seed": seed}
    return xgboost.train(params, xgboost.DMatrix(X, y), num_boost_round=n_trees)


def complete_ensemble(*, n_trees: int, depth: int, n_features: int, seed: int = 0
                      ) -> TreeEnsemble:
    """``n_trees`` complete binary trees of ``depth`` with random features and thresholds."""
    rng = np.random.default_rng(seed)
    n_internal = 2 ** depth - 1
    n_nodes = 2 * n_internal + 1
    left = np.full(n_nodes, -1, dtype=np.int32)
    right = np.full(n_nodes, -1, dtype=np.int32)
    left[:n_internal] = 2 * np.arange(n_internal) + 1
    right[:n_internal] = 2 * np.arange(n_internal) + 2
    trees = []
    for _ in range(n_trees):
        feature = np.full(n_nodes, -1, dtype=np.int32)
        feature[:n_internal] = rng.integers(0, n_features, n_internal)
        threshold = np.zeros(n_nodes)
        threshold[:n_internal] = np.round(rng.normal(size=n_internal), 1)
        trees.append(Tree(left=left, right=right, feature=feature, threshold=threshold,
                          default_left=np.ones(n_nodes, dtype=bool),
                          missing=np.zeros(n_nodes, dtype=np.int8),
                          value=np.zeros((n_nodes, 1)), cover=np.ones(n_nodes)))
    return TreeEnsemble(trees=tuple(trees), n_features=n_features, n_outputs=1,
                        base_score=np.zeros(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--features", type=int, default=200)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--nthread", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bagging", type=int, default=0,
                        help="also time the default setting with this many bags")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--complete", action="store_true",
                        help="complete trees with random splits instead of XGBoost")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.complete:
        start = time.perf_counter()
        ensemble = complete_ensemble(n_trees=args.trees, depth=args.depth,
                                     n_features=args.features)
        logger.info("build   %8.2f s  (complete trees, random splits)",
                    time.perf_counter() - start)
    else:
        ensemble = _read_xgboost_model(args)
    logger.info("model   %d trees, %d leaves, max depth %d, %d features", ensemble.n_trees,
                ensemble.n_leaves(), ensemble.max_depth(), ensemble.n_features)
    _time_settings(ensemble, repeat=args.repeat, bagging=args.bagging)


def _read_xgboost_model(args: argparse.Namespace) -> TreeEnsemble:
    if args.model is not None and args.model.exists():
        booster = xgboost.Booster(model_file=str(args.model))
        logger.info("loaded %s", args.model)
    else:
        start = time.perf_counter()
        booster = train_booster(n_trees=args.trees, depth=args.depth,
                                n_features=args.features, n_rows=args.rows,
                                nthread=args.nthread)
        logger.info("train   %8.2f s  (xgboost hist, nthread=%d, %d rows)",
                    time.perf_counter() - start, args.nthread, args.rows)
        if args.model is not None:
            booster.save_model(str(args.model))

    start = time.perf_counter()
    ensemble = read_ensemble(booster)
    logger.info("read    %8.2f s  (models.readers.read_ensemble)", time.perf_counter() - start)
    return ensemble


def _time_settings(ensemble: TreeEnsemble, *, repeat: int, bagging: int) -> None:
    settings = [FeatureVectorsParams(order=order, dedup_rules=dedup)
                for order in ("expected", "path", "random") for dedup in (True, False)]
    if bagging:
        settings.append(FeatureVectorsParams(bagging=bagging))
    for params in settings:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            result = feature_vectors(ensemble, params=params)
            best = min(best, time.perf_counter() - start)
        logger.info("method  %8.2f s  order=%-8s dedup=%-5s bagging=%-3d rules=%d counted=%d "
                    "explained=%.3f", best, params.order, params.dedup_rules, params.bagging,
                    result.n_rules, result.n_rules_counted, result.explained_fraction)


if __name__ == "__main__":
    main()
