"""Load an ONNX graph and predict with it through onnxruntime.

The graph takes one 2-D float input [rows, features] and gives one float output (or a
label output beside a probability tensor). Prediction runs on onnxruntime's CUDA
execution provider when asked and present, else on the CPU in cache-sized calls.
onnxruntime spreads each call over every core, so the model declares ``serial_predict``;
a graph whose batch size is free declares ``permuted_predictor`` (``models.onnx_permuted``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import InvalidModel, first_line
from models.gpu import onnxruntime_cuda
from models.loaded import Device
from models.loaders.parts import LoadedParts
from models.loaders.probabilities import sigmoid, softmax, two_columns

__all__ = ["load_onnx", "ONNX_NAMES_KEY", "ONNX_CPU_CALL_ROWS"]

logger = logging.getLogger(__name__)

_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def load_onnx(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
    import onnx
    import onnxruntime
    from google.protobuf.message import DecodeError

    model_bytes = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(model_bytes)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise InvalidModel(
            f"The ONNX file could not be parsed ({first_line(error)}). "
            "Upload the whole .onnx file your converter wrote."
        ) from error
    session = _onnx_session(model_bytes, ["CPUExecutionProvider"], n_threads)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InvalidModel(
            f"The ONNX graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "tabxai needs exactly one 2-D float input holding all features."
        )
    (graph_input,) = inputs
    if graph_input.type not in _ONNX_FLOAT_TYPES:
        raise InvalidModel(
            f"The ONNX input {graph_input.name!r} has type {graph_input.type}; tabxai needs a "
            "2-D float (float32 or float64) tensor."
        )
    if len(graph_input.shape) != 2:
        raise InvalidModel(
            f"The ONNX input {graph_input.name!r} has shape {graph_input.shape}; tabxai needs a "
            "2-D tensor [rows, features]."
        )
    batch, width = graph_input.shape
    if not isinstance(width, int):
        raise InvalidModel(
            f"The ONNX input {graph_input.name!r} has no fixed number of features; re-export it "
            "with a static second dimension."
        )
    outputs = session.get_outputs()
    for out in outputs:
        if out.type.startswith("seq(map"):
            raise InvalidModel(
                f"The ONNX output {out.name!r} is a list of dictionaries (a ZipMap); tabxai reads "
                "probabilities as a tensor. Convert with skl2onnx using "
                "options={'zipmap': False}."
            )
    float_outputs = [o for o in outputs if o.type in _ONNX_FLOAT_TYPES]
    label_outputs = [o for o in outputs if o.type not in _ONNX_FLOAT_TYPES and len(o.shape) == 1]
    input_dtype = _ONNX_FLOAT_TYPES[graph_input.type]
    fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
    if not float_outputs:
        raise InvalidModel("The ONNX graph has no float output to read predictions from.")
    if label_outputs and len(float_outputs) == 1 and len(float_outputs[0].shape) == 2:
        form = "label_and_probabilities"
        value_output = float_outputs[0]
    elif len(float_outputs) == 1:
        form = "single"
        value_output = float_outputs[0]
    else:
        raise InvalidModel(
            f"The ONNX graph has {len(float_outputs)} float outputs "
            f"({', '.join(o.name for o in float_outputs)}); tabxai reads one."
        )
    predictor = _OnnxPredictor(
        model_bytes,
        session,
        graph_input.name,
        value_output.name,
        input_dtype,
        fixed_batch,
        n_threads,
    )
    out_width = value_output.shape[1] if len(value_output.shape) == 2 else 1
    if not isinstance(out_width, int):
        out_width = predictor.run(np.zeros((1, width))).shape[1]
    producer = next((n.op_type for n in proto.graph.node if value_output.name in n.output), "")
    if form == "label_and_probabilities":
        is_probability = True
        file_task = "binary" if out_width == 2 else "multiclass"
        if task is not None and task != "regression":
            file_task = task
        n_classes = out_width
    else:
        is_probability = producer in ("Softmax", "Sigmoid")
        if task is None:
            if out_width != 1:
                raise InvalidModel(
                    f"The ONNX graph has one output with {out_width} columns: say what it predicts "
                    "by passing task= ('regression', 'binary' or 'multiclass')."
                )
            file_task = "regression"
        else:
            file_task = task
        n_classes = None if file_task == "regression" else (2 if out_width == 1 else out_width)
        if file_task == "binary" and out_width not in (1, 2):
            raise InvalidModel(
                f"A binary model needs 1 or 2 output columns, the graph has {out_width}."
            )
    predictor.configure(file_task, is_probability, out_width)
    ops = {n.op_type for n in proto.graph.node}
    neural = bool(ops & {"MatMul", "Gemm", "Conv", "LSTM", "GRU", "RNN"})
    return LoadedParts(
        kind="neural" if neural else "other",
        task=file_task,
        n_features=width,
        feature_names=_onnx_feature_names(proto, width),
        n_outputs=out_width,
        n_classes=n_classes,
        classes=_onnx_class_labels(proto, n_classes) if n_classes else None,
        details={
            "library": "onnxruntime",
            "library_version": onnxruntime.__version__,
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "opset": max(
                (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0
            ),
            "input_name": graph_input.name,
            "input_type": graph_input.type,
            "output_names": [o.name for o in outputs],
            "prediction_output": value_output.name,
            "output_is_probability": is_probability,
        },
        native=session,
        predictor=predictor,
        capabilities=frozenset({"permuted_predictor"}) if fixed_batch is None else frozenset(),
        # onnxruntime spreads one call over every core already; two callers sharing its
        # thread pool were measured slower per call (10.6 ms against 6.0 ms, 50k-row MLP)
        serial_predict=True,
    )


ONNX_NAMES_KEY = "feature_names"
"""The key of the ONNX model's ``metadata_props`` entry that names its input columns:
a JSON list of strings, one per column of the 2-D input, in order."""


def _onnx_feature_names(proto: Any, width: int) -> list[str] | None:
    """Column names stored in the graph's metadata_props, or None. An ONNX input is one
    tensor [rows, width]: its name (e.g. "float_input") names no column."""
    entry = next((p.value for p in proto.metadata_props if p.key == ONNX_NAMES_KEY), None)
    if entry is None:
        return None
    try:
        names = json.loads(entry)
    except json.JSONDecodeError as error:
        raise InvalidModel(
            f"The ONNX metadata entry {ONNX_NAMES_KEY!r} is not JSON ({error.msg}); store a "
            'JSON list of column names there, e.g. ["age", "income"].') from error
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or len(names) != width or len(set(names)) != width:
        raise InvalidModel(
            f"The ONNX metadata entry {ONNX_NAMES_KEY!r} must be a JSON list of {width} "
            "distinct column names, one per input column.")
    return names


def _onnx_session(model_bytes: bytes, providers: list[Any], n_threads: int | None) -> Any:
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    options = onnxruntime.SessionOptions()
    if n_threads is not None:
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(model_bytes, options, providers=providers)
    except (
        ort_state.Fail,
        ort_state.InvalidGraph,
        ort_state.InvalidProtobuf,
        ort_state.InvalidArgument,
        ort_state.NotImplemented,
        ort_state.RuntimeException,
    ) as error:
        raise InvalidModel(
            f"onnxruntime cannot run the ONNX graph ({first_line(error)}). "
            "Convert the model again with a supported opset."
        ) from error


def _onnx_class_labels(proto: Any, n_classes: int) -> list[Any] | None:
    """Class labels stored in the graph by skl2onnx (classifier node attributes or a
    'classes' initializer), or None."""
    from onnx import numpy_helper

    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name == "classlabels_ints" and len(attr.ints) == n_classes:
                return list(attr.ints)
            if attr.name == "classlabels_strings" and len(attr.strings) == n_classes:
                return [s.decode() for s in attr.strings]
    for init in proto.graph.initializer:
        if init.name == "classes":
            values = numpy_helper.to_array(init).reshape(-1)
            if len(values) == n_classes:
                return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
    return None


# Rows per onnxruntime call on the CPU. Each row's output does not depend on the call's
# other rows (tested bit for bit), and calls this size keep a network's hidden layers in
# cache: a 64-64 MLP on 50,000 x 30 took 5.1 ms in one call and 2.4 ms in five (2 cores;
# 2.4 ms from 2,000 to 25,000 rows per call, 3.0 ms at 1,000).
ONNX_CPU_CALL_ROWS = 10_000


# onnxruntime's CUDA provider without TF32 matrix products (its default), which keep 10
# bits of mantissa: 1e-4 relative errors where float32 gives 1e-7.
_ONNX_CUDA = ("CUDAExecutionProvider", {"use_tf32": "0"})


class _OnnxPredictor:
    def __init__(
        self,
        model_bytes: bytes,
        session: Any,
        input_name: str,
        output_name: str,
        input_dtype: type,
        fixed_batch: int | None,
        n_threads: int | None,
    ) -> None:
        self._bytes = model_bytes
        self._sessions = {"cpu": session}
        self._session = session
        self._input = input_name
        self._output = output_name
        self._dtype = input_dtype
        self._fixed_batch = fixed_batch
        self._n_threads = n_threads
        self._task = "regression"
        self._is_probability = False
        self._width = 1

    @property
    def input_dtype(self) -> type:
        return self._dtype

    def configure(self, task: str, is_probability: bool, width: int) -> None:
        self._task = task
        self._is_probability = is_probability
        self._width = width

    def use_device(self, device: Device) -> Device:
        if device == "cuda" and onnxruntime_cuda():
            if "cuda" not in self._sessions:
                session = _onnx_session(
                    self._bytes, [_ONNX_CUDA, "CPUExecutionProvider"], self._n_threads
                )
                # onnxruntime falls back to the CPU with a warning when the CUDA libraries
                # do not load; say where the model really runs.
                if "CUDAExecutionProvider" not in session.get_providers():
                    logger.warning("onnxruntime could not start its CUDA provider (CUDA or "
                                   "cuDNN libraries not found); the model runs on the CPU")
                    session = self._sessions["cpu"]
                self._sessions["cuda"] = session
            self._session = self._sessions["cuda"]
            return "cuda" if self._session is not self._sessions["cpu"] else "cpu"
        self._session = self._sessions["cpu"]
        return "cpu"

    def run(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        X = X.astype(self._dtype, copy=False)
        if self._fixed_batch is None:
            step = X.shape[0] if self._session is not self._sessions["cpu"] \
                else ONNX_CPU_CALL_ROWS
            if X.shape[0] <= step:
                out = self._session.run([self._output], {self._input: X})[0]
                return np.asarray(out, dtype=np.float64).reshape(X.shape[0], -1)
            parts = [self._session.run([self._output], {self._input: X[a:a + step]})[0]
                     for a in range(0, X.shape[0], step)]
            return np.asarray(np.concatenate(parts), dtype=np.float64).reshape(X.shape[0], -1)
        # A graph with a static batch size takes exactly that many rows per call.
        b = self._fixed_batch
        parts = []
        for start in range(0, X.shape[0], b):
            chunk = X[start : start + b]
            padded: np.ndarray = np.zeros((b, X.shape[1]), dtype=self._dtype)
            padded[: chunk.shape[0]] = chunk
            out = self._session.run([self._output], {self._input: padded})[0]
            parts.append(np.asarray(out, dtype=np.float64).reshape(b, -1)[: chunk.shape[0]])
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, self._width))

    def raw(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self.run(X)

    def probability(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self.from_output(self.run(X), "probability")

    def label(self, X: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        return self.from_output(self.run(X), "label")

    def from_output(self, out: npt.NDArray[np.float64], output: str) -> npt.NDArray[Any]:
        """``raw``/``probability``/``label`` from the graph's output ``run`` returned."""
        if output == "raw":
            return out
        if output == "label" and self._task == "regression":
            return out.reshape(-1) if self._width == 1 else out
        if self._width == 1:
            probability = two_columns(out if self._is_probability else sigmoid(out))
        else:
            probability = out if self._is_probability else softmax(out)
        return probability if output == "probability" else np.argmax(probability, axis=1)

    def permuted_runs(self, X: npt.NDArray[Any], base: npt.NDArray[np.intp],
                      permutations: list[npt.NDArray[np.intp]], device: Device,
                      rows_per_call: int) -> Any:
        """A :class:`models.onnx_permuted.PermutedRuns` on ``device`` (after ``use_device``),
        or None where the graph has a fixed batch size or cannot be wrapped."""
        from models.onnx_permuted import PermutedRuns, permuting_graph

        if self._fixed_batch is not None:
            return None
        on_cuda = device == "cuda" and self._session is not self._sessions["cpu"]
        key = "permuting-cuda" if on_cuda else "permuting-cpu"
        if key not in self._sessions:
            graph = permuting_graph(self._bytes, self._input, self._output, X.shape[1],
                                    np.dtype(self._dtype))
            if graph is None:
                return None
            providers: list[Any] = ["CPUExecutionProvider"]
            if on_cuda:
                providers.insert(0, _ONNX_CUDA)
            try:
                session = _onnx_session(graph, providers, self._n_threads)
            except InvalidModel as error:
                logger.info("permuted copies stay on the host: %s", error)
                return None
            if on_cuda and "CUDAExecutionProvider" not in session.get_providers():
                return None
            self._sessions[key] = session
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        try:
            return PermutedRuns(self._sessions[key], self._output,
                                np.asarray(X, dtype=self._dtype), base, permutations,
                                device="cuda" if on_cuda else "cpu",
                                rows_per_call=rows_per_call)
        except (ort_state.Fail, ort_state.RuntimeException) as error:  # device memory
            logger.warning("permuted copies stay on the host: the rows could not be placed "
                           "on the device (%s)", first_line(error))
            return None
