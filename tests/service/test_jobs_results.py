"""Results of a real job: summary, arrays as JSON pages and streamed downloads, plots."""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.config import Settings
from service.db import Database
from service.results.tables import ArrayChunk, PlotImage
from service.tables import Blob
from tests.service.jobs_testkinds import (
    CUBE,
    fast_settings,
    post_job,
    running_worker,
    upload_dataset,
    values_matrix,
    wait_final,
)

N_ROWS = 70_000  # two chunks of the [N, 3] float32 array (65,536 rows per chunk)


@pytest.fixture
def job_id(client: TestClient, db: Database, settings: Settings) -> str:
    dataset_id = upload_dataset(client, n_rows=9)
    job = post_job(client, "test_arrays", dataset_id, n_rows=N_ROWS)
    with running_worker(db, fast_settings(settings)):
        assert wait_final(db, job["id"], timeout=60).status == "succeeded"
    return str(job["id"])


def test_summary_and_array_list(client: TestClient, job_id: str) -> None:
    summary = client.get(f"/v1/jobs/{job_id}/result").json()
    assert summary["n_rows"] == N_ROWS and summary["dataset_rows"] == 9
    assert summary["provenance"]["kind"] == "test_arrays"
    listing = client.get(f"/v1/jobs/{job_id}/result/arrays").json()
    assert [(a["name"], a["shape"], a["dtype"]) for a in listing] == [
        ("cube", [4, 2, 3], "float32"), ("row_index", [4], "int64"),
        ("values", [N_ROWS, 3], "float32")]


def test_pages_cross_chunk_boundaries(client: TestClient, job_id: str) -> None:
    url = f"/v1/jobs/{job_id}/result/arrays/values"
    page = client.get(f"{url}?offset=65530&limit=12").json()
    assert page["name"] == "values" and page["shape"] == [N_ROWS, 3]
    assert page["offset"] == 65530 and page["limit"] == 12
    assert page["rows"] == values_matrix(12, 3, start=65530).tolist()
    assert client.get(f"{url}?offset={N_ROWS - 1}&limit=5").json()["rows"] == \
        values_matrix(1, 3, start=N_ROWS - 1).tolist()
    assert client.get(f"{url}?offset={N_ROWS}").json()["rows"] == []
    cube = client.get(f"/v1/jobs/{job_id}/result/arrays/cube").json()["rows"]
    assert cube == CUBE.tolist()
    assert client.get(f"{url}?limit=5000").status_code == 422
    problem = client.get(f"/v1/jobs/{job_id}/result/arrays/nope")
    assert problem.status_code == 404 and problem.json()["code"] == "unknown_array"
    assert "values" in problem.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}/result/arrays/nope.parquet").status_code == 404


def test_npy_round_trips(client: TestClient, job_id: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}/result/arrays/values.npy")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert "attachment" in response.headers["content-disposition"]
    values = np.load(io.BytesIO(response.content))
    assert values.dtype == np.float32 and values.shape == (N_ROWS, 3)
    np.testing.assert_array_equal(values, values_matrix(N_ROWS, 3))
    index = np.load(io.BytesIO(client.get(
        f"/v1/jobs/{job_id}/result/arrays/row_index.npy").content))
    assert index.dtype == np.int64 and index.tolist() == [0, 1, 2, 3]


def test_parquet_wide_and_long(client: TestClient, job_id: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}/result/arrays/values.parquet")
    assert response.status_code == 200
    parquet = pq.ParquetFile(io.BytesIO(response.content))
    assert parquet.num_row_groups == 2, "a row group per stored chunk"
    table = parquet.read()
    assert table.column_names == ["row", "f0", "f1", "f2"]
    assert table.schema.field("f1").type == pa.float32()
    assert table["row"].to_pylist() == list(range(N_ROWS))
    np.testing.assert_array_equal(
        np.column_stack([table[c].to_numpy() for c in ("f0", "f1", "f2")]),
        values_matrix(N_ROWS, 3))
    cube = pq.read_table(io.BytesIO(client.get(
        f"/v1/jobs/{job_id}/result/arrays/cube.parquet").content))
    assert cube.column_names == ["row", "output", "feature", "value"]
    assert cube.num_rows == CUBE.size
    first = cube.slice(0, 4).to_pylist()
    assert first[:4] == [
        {"row": 0, "output": 0, "feature": "a", "value": 0.0},
        {"row": 0, "output": 0, "feature": "b", "value": 0.25},
        {"row": 0, "output": 0, "feature": "c", "value": 0.5},
        {"row": 0, "output": 1, "feature": "a", "value": 0.75}]
    assert cube["value"].to_pylist() == CUBE.reshape(-1).tolist()


def test_csv(client: TestClient, job_id: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}/result/arrays/values.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["row", "f0", "f1", "f2"] and len(rows) == N_ROWS + 1
    assert [float(v) for v in rows[65_537][1:]] == values_matrix(1, 3, 65_536)[0].tolist()
    index = list(csv.reader(io.StringIO(client.get(
        f"/v1/jobs/{job_id}/result/arrays/row_index.csv").text)))
    assert index == [["row", "value"], ["0", "0"], ["1", "1"], ["2", "2"], ["3", "3"]]


def test_plots_render_and_are_cached(client: TestClient, db: Database, job_id: str) -> None:
    assert client.get(f"/v1/jobs/{job_id}/plots").json() == ["values"]
    svg = client.get(f"/v1/jobs/{job_id}/plots/values.svg")
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert svg.content.lstrip().startswith(b"<?xml") and b"<svg" in svg.content
    png = client.get(f"/v1/jobs/{job_id}/plots/values.png?column=2")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert client.get(f"/v1/jobs/{job_id}/plots/values.svg").content == svg.content
    with db.session() as session:
        cached = session.scalar(select(func.count()).select_from(PlotImage))
    assert cached == 2
    for path, status, code in (("never.svg", 404, "unknown_plot"),
                               ("nope.png", 404, "unknown_plot"),
                               ("values.svg?column=x", 422, "invalid_plot_options"),
                               ("values.svg?column=9", 422, "invalid_plot_options")):
        problem = client.get(f"/v1/jobs/{job_id}/plots/{path}")
        assert problem.status_code == status and problem.json()["code"] == code, path
        assert problem.headers["content-type"] == "application/problem+json"


def test_deleting_the_job_deletes_its_arrays(client: TestClient, db: Database,
                                             job_id: str) -> None:
    client.get(f"/v1/jobs/{job_id}/plots/values.svg")
    with db.session() as session:
        blobs_with_result = session.scalar(select(func.count()).select_from(Blob))
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ArrayChunk)) == 0
        assert session.scalar(select(func.count()).select_from(PlotImage)) == 0
        blobs = session.scalar(select(func.count()).select_from(Blob))
    assert blobs_with_result is not None and blobs == 2, \
        "only the dataset's blobs are left: its upload and its paging copy"
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 404
