"""The registry of job kinds is filled only at start-up, from the settings: importing a
method registers nothing, TABXAI_EXTRA_KINDS adds a module's kinds, and a module that
gives none stops the process before it serves."""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from service import cli
from service.app import create_app
from service.config import Settings
from service.methods import tree_shap
from service.registry import (
    DatasetInfo,
    KindRegistry,
    KindRegistryError,
    RunContext,
    find_kind,
)
from service.startup import BUILTIN_KIND_MODULES, method_registry, register_methods
from tests.service.jobs_testkinds import KINDS as TEST_KINDS
from tests.service.jobs_testkinds import MODULE, upload_dataset

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ["feature_vectors", "permutation_importance", "rashomon_interactions", "tree_shap"]
TEST_NAMES = sorted(kind.name for kind in TEST_KINDS)


def test_importing_the_methods_registers_nothing() -> None:
    registry = KindRegistry()
    for module in (*BUILTIN_KIND_MODULES, MODULE):
        importlib.import_module(module)
    assert len(registry) == 0 and registry.names() == []
    # The test kinds are imported in this process, yet only settings that name them
    # register them.
    assert method_registry(Settings(extra_kinds=())).names() == BUILTIN
    assert [importlib.import_module(m).KIND.name for m in BUILTIN_KIND_MODULES] == [
        "tree_shap", "permutation_importance", "feature_vectors", "rashomon_interactions"]


def test_an_app_knows_only_the_kinds_its_settings_name(
        make_client: Callable[..., TestClient]) -> None:
    plain = make_client(extra_kinds=())
    dataset_id = upload_dataset(plain)
    response = plain.post("/v1/jobs", json={"kind": "test_sleep", "dataset_id": dataset_id})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "unknown_kind"
    assert body["detail"] == ("There is no job kind 'test_sleep'; the kinds are: "
                              f"{', '.join(BUILTIN)}.")
    with_tests = make_client(extra_kinds=(MODULE,))
    assert sorted(with_tests.app.state.kinds.names()) == sorted(  # type: ignore[attr-defined]
        BUILTIN + TEST_NAMES)
    response = with_tests.post("/v1/jobs?dry_run=true",
                               json={"kind": "test_sleep", "dataset_id": dataset_id})
    assert response.status_code == 200, response.text


def test_extra_kinds_add_each_module_s_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABXAI_EXTRA_KINDS", f" {MODULE} , tests.service.test_dataset_paging,")
    settings = Settings()
    assert settings.extra_kinds == (MODULE, "tests.service.test_dataset_paging")
    registry = register_methods(KindRegistry(), settings)
    assert registry.names() == sorted([*BUILTIN, *TEST_NAMES, "test_dump_table"])
    assert registry.module_of("tree_shap") == "service.methods.tree_shap"
    assert registry.module_of("test_sleep") == MODULE
    assert registry.module_of("test_dump_table") == "tests.service.test_dataset_paging"
    # The worker preloads these into its fork server: built-ins first, each once.
    assert registry.modules() == [*BUILTIN_KIND_MODULES, MODULE,
                                  "tests.service.test_dataset_paging"]
    # Registering again from the same modules changes nothing.
    assert register_methods(registry, settings).names() == registry.names()


def test_a_job_process_finds_its_kind_in_the_module_the_registry_names() -> None:
    registry = method_registry(Settings(extra_kinds=(MODULE,)))
    kind = find_kind(registry.module_of("test_fail"), "test_fail")
    assert kind is registry.get("test_fail")
    with pytest.raises(KindRegistryError, match="defines no job kind 'tree_shap'"):
        find_kind(MODULE, "tree_shap")


@pytest.mark.parametrize(("module", "message"), [
    ("tests.no_such_module", "TABXAI_EXTRA_KINDS: cannot import the job kind module "
                             "'tests.no_such_module': No module named 'tests.no_such_module'"),
    ("service.methods.inputs", "TABXAI_EXTRA_KINDS: the module 'service.methods.inputs' "
                               "defines no job kind: give it KIND = JobKind(...) or KINDS"),
])
def test_an_extra_module_without_kinds_is_a_start_up_error(
        module: str, message: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, extra_kinds=(module,))
    with pytest.raises(KindRegistryError, match=re.escape(message)):
        method_registry(settings)
    with pytest.raises(KindRegistryError, match=re.escape(message)):
        create_app(settings, migrate=False)


def test_a_kind_name_taken_by_another_module_is_a_start_up_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = types.ModuleType("tabxai_test_plugin")
    plugin.KINDS = [replace(tree_shap.KIND)]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tabxai_test_plugin", plugin)
    with pytest.raises(KindRegistryError, match=re.escape(
            "TABXAI_EXTRA_KINDS: the job kind 'tree_shap' of tabxai_test_plugin is already "
            "registered by service.methods.tree_shap")):
        method_registry(Settings(extra_kinds=("tabxai_test_plugin",)))
    plugin.KINDS = ["tree_shap"]  # type: ignore[attr-defined]
    with pytest.raises(KindRegistryError, match="gives 'tree_shap' as a job kind"):
        method_registry(Settings(extra_kinds=("tabxai_test_plugin",)))


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_the_commands_refuse_to_start_without_their_kinds(
        command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TABXAI_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TABXAI_DATABASE_URL", raising=False)
    monkeypatch.setenv("TABXAI_EXTRA_KINDS", "tests.no_such_module")
    assert cli.main([command]) == 2
    assert not (tmp_path / "tabxai.db").exists(), "it stopped before the database"
    assert capsys.readouterr().err.strip() == (
        "tabxai: TABXAI_EXTRA_KINDS: cannot import the job kind module "
        "'tests.no_such_module': No module named 'tests.no_such_module'")


def test_the_readme_s_example_kind_registers_and_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(# column_means\.py.*?)```", readme, re.DOTALL)
    assert code is not None, "the README has no example kind"
    (tmp_path / "column_means.py").write_text(code.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "column_means", raising=False)
    kind = method_registry(Settings(extra_kinds=("column_means",))).get("column_means")
    assert kind is not None
    table = pa.table({"a": [1, 2, 3, 6], "b": [0.5, None, 1.5, 1.0], "s": list("wxyz")})

    class Resources:
        def load_dataset(self) -> pa.Table:
            return table

        def load_model(self) -> Any:
            raise AssertionError("the kind uses no model")

        def array_writer(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the kind writes no array")

    dataset = DatasetInfo(id="ds_x", name="t", n_rows=4, target=None, columns=())
    context: RunContext[Any] = RunContext(
        job_id="job_x", attempt=1, params=kind.params_model(), device="cpu", dataset=dataset,
        model=None, n_threads=1, memory_limit_bytes=1 << 30, tmp_dir=tmp_path,
        progress=lambda fraction, stage: None, resources=Resources())
    output = kind.run(context)
    assert output.summary == {"columns": 2}
    np.testing.assert_allclose(output.arrays["means"], [3.0, 1.0])
    assert [axis.labels for axis in output.array_dims["means"]] == [("a", "b")]
