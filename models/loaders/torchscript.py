"""Load a TorchScript module (from torch.jit.save) and predict with it through torch.

Loading TorchScript runs code from the file: :func:`models.loading.load_model` calls
:func:`load_torchscript` only when uploads are trusted. The module takes a 2-D float32
tensor [rows, features] and returns logits; it runs on CUDA when asked and present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import InvalidModel, UnsupportedModelFormat, first_line
from models.gpu import torch_cuda
from models.loaded import Device
from models.loaders.parts import LoadedParts
from models.loaders.probabilities import sigmoid, softmax, two_columns

__all__ = ["load_torchscript"]


def load_torchscript(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
    try:
        import torch
    except ImportError as error:
        raise UnsupportedModelFormat(
            "TorchScript models need PyTorch, which is not installed on this server; install "
            "tabxai with the 'torch' extra (pip install 'tabxai[torch]')."
        ) from error
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise InvalidModel(
            f"The TorchScript file could not be loaded ({first_line(error)}). "
            "Save it with torch.jit.save."
        ) from error
    module.eval()
    predictor = _TorchPredictor(module, n_threads)
    n_features = _torchscript_width(module)
    out_width = predictor.run(np.zeros((2, n_features))).shape[1]
    if task is None and out_width != 1:
        raise InvalidModel(
            f"The TorchScript module returns {out_width} columns: pass task= ('regression', "
            "'binary' or 'multiclass')."
        )
    file_task = task or "regression"
    predictor.configure(file_task, out_width)
    return LoadedParts(
        kind="neural",
        task=file_task,
        n_features=n_features,
        feature_names=None,
        n_outputs=out_width,
        n_classes=None if file_task == "regression" else (2 if out_width == 1 else out_width),
        details={
            "library": "torch",
            "library_version": torch.__version__,
            "output": "logits (probabilities by sigmoid/softmax)",
        },
        native=module,
        predictor=predictor,
    )


def _torchscript_width(module: Any) -> int:
    """The input width, from the first Linear layer's in_features."""
    for sub in module.modules():
        width = getattr(sub, "in_features", None)
        if isinstance(width, int):
            return width
    raise InvalidModel(
        "The TorchScript module's input width cannot be found (no Linear layer); tabxai needs "
        "a module taking a 2-D float tensor [rows, features]."
    )


class _TorchPredictor:
    def __init__(self, module: Any, n_threads: int | None) -> None:
        self._module = module
        self._n_threads = n_threads
        self._device: Device = "cpu"
        self._task = "regression"
        self._width = 1

    def configure(self, task: str, width: int) -> None:
        self._task = task
        self._width = width

    def use_device(self, device: Device) -> Device:
        target: Device = "cuda" if device == "cuda" and torch_cuda() else "cpu"
        if target != self._device:
            self._module.to(target)
            self._device = target
        return target

    def run(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        import torch

        if self._n_threads is not None:
            torch.set_num_threads(self._n_threads)
        with torch.inference_mode():
            out = self._module(torch.as_tensor(X, dtype=torch.float32, device=self._device))
        return np.asarray(out.detach().cpu().numpy(), dtype=np.float64).reshape(X.shape[0], -1)

    def raw(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self.run(X)

    def probability(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out = self.run(X)
        return two_columns(sigmoid(out)) if self._width == 1 else softmax(out)

    def label(self, X: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        if self._task == "regression":
            out = self.run(X)
            return out.reshape(-1) if self._width == 1 else out
        return np.argmax(self.probability(X), axis=1)
