"""Where a GPU can be used: one function per question, each answered the way its caller
needs it.

The questions differ, and so do their costs: whether the machine has a GPU at all is a
look at ``/proc`` (no CUDA library loaded, for a worker deciding which jobs to take);
whether XGBoost really computes on it shows only after a prediction; XGBoost's
``inplace_predict`` on the GPU takes cupy arrays, so it needs cupy to find a device;
onnxruntime and torch each bring their own CUDA. No library is imported until its
question is asked.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["gpu_visible", "xgboost_cuda", "xgboost_device_after_probe", "cupy_cuda",
           "onnxruntime_cuda", "torch_cuda"]

logger = logging.getLogger(__name__)


def gpu_visible() -> bool:
    """Whether this machine has an NVIDIA GPU this process may use (cheap: no CUDA
    library is loaded)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


@functools.cache
def xgboost_cuda() -> bool:
    """Whether XGBoost can run on a CUDA GPU here (probed once with a one-tree booster)."""
    import numpy as np
    import xgboost

    if not xgboost.build_info().get("USE_CUDA", False):
        return False
    X = np.array([[0.0], [1.0]], dtype=np.float32)
    booster = xgboost.train({"nthread": 1, "max_depth": 1}, xgboost.DMatrix(X, [0.0, 1.0]), 1)
    return xgboost_device_after_probe(booster, "cuda", 1).startswith("cuda")


def xgboost_device_after_probe(booster: Any, device: str, nthread: int) -> str:
    """Set ``device`` on an XGBoost booster and return the device XGBoost actually uses:
    it falls back to the CPU (with a warning) when no GPU is visible, which shows only
    after a prediction. nthread: CPU threads to set (0 leaves the booster's)."""
    import numpy as np
    import xgboost

    params: dict[str, Any] = {"device": device}
    if nthread > 0:
        params["nthread"] = nthread
    with warnings.catch_warnings():
        # XGBoost warns about a fallback to the CPU; the caller reports the device instead
        warnings.simplefilter("ignore", UserWarning)
        booster.set_param(params)
        if device == "cpu":
            return "cpu"
        n_features = booster.num_features()
        booster.predict(xgboost.DMatrix(np.zeros((1, n_features), dtype=np.float32)))
    config = json.loads(booster.save_config())
    return str(config["learner"]["generic_param"]["device"])


_cupy_cuda: bool | None = None


def cupy_cuda() -> bool:
    """Whether XGBoost can predict on a GPU from cupy arrays here: XGBoost built with
    CUDA, cupy installed and a device counted (answered once)."""
    global _cupy_cuda
    if _cupy_cuda is None:
        import xgboost

        _cupy_cuda = False
        if xgboost.build_info().get("USE_CUDA"):
            try:
                import cupy

                _cupy_cuda = cupy.cuda.runtime.getDeviceCount() > 0
            except ImportError:
                logger.info("cupy is not installed: XGBoost predicts on the CPU")
            except cupy.cuda.runtime.CUDARuntimeError:
                logger.info("no CUDA device: XGBoost predicts on the CPU")
    return _cupy_cuda


def onnxruntime_cuda() -> bool:
    """Whether onnxruntime offers its CUDA execution provider (onnxruntime-gpu). Whether
    the provider starts shows only in a session: a session made with it lists it among
    its providers, or runs on the CPU when the CUDA libraries do not load."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def torch_cuda() -> bool:
    """Whether torch can put a module on a CUDA GPU here (``torch.cuda.is_available``)."""
    import torch

    return bool(torch.cuda.is_available())
