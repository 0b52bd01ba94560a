"""Permuted copies of the rows, built inside an ONNX graph next to the model.

Permutation importance predicts on the same rows many times, each time with one column
(or a group of columns) taken from a permutation of the rows. On a GPU, building each
copy on the host and sending it costs far more than the model's own work (an MLP on
50,000 rows takes well under a millisecond on a current GPU; the copy, its conversion
and its transfer several). So the rows and the permutations go to the device once, and
a few nodes in front of the model build the copies there:

    rows   = Gather(X, base)            [m, F]     the rows scored, unpermuted
    moved  = Gather(X, permuted)        [k, m, F]  the same rows of k permutations
    input  = Reshape(Where(mask, moved, rows), [-1, F])

``mask`` [F] marks the permuted columns; ``Where`` picks values, it does no arithmetic,
so every row reaching the model holds exactly the values a copy made on the host would
(NaN and infinities included). The model then runs on k x m rows at once. The graph's
own input keeps its name (it becomes the Reshape's output), so nodes and subgraphs that
read it are untouched; only the prediction output is kept.

Used by ``explainers.permutation`` for ONNX models whose batch size is free; a graph this
cannot wrap (an old opset, a name taken) returns None and the caller predicts as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["permuting_graph", "PermutedRuns"]

logger = logging.getLogger(__name__)

X_NAME = "tabxai_permute_rows"
BASE_NAME = "tabxai_permute_base"
PERMUTED_NAME = "tabxai_permute_index"
MASK_NAME = "tabxai_permute_mask"
_NODE_NAMES = ("tabxai_permute_shape", "tabxai_permute_unmoved", "tabxai_permute_moved",
               "tabxai_permute_where")

# Where with a bool condition and float inputs is in the default domain from opset 9.
MIN_OPSET = 9


def permuting_graph(model_bytes: bytes, input_name: str, output_name: str,
                    n_features: int, dtype: np.dtype) -> bytes | None:
    """The model with permuted copies built in front of it (see the module), or None."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load_model_from_string(model_bytes)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    if opset < MIN_OPSET:
        return None
    graph = proto.graph
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {i.name for i in graph.input} | {i.name for i in graph.initializer}
    if taken & {X_NAME, BASE_NAME, PERMUTED_NAME, MASK_NAME, *_NODE_NAMES}:
        return None
    originals = [i for i in graph.input if i.name == input_name]
    outputs = [o for o in graph.output if o.name == output_name]
    if len(originals) != 1 or len(outputs) != 1:
        return None
    elem = TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT
    graph.input.remove(originals[0])
    graph.input.extend([
        helper.make_tensor_value_info(X_NAME, elem, ["n", n_features]),
        helper.make_tensor_value_info(BASE_NAME, TensorProto.INT64, ["m"]),
        helper.make_tensor_value_info(PERMUTED_NAME, TensorProto.INT64, ["k", "m"]),
        helper.make_tensor_value_info(MASK_NAME, TensorProto.BOOL, [n_features]),
    ])
    graph.initializer.append(
        helper.make_tensor(_NODE_NAMES[0], TensorProto.INT64, [2], [-1, n_features]))
    front = [
        helper.make_node("Gather", [X_NAME, BASE_NAME], [_NODE_NAMES[1]], axis=0),
        helper.make_node("Gather", [X_NAME, PERMUTED_NAME], [_NODE_NAMES[2]], axis=0),
        helper.make_node("Where", [MASK_NAME, _NODE_NAMES[2], _NODE_NAMES[1]],
                         [_NODE_NAMES[3]]),
        helper.make_node("Reshape", [_NODE_NAMES[3], _NODE_NAMES[0]], [input_name]),
    ]
    for position, node in enumerate(front):
        graph.node.insert(position, node)
    kept = outputs[0]
    del graph.output[:]
    graph.output.append(kept)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        logger.info("permuted copies stay on the host: the wrapped graph does not check "
                    "(%s)", str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None
    return proto.SerializeToString()


class PermutedRuns:
    """Predictions on permuted copies of ``X``'s rows, run by a session of the wrapped graph.

    session: an onnxruntime session of :func:`permuting_graph`'s graph.
    X: [n, F] in the graph's input dtype; sent to the session's device once.
    base: row indices scored [m] (every row, or a subsample).
    permutations: per repeat, the rows [m] whose values replace the permuted columns
        (``base[perm]`` in scikit-learn's terms); sent once.
    rows_per_call: rows reaching the model per call (k x m, or part of m).
    """

    def __init__(self, session: Any, output_name: str, X: np.ndarray,
                 base: npt.NDArray[np.intp], permutations: Sequence[npt.NDArray[np.intp]],
                 *, device: str, rows_per_call: int) -> None:
        import onnxruntime

        self._session = session
        self._output = output_name
        self._n_features = X.shape[1]
        self._m = int(base.shape[0])
        self._k = len(permutations)
        ort_device = "cuda" if device == "cuda" else "cpu"

        def on_device(array: np.ndarray) -> Any:
            return onnxruntime.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(array), ort_device, 0)

        X_on_device = on_device(X)
        stacked = np.asarray(permutations, dtype=np.int64).reshape(self._k, self._m)
        base64 = np.asarray(base, dtype=np.int64)
        # calls: (first repeat, repeats, rows, binding); each binding holds its inputs on
        # the device for good, and only the mask changes between features
        self._calls: list[tuple[int, int, int, Any]] = []
        self._kept: list[Any] = [X_on_device]  # the bound device memory, kept alive

        def add(first: int, k: int, base_part: np.ndarray, permuted: np.ndarray) -> None:
            base_value, permuted_value = on_device(base_part), on_device(permuted)
            self._kept += [base_value, permuted_value]
            binding = session.io_binding()
            binding.bind_ortvalue_input(X_NAME, X_on_device)
            binding.bind_ortvalue_input(BASE_NAME, base_value)
            binding.bind_ortvalue_input(PERMUTED_NAME, permuted_value)
            self._calls.append((first, k, base_part.shape[0], binding))

        if self._m <= rows_per_call:
            per_call = max(1, rows_per_call // max(self._m, 1))
            for r in range(0, self._k, per_call):
                k = min(per_call, self._k - r)
                add(r, k, base64, stacked[r:r + k])
        else:
            for r in range(self._k):
                for a in range(0, self._m, rows_per_call):
                    b = min(a + rows_per_call, self._m)
                    add(r, 1, base64[a:b], stacked[r:r + 1, a:b])

    def run(self, cols: Sequence[int]) -> list[npt.NDArray[np.float64]]:
        """The model's output, float64 [m, width], for each repeat with ``cols`` permuted."""
        mask = np.zeros(self._n_features, dtype=np.bool_)
        mask[list(cols)] = True
        results: list[list[np.ndarray]] = [[] for _ in range(self._k)]
        for first, k, m, binding in self._calls:
            binding.bind_cpu_input(MASK_NAME, mask)
            binding.bind_output(self._output, "cpu")
            self._session.run_with_iobinding(binding)
            out = np.asarray(binding.copy_outputs_to_cpu()[0]).reshape(k, m, -1)
            binding.clear_binding_outputs()
            for j in range(k):
                results[first + j].append(out[j])
        return [np.concatenate(parts, axis=0).astype(np.float64, copy=False)
                for parts in results]
