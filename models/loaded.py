"""LoadedModel: one prediction interface over every model format tabxai reads.

Methods never touch a vendor object: they call :meth:`LoadedModel.predict` with a float64
matrix in the model's column order (categorical columns already encoded as codes, see
``models.features.build_matrix``) and get float64/int64 arrays back. Each format's
predictor calls the library the way its own ``predict`` does, so the numbers are the
library's numbers.

What a model can do beyond predicting is declared, not inferred from its format: each
loader states its ``capabilities`` (``models.capabilities``), and the optional methods
here (``tree_ensemble``, ``tree_subsets``, ``predict_from_margin``,
``permuted_predictor``) answer only where the capability is declared.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt

from models.capabilities import Capability, PermutedPredict
from models.errors import UnsupportedOutput
from models.trees import TreeEnsemble

if TYPE_CHECKING:
    from models.capabilities import PermutedPredictorModel, PredictiveModel, TreeSubsetModel
    from models.tree_subsets import TreeSubsets

__all__ = ["LoadedModel", "Output", "Device", "DEFAULT_BATCH_BYTES"]

logger = logging.getLogger(__name__)

Output = Literal["raw", "probability", "label"]
Device = Literal["cpu", "cuda"]

DEFAULT_BATCH_BYTES = 256 * 2**20
"""Bound on one batch's input plus output, in bytes, when ``batch_rows`` is not given."""


