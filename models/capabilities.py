"""What an explainer may ask of a model: the base protocol every model keeps, and the
optional capabilities a model declares.

:class:`PredictiveModel` is all an explainer needs to run on any model: its task, classes
and shapes, the dtype it computes in, ``predict`` and ``place``. A model that can do more
says so in ``capabilities`` (set by its loader, see ``models.loaders``), and an explainer
tests that set, never the model's file format or library objects, before it calls the
method a capability names (``has_tree_subsets``, ``has_permuted_predictor`` narrow the
type). :class:`models.loaded.LoadedModel` implements every protocol here and declares,
by format:

- ``tree_ensemble``: XGBoost, LightGBM, scikit-learn (skops, pickle, joblib);
- ``tree_subsets`` and ``predict_from_margin``: XGBoost gbtree models;
- ``permuted_predictor``: ONNX graphs whose batch size is free.

Besides, every model states how its library computes: ``serial_predict`` (True for ONNX:
onnxruntime spreads one call over every core, so callers should not run calls side by
side) and ``probability_dtype`` (float32 for XGBoost, whose probabilities are float32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeGuard

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from models.loaded import Device, Output
    from models.tree_subsets import TreeSubsets

__all__ = ["Capability", "CAPABILITIES", "PredictiveModel", "TreeSubsetModel",
           "PermutedPredictorModel", "PermutedPredict", "has_tree_subsets",
           "has_permuted_predictor"]

Capability = Literal["tree_ensemble", "tree_subsets", "predict_from_margin",
                     "permuted_predictor"]
"""An optional method a model declares it has:

tree_ensemble: ``tree_ensemble()`` reads the model as a normalized tree ensemble (its
    library is one whose trees tabxai reads; a model of it without trees still raises
    ``models.readers.NotATreeModel``).
tree_subsets: ``tree_subsets()`` gives its trees evaluated in any subset, one output per
    tree (``models.tree_subsets.TreeSubsets``), or None where a tree's output is not its
    leaf value alone.
predict_from_margin: ``predict_from_margin(margin)`` applies the objective to margins
    summed the way the library sums them, bit for bit.
permuted_predictor: ``permuted_predictor(...)`` builds permuted copies of rows where the
    model runs (in front of an ONNX graph), or returns None where it cannot.
"""

CAPABILITIES: tuple[Capability, ...] = ("tree_ensemble", "tree_subsets",
                                        "predict_from_margin", "permuted_predictor")

PermutedPredict = Callable[[Sequence[int]], list[npt.NDArray[Any]]]
"""``predict(cols)``: one prediction per permutation, with the columns ``cols`` moved."""


class PredictiveModel(Protocol):
    """What every explainer may call on a model.

    task: "regression", "binary" or "multiclass".
    classes: class labels in output order (``predict(output="label")`` returns indices
        into it), None for regression.
    n_features: input columns; n_outputs: width of the "raw" output.
    input_dtype: the dtype the model computes in; ``predict`` takes rows in it as they
        are (float64 otherwise).
    capabilities: the optional methods it has (see :data:`Capability`); empty for a
        model that has only this protocol.
    serial_predict: its predict calls should run one at a time, not side by side in
        threads (the library already spreads one call over every core).
    probability_dtype: the dtype its library computes probabilities in; ``predict``
        returns them as float64, and they are exact in this dtype.
    predict(X, output=..., device=...): "raw" [n, n_outputs]; "probability" [n, K];
        "label" [n] (class indices for classifiers, predictions for regression).
    place(device): puts the model where asked if it can; returns where its predictions
        will run ("cpu" when asked for "cuda" without a usable GPU).
    """

    @property
    def task(self) -> str: ...

    @property
    def classes(self) -> Sequence[Any] | None: ...

    @property
    def n_features(self) -> int: ...

    @property
    def n_outputs(self) -> int: ...

    @property
    def input_dtype(self) -> np.dtype: ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    @property
    def serial_predict(self) -> bool: ...

    @property
    def probability_dtype(self) -> np.dtype: ...

    def predict(self, X: npt.ArrayLike, *, output: Output = "raw", device: Device = "cpu",
                batch_rows: int | None = None) -> npt.NDArray[Any]: ...

    def place(self, device: Device) -> Device: ...


class TreeSubsetModel(PredictiveModel, Protocol):
    """A model declaring ``tree_subsets`` and ``predict_from_margin``."""

    def tree_subsets(self) -> TreeSubsets | None: ...

    def predict_from_margin(self, margin: npt.ArrayLike, *,
                            output: Output = "raw") -> npt.NDArray[Any]: ...


class PermutedPredictorModel(PredictiveModel, Protocol):
    """A model declaring ``permuted_predictor``."""

    def permuted_predictor(self, X: npt.ArrayLike, base: npt.NDArray[np.intp],
                           permutations: list[npt.NDArray[np.intp]], *,
                           output: Output = "raw", device: Device = "cpu",
                           rows_per_call: int) -> PermutedPredict | None: ...


def has_tree_subsets(model: PredictiveModel) -> TypeGuard[TreeSubsetModel]:
    """Whether ``model`` declares ``tree_subsets`` and ``predict_from_margin``."""
    return {"tree_subsets", "predict_from_margin"} <= model.capabilities


def has_permuted_predictor(model: PredictiveModel) -> TypeGuard[PermutedPredictorModel]:
    """Whether ``model`` declares ``permuted_predictor``."""
    return "permuted_predictor" in model.capabilities
