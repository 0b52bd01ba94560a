"""models.versions reads what is installed, as the libraries themselves report it."""

from __future__ import annotations

import platform
from importlib import metadata

import numpy as np
import pyarrow as pa
import sklearn

from explainers.permutation import _versions as permutation_versions
from models.versions import installed_versions
from service.jobs.worker import _versions as worker_versions
from service.methods.inputs import provenance


def test_versions_are_the_libraries_own_in_the_order_asked() -> None:
    found = installed_versions("pyarrow", "numpy", "scikit-learn")
    assert list(found) == ["pyarrow", "numpy", "scikit-learn"]
    assert found == {"pyarrow": pa.__version__, "numpy": np.__version__,
                     "scikit-learn": sklearn.__version__}


def test_a_distribution_not_installed_is_none() -> None:
    assert installed_versions("tabxai-no-such-distribution") == {
        "tabxai-no-such-distribution": None}


def test_each_caller_keeps_its_keys() -> None:
    assert list(worker_versions()) == ["tabxai", "python", "numpy", "pyarrow"]
    assert worker_versions()["python"] == platform.python_version()
    assert worker_versions()["numpy"] == np.__version__
    assert worker_versions()["pyarrow"] == pa.__version__
    assert list(provenance(seed=3)) == ["library_versions", "seed"]
    assert list(provenance()["library_versions"]) == ["numpy", "xgboost", "lightgbm",
                                                      "scikit-learn"]
    expected = {}
    for name in ("numpy", "scikit-learn", "xgboost", "lightgbm", "onnxruntime"):
        try:
            expected[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    assert permutation_versions() == expected
