"""Readers from each library's tree models into a :class:`~models.trees.TreeEnsemble`.

``read_ensemble(obj)`` dispatches on the native object: an ``xgboost.Booster``, a
``lightgbm.Booster`` or a fitted scikit-learn tree estimator (or a Pipeline ending in
one). Each reader is checked against its library by leaf indices and predictions in the
tests, not trusted.
"""

from __future__ import annotations

from typing import Any

from models.trees import TreeEnsemble

__all__ = ["read_ensemble", "NotATreeModel"]


class NotATreeModel(ValueError):
    """The object is not a tree ensemble that tabxai can read."""


def read_ensemble(obj: Any) -> TreeEnsemble:
    """Read any supported native tree model into the normalized form."""
    module = type(obj).__module__
    if module.startswith("xgboost"):
        from models.readers.xgboost import read_xgboost

        return read_xgboost(obj)
    if module.startswith("lightgbm"):
        from models.readers.lightgbm import read_lightgbm

        return read_lightgbm(obj)
    if module.startswith("sklearn"):
        from models.readers.sklearn import read_sklearn

        return read_sklearn(obj)
    raise NotATreeModel(f"{type(obj).__name__} is not a tree model tabxai can read")