class Predictor(Protocol):
    """What each format supplies; X is float64 [n, n_features], C-contiguous (or the
    predictor's ``input_dtype`` where it declares one and the caller gave rows in it)."""

    def raw(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...

    def probability(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...

    def label(self, X: npt.NDArray[np.float64]) -> npt.NDArray[Any]: ...

    def use_device(self, device: Device) -> Device:
        """Put the model on ``device`` if it can run there; return where it runs."""
        ...


class _MarginPredictor(Predictor, Protocol):
    """A predictor of a model declaring ``predict_from_margin``."""

    def from_margin(self, margin: npt.NDArray[np.float32], output: str) -> npt.NDArray[Any]: ...


class _TreeSubsetPredictor(Predictor, Protocol):
    """A predictor of a model declaring ``tree_subsets``."""

    def tree_subsets(self) -> TreeSubsets | None: ...


class _PermutingPredictor(Predictor, Protocol):
    """A predictor of a model declaring ``permuted_predictor``."""

    def permuted_runs(self, X: npt.NDArray[Any], base: npt.NDArray[np.intp],
                      permutations: list[npt.NDArray[np.intp]], device: Device,
                      rows_per_call: int) -> Any: ...

    def from_output(self, out: npt.NDArray[np.float64], output: str) -> npt.NDArray[Any]: ...


# the predictor method each capability needs
_PREDICTOR_METHODS: dict[Capability, str] = {
    "predict_from_margin": "from_margin",
    "tree_subsets": "tree_subsets",
    "permuted_predictor": "permuted_runs",
}


class LoadedModel:
    """A model ready to predict, whatever library it came from
    (a :class:`models.capabilities.PredictiveModel`).

    Attributes
    ----------
    format: one of ``models.formats.FORMATS``.
    kind: "tree", "neural" or "other".
    task: "regression", "binary" or "multiclass".
    n_features: number of input columns.
    feature_names: the model's column names, or None when it has none.
    n_outputs: width of the "raw" output: 1 for regression and binary boosting, K for
        multiclass boosting, the number of classes for scikit-learn classifiers that give
        probabilities (forests, trees, MLPs) and ONNX classifiers.
    classes: class labels in output order (None for regression).
    categories: feature name (or str(column index)) -> category labels in code order.
    details: format-specific facts (library_version, objective, ...), JSON-able.
    native: the library object (an InferenceSession for ONNX).
    capabilities: the optional methods it has (``models.capabilities.Capability``).
    serial_predict: its predict calls should run one at a time (the library spreads one
        call over every core already).
    probability_dtype: the dtype its library computes probabilities in.
    """

    def __init__(
        self,
        *,
        format: str,
        kind: str,
        task: str,
        n_features: int,
        feature_names: list[str] | None,
        n_outputs: int,
        classes: list[Any] | None,
        categories: dict[str, list[str]],
        details: dict[str, Any],
        native: Any,
        predictor: Predictor,
        capabilities: frozenset[Capability],
        serial_predict: bool,
        probability_dtype: np.dtype,
    ) -> None:
        missing = sorted(c for c in capabilities if c in _PREDICTOR_METHODS
                         and not hasattr(predictor, _PREDICTOR_METHODS[c]))
        if missing:
            raise TypeError(f"the {format} predictor lacks the methods the declared "
                            f"capabilities {missing} call")
        self.format = format
        self.kind = kind
        self.task = task
        self.n_features = n_features
        self.feature_names = feature_names
        self.n_outputs = n_outputs
        self.classes = classes
        self.categories = categories
        self.details = details
        self.native = native
        self.capabilities = capabilities
        self.serial_predict = serial_predict
        self.probability_dtype = np.dtype(probability_dtype)
        self._predictor = predictor
        self._ensemble: TreeEnsemble | None = None

    @property
    def input_dtype(self) -> np.dtype:
        """The dtype the model computes in (float32 for most ONNX graphs, else float64):
        :meth:`predict` takes rows in it as they are, and converts any other to float64."""
        return np.dtype(getattr(self._predictor, "input_dtype", np.float64))

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def place(self, device: Device) -> Device:
        """Put the model where asked if it can; returns where its predictions will run.

        "cuda" runs on the GPU where the library and a GPU allow it; else the model stays
        on (or goes back to) the CPU and the answer is "cpu". ``predict`` places the model
        the same way on every call, so calling this first changes no prediction: it tells
        the caller where they will run.
        """
        _check_device(device)
        return self._predictor.use_device(device)

    def predict(
        self,
        X: npt.ArrayLike,
        *,
        output: Output = "raw",
        device: Device = "cpu",
        batch_rows: int | None = None,
    ) -> npt.NDArray[Any]:
        """Predict for the rows of X.

        X: float64 [n, n_features], model column order, categorical codes (or
            ``input_dtype``, which saves a conversion).
        output: "raw" -> float64 [n, n_outputs] (margin for boosting; predict_proba for
            scikit-learn forests and trees; decision_function for scikit-learn gradient
            boosting classifiers; predict for regressors);
            "probability" -> float64 [n, n_classes] (classifiers only; binary gives two
            columns); "label" -> int64 [n] class index for classifiers, float64 [n]
            prediction for regressors.
        device: "cuda" runs on the GPU where the library and a GPU allow it, else falls
            back to the CPU; :meth:`place` says which.
        batch_rows: rows per library call; default keeps one batch's input and output
            within DEFAULT_BATCH_BYTES. Results do not depend on it for tree models.
        """
        if output not in ("raw", "probability", "label"):
            raise ValueError(f"output must be 'raw', 'probability' or 'label', got {output!r}")
        _check_device(device)
        if batch_rows is not None and batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        X = np.asarray(X)
        X = np.ascontiguousarray(X, dtype=X.dtype if X.dtype == self.input_dtype
                                 else np.float64)
        self._check(X, output)
        self._predictor.use_device(device)
        compute = {
            "raw": self._predictor.raw,
            "probability": self._predictor.probability,
            "label": self._predictor.label,
        }[output]
        width = {"raw": self.n_outputs, "probability": self.n_classes or 1, "label": 1}[output]
        if batch_rows is None:
            batch_rows = max(1, DEFAULT_BATCH_BYTES // (8 * (self.n_features + max(width, 2))))
        n = X.shape[0]
        if n <= batch_rows:
            return self._finish(compute(X), output)
        parts = [compute(X[start : start + batch_rows]) for start in range(0, n, batch_rows)]
        return self._finish(np.concatenate(parts, axis=0), output)

    def predict_from_margin(self, margin: npt.ArrayLike, *,
                            output: Output = "raw") -> npt.NDArray[Any]:
        """What :meth:`predict` returns for rows whose raw margin is ``margin``.

        For models declaring ``predict_from_margin`` (XGBoost gbtree): ``margin`` is
        float32 [n, n_outputs] summed the way XGBoost sums it (see :meth:`tree_subsets`);
        the objective's transform is XGBoost's own, so the result equals ``predict`` on
        those rows bit for bit. Raises UnsupportedOutput for other models.
        """
        if "predict_from_margin" not in self.capabilities:
            raise UnsupportedOutput(
                f"A {self.format} model gives no predictions from margins; call predict.")
        if output == "probability" and self.task == "regression":
            raise UnsupportedOutput(
                "A regression model gives no probabilities; ask for output='raw' or 'label'."
            )
        predictor = cast(_MarginPredictor, self._predictor)
        return self._finish(predictor.from_margin(np.asarray(margin), output), output)

    def tree_subsets(self) -> TreeSubsets | None:
        """The model's trees, evaluated in any subset, one output per tree
        (``models.tree_subsets.TreeSubsets``), read afresh on each call.

        For models declaring ``tree_subsets`` (XGBoost gbtree); None for others, and
        where a tree's output is not its leaf value alone (DART's dropout weights,
        vector leaves). Each tree's
        output and the base margin, re-added in tree order in float32, are the margins
        :meth:`predict_from_margin` takes.
        """
        if "tree_subsets" not in self.capabilities:
            return None
        return cast(_TreeSubsetPredictor, self._predictor).tree_subsets()

    def permuted_predictor(
        self,
        X: npt.ArrayLike,
        base: npt.NDArray[np.intp],
        permutations: list[npt.NDArray[np.intp]],
        *,
        output: Output = "raw",
        device: Device = "cpu",
        rows_per_call: int,
    ) -> PermutedPredict | None:
        """Predictions on permuted copies of X's rows, built where the model runs.

        Returns ``predict(cols)``: for each permutation ``p``, what :meth:`predict` gives
        for the rows ``X[base]`` with the columns ``cols`` taken from the rows ``X[p]``
        (scikit-learn's shuffled columns: ``p = base[order]``). X and the indices go to the
        device once; each call sends only which columns move (``models.onnx_permuted``).
        None where the model cannot do this (it does not declare ``permuted_predictor``,
        or the graph cannot be wrapped): predict then. ``rows_per_call`` bounds the rows
        the model gets per library call.
        """
        if "permuted_predictor" not in self.capabilities:
            return None
        predictor = cast(_PermutingPredictor, self._predictor)
        X = np.asarray(X)
        self._check(X, output)
        predictor.use_device(device)
        runs = predictor.permuted_runs(X, base, permutations, device, rows_per_call)
        if runs is None:
            return None
        from_output = predictor.from_output

        def predict(cols: Sequence[int]) -> list[npt.NDArray[Any]]:
            return [self._finish(from_output(out, output), output) for out in runs.run(cols)]

        return predict

    def _check(self, X: np.ndarray, output: Output) -> None:
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have shape [n, {self.n_features}], got {list(X.shape)}")
        if output == "probability" and self.task == "regression":
            raise UnsupportedOutput(
                "A regression model gives no probabilities; ask for output='raw' or 'label'."
            )

    def _finish(self, values: npt.NDArray[Any], output: Output) -> npt.NDArray[Any]:
        if output == "label":
            dtype = np.float64 if self.task == "regression" else np.int64
            values = np.asarray(values, dtype=dtype)
            return values.reshape(-1) if values.ndim == 1 or values.shape[1] == 1 else values
        values = np.asarray(values, dtype=np.float64)
        return values.reshape(values.shape[0], -1)

    def tree_ensemble(self) -> TreeEnsemble:
        """The model as a normalized tree ensemble (read once, then cached).

        Raises models.readers.NotATreeModel for models that are not tree ensembles.
        """
        from models.readers import NotATreeModel, read_ensemble

        if self._ensemble is None:
            if "tree_ensemble" not in self.capabilities:
                raise NotATreeModel(
                    f"A {self.format} model is not a tree ensemble tabxai can read."
                )
            self._ensemble = read_ensemble(self.native)
        return self._ensemble

    def __repr__(self) -> str:
        return (
            f"LoadedModel(format={self.format!r}, kind={self.kind!r}, task={self.task!r}, "
            f"n_features={self.n_features}, n_outputs={self.n_outputs})"
        )


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


if TYPE_CHECKING:
    def _has_every_protocol(model: LoadedModel) -> tuple[
            PredictiveModel, TreeSubsetModel, PermutedPredictorModel]:
        """Never called: mypy checks here that LoadedModel keeps models.capabilities."""
        return model, model, model
