"""ONNX models and column names.

An ONNX graph takes one tensor [rows, F]; its input's name ("X", "float_input") names no
column, so without names a dataset can only be matched by position, and a table whose
columns are in another order feeds the wrong inputs without any error. Names come from
the upload (feature_names) or from the file's metadata_props; otherwise the model must
be uploaded with by_position to be used at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pyarrow as pa
import pytest
from numpy.testing import assert_array_equal

from models.errors import FeatureNamesRequired, InvalidModel
from models.features import build_matrix, check_compatible
from models.inspection import describe_model
from models.loading import ONNX_NAMES_KEY, load_model
from tests.model_files import FEATURE_NAMES, SavedModel

COLUMNS = [(name, "float") for name in FEATURE_NAMES] + [("y", "float")]


def _with_metadata(saved: SavedModel, tmp_path: Path, value: str) -> Path:
    proto = onnx.load_model(str(saved.path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_NAMES_KEY, value
    path = tmp_path / "named.onnx"
    onnx.save_model(proto, str(path))
    return path


def test_an_onnx_model_without_names_is_refused_unless_by_position(
        saved_models: dict[str, SavedModel]) -> None:
    saved = saved_models["onnx_mlp_regression"]
    model = load_model(saved.path, format="onnx")
    graph_input = model.native.get_inputs()[0]
    assert model.feature_names is None and graph_input.shape[1] == len(FEATURE_NAMES)
    info = describe_model(str(saved.path))
    assert info.feature_names is None and "columns_by_position" not in info.details
    with pytest.raises(FeatureNamesRequired, match="by_position=true") as error:
        check_compatible(COLUMNS, info, target="y")
    assert error.value.code == "feature_names_required" and error.value.status == 422
    assert "feature_names" in str(error.value) and "metadata_props" in str(error.value)

    opted = describe_model(str(saved.path), by_position=True)
    assert opted.details["columns_by_position"] is True
    reordered = COLUMNS[::-1]
    assert check_compatible(reordered, opted, target="y") == FEATURE_NAMES[::-1]


def test_names_in_the_onnx_metadata_match_columns_by_name(
        saved_models: dict[str, SavedModel], tmp_path: Path) -> None:
    saved = saved_models["onnx_mlp_regression"]
    path = _with_metadata(saved, tmp_path, json.dumps(FEATURE_NAMES))
    info = describe_model(str(path))
    assert info.feature_names == FEATURE_NAMES
    X = saved.X[:20]
    # The table's columns in reverse order: matched by name, the model sees its order.
    table = pa.table({name: X[:, j] for j, name in reversed(list(enumerate(FEATURE_NAMES)))})
    matrix = build_matrix(table, info, target=None)
    assert_array_equal(matrix, X)
    assert_array_equal(load_model(path, format="onnx").predict(matrix),
                       load_model(saved.path, format="onnx").predict(X))


@pytest.mark.parametrize("value", ["not json", json.dumps(["a", "b"]),
                                   json.dumps(["a", "a", "b", "c", "d"]), json.dumps({"a": 1})])
def test_bad_names_in_the_onnx_metadata_are_refused(
        saved_models: dict[str, SavedModel], tmp_path: Path, value: str) -> None:
    path = _with_metadata(saved_models["onnx_mlp_regression"], tmp_path, value)
    with pytest.raises(InvalidModel, match=ONNX_NAMES_KEY):
        load_model(path, format="onnx")


def test_by_position_is_refused_for_a_model_with_names(
        saved_models: dict[str, SavedModel]) -> None:
    saved = saved_models["onnx_mlp_regression"]
    with pytest.raises(InvalidModel, match="by_position"):
        describe_model(str(saved.path), feature_names=FEATURE_NAMES, by_position=True)
    with pytest.raises(InvalidModel, match="by_position"):
        describe_model(str(saved_models["xgboost_regression_json"].path), by_position=True)


def test_models_of_other_formats_without_names_still_match_by_position(
        saved_models: dict[str, SavedModel]) -> None:
    info = describe_model(str(saved_models["sklearn_dt_regression"].path))
    assert info.feature_names is None
    assert check_compatible(COLUMNS, info, target="y") == FEATURE_NAMES
