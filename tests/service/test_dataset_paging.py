"""Dataset storage and row paging: blobs read back across chunk boundaries, tables larger
than one chunk, and pages whose cost does not grow with their offset."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.catalog.paging import ROW_GROUP_ROWS, paging_info, write_paging_copy
from service.catalog.service import create_dataset, table_info
from service.catalog.tables import DatasetRecord
from service.catalog.tabular import BLOCK_BYTES, inspect_table, read_rows, read_table
from service.config import Settings
from service.db import Database
from service.registry import JobKind, JobOutput, RunContext
from service.storage import CHUNK_BYTES, BlobReader, delete_blob, store_file
from service.tables import Blob, BlobChunk, Workspace
from service.uploads import ReceivedUpload
from tests.model_files import FEATURE_NAMES, SavedModel, make_data
from tests.service.jobs_testkinds import post_job, wait_final, with_test_kinds


def _stored(db: Database, tmp_path: Path, data: bytes, chunk_bytes: int) -> str:
    path = tmp_path / "blob"
    path.write_bytes(data)
    with db.session() as session:
        return store_file(session, path, sha256="", chunk_bytes=chunk_bytes).id


def _counts_in(session: Session) -> tuple[int, int]:
    return (session.scalar(select(func.count()).select_from(Blob)) or 0,
            session.scalar(select(func.count()).select_from(BlobChunk)) or 0)


def _counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        return _counts_in(session)


# -- the blob reader -----------------------------------------------------------------

def test_blob_reader_fills_reads_across_chunks(db: Database, tmp_path: Path) -> None:
    data = bytes(random.Random(0).randbytes(1000))
    reader = BlobReader(db, _stored(db, tmp_path, data, chunk_bytes=64))
    assert reader.read(300) == data[:300], "one read spans five chunks"
    assert reader.tell() == 300
    buffer = bytearray(500)
    assert reader.readinto(buffer) == 500 and bytes(buffer) == data[300:800]
    assert reader.read() == data[800:], "read() with no size reads to the end"
    assert reader.read(10) == b"" and reader.readinto(bytearray(4)) == 0
    assert reader.seek(-10, io.SEEK_END) == 990 and reader.read(100) == data[990:]
    assert reader.seek(0) == 0 and reader.readall() == data
    assert reader.seek(5) == 5 and reader.seek(70, io.SEEK_CUR) == 75
    assert reader.read(2) == data[75:77]
    assert reader.seek(2000) == 2000 and reader.read(1) == b"", "past the end reads nothing"


def test_blob_reader_agrees_with_bytesio_on_random_seeks(db: Database, tmp_path: Path
                                                         ) -> None:
    rng = random.Random(1)
    data = rng.randbytes(5000)
    reader = BlobReader(db, _stored(db, tmp_path, data, chunk_bytes=333))
    oracle = io.BytesIO(data)
    for _ in range(200):
        whence = rng.choice([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END])
        offset = {io.SEEK_SET: rng.randrange(0, 5200), io.SEEK_CUR: rng.randrange(-300, 300),
                  io.SEEK_END: rng.randrange(-5000, 10)}[whence]
        if oracle.tell() + offset < 0 and whence == io.SEEK_CUR:
            offset = -oracle.tell()
        assert reader.seek(offset, whence) == oracle.seek(offset, whence)
        size = rng.choice([-1, 0, 1, 332, 333, 334, rng.randrange(0, 2000)])
        assert reader.read(size) == oracle.read(size)
        assert reader.tell() == oracle.tell()


def test_blob_reader_refuses_a_negative_position(db: Database, tmp_path: Path) -> None:
    reader = BlobReader(db, _stored(db, tmp_path, b"abcdef", chunk_bytes=4))
    reader.seek(3)
    with pytest.raises(ValueError, match="negative"):
        reader.seek(-4, io.SEEK_CUR)
    assert reader.tell() == 3, "a refused seek leaves the position where it was"
    with pytest.raises(ValueError, match="whence"):
        reader.seek(0, 7)


# -- tables larger than one chunk ----------------------------------------------------

def _wide_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "i": np.arange(n), "x": rng.normal(size=n), "z": rng.normal(size=n),
        "k": rng.integers(0, 1_000_000, size=n), "y": rng.normal(size=n),
    })


def _parquet(frame: pd.DataFrame, **options: object) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, **options)
    return buf.getvalue()


def test_rows_of_a_parquet_dataset_larger_than_one_chunk(client: TestClient) -> None:
    """Pages of a Parquet upload that spans several 4 MiB chunks, from every row group."""
    frame = _wide_frame(300_000)
    body = _parquet(frame, row_group_size=50_000, compression=None)
    assert len(body) > 2 * CHUNK_BYTES
    r = client.post("/v1/datasets", files={"file": ("big.parquet", body)})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    for offset in (0, 49_990, 123_456, 299_995):
        page = client.get(f"/v1/datasets/{dataset_id}/rows?offset={offset}&limit=20")
        assert page.status_code == 200, page.text
        expected = frame.iloc[offset:offset + 20].to_numpy().tolist()
        assert page.json()["rows"] == expected


def test_blobs_with_uneven_chunks_are_refused(db: Database) -> None:
    from service.storage import store_chunks

    with pytest.raises(ValueError, match="only the last chunk"), db.session() as session:
        store_chunks(session, [b"ab", b"c", b"de"])
    with db.session() as session:
        blob = store_chunks(session, [b"ab", b"cd", b"e"])
    assert BlobReader(db, blob.id).read() == b"abcde"


# -- the paging copy -----------------------------------------------------------------

class _ChunkReads:
    """Counts the chunk fetches of each blob, from the SQL the database really runs."""

    def __init__(self) -> None:
        self.by_blob: dict[str, int] = {}

    def __enter__(self) -> _ChunkReads:
        event.listen(Engine, "before_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                    context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "blob_chunks" in statement:
            values = parameters.values() if isinstance(parameters, dict) else parameters
            blob_id = next(v for v in values if isinstance(v, str) and v.startswith("blob"))
            self.by_blob[blob_id] = self.by_blob.get(blob_id, 0) + 1


def _csv_body(n: int) -> tuple[bytes, pd.DataFrame]:
    frame = _wide_frame(n)
    return frame.to_csv(index=False).encode(), frame


def _record(db: Database, dataset_id: str) -> DatasetRecord:
    with db.session() as session:
        record = session.get(DatasetRecord, dataset_id)
        assert record is not None
        return record


def test_a_csv_is_paged_from_its_copy_never_from_the_upload(client: TestClient,
                                                            db: Database) -> None:
    body, frame = _csv_body(150_000)
    r = client.post("/v1/datasets", files={"file": ("big.csv", body)})
    assert r.status_code == 201, r.text
    record = _record(db, r.json()["id"])
    assert record.paging_blob_id is not None
    assert BlobReader(db, record.blob_id).read() == body, "the upload is kept as sent"
    copy = pq.ParquetFile(BlobReader(db, record.paging_blob_id))
    groups = [copy.metadata.row_group(g).num_rows for g in range(copy.num_row_groups)]
    assert sum(groups) == 150_000 and len(groups) >= 3
    assert max(groups) <= ROW_GROUP_ROWS
    with db.session() as session:
        copy_chunks = session.scalar(select(Blob.n_chunks)
                                     .where(Blob.id == record.paging_blob_id))
    for offset in (0, 65_530, 149_990):
        with _ChunkReads() as reads:
            page = client.get(f"/v1/datasets/{record.id}/rows?offset={offset}&limit=20")
        assert page.status_code == 200, page.text
        assert page.json()["rows"] == frame.iloc[offset:offset + 20].to_numpy().tolist()
        assert record.blob_id not in reads.by_blob, "a page does not scan the CSV"
        assert reads.by_blob[record.paging_blob_id] <= 5 < copy_chunks, \
            "the footer's chunk and those of at most two row groups"


def test_a_page_reads_the_same_few_chunks_at_any_offset(db: Database, tmp_path: Path
                                                        ) -> None:
    """With 64 KiB chunks and 2,048-row groups: a page reads the footer and the row
    groups that hold it, never the rest."""
    body, frame = _csv_body(60_000)
    source = tmp_path / "t.csv"
    source.write_bytes(body)
    info = inspect_table(source, "csv", max_bytes=1 << 30, max_rows=10**6)
    copy_path = tmp_path / "t.parquet"
    write_paging_copy(source, info, copy_path, max_group_rows=2048)
    copy_blob = _stored(db, tmp_path, copy_path.read_bytes(), chunk_bytes=64 << 10)
    csv_blob = _stored(db, tmp_path, body, chunk_bytes=64 << 10)
    n_chunks = -(-copy_path.stat().st_size // (64 << 10))
    fetches = {}
    for offset in (0, 1, 30_000, 59_000, 59_999):
        with _ChunkReads() as reads:
            rows = read_rows(BlobReader(db, copy_blob), paging_info(info), offset, 1000)
        assert rows == frame.iloc[offset:offset + 1000].to_numpy().tolist()
        fetches[offset] = reads.by_blob[copy_blob]
    per_group = -(-copy_path.stat().st_size // len(range(0, 60_000, 2048)))
    bound = 2 * (per_group // (64 << 10) + 2) + 1
    assert max(fetches.values()) <= bound < n_chunks / 2, fetches
    with _ChunkReads() as reads:
        read_rows(BlobReader(db, csv_blob), info, 59_000, 1000)
    assert reads.by_blob[csv_blob] > 2 * bound, "the scan it replaces reads all the file"


def test_a_parquet_upload_is_copied_only_when_its_row_groups_are_too_large(
        client: TestClient, db: Database) -> None:
    frame = _wide_frame(100_000)
    small = client.post("/v1/datasets", files={"file": ("s.parquet", _parquet(
        frame, row_group_size=20_000))}).json()
    assert _record(db, small["id"]).paging_blob_id is None
    large = client.post("/v1/datasets", files={"file": ("l.parquet", _parquet(
        frame, row_group_size=100_000))}).json()
    record = _record(db, large["id"])
    assert record.paging_blob_id is not None
    copy = pq.ParquetFile(BlobReader(db, record.paging_blob_id))
    assert copy.metadata.num_rows == 100_000
    assert max(copy.metadata.row_group(g).num_rows for g in range(copy.num_row_groups)) \
        <= ROW_GROUP_ROWS
    for dataset_id in (small["id"], large["id"]):
        page = client.get(f"/v1/datasets/{dataset_id}/rows?offset=99990&limit=50").json()
        assert page["rows"] == frame.iloc[99_990:].to_numpy().tolist()


def test_a_dataset_without_a_copy_is_still_paged(client: TestClient, db: Database) -> None:
    """Datasets stored before copies existed scan their file, as they always did."""
    body, frame = _csv_body(2000)
    dataset_id = client.post("/v1/datasets", files={"file": ("old.csv", body)}).json()["id"]
    with db.session() as session:
        record = session.get(DatasetRecord, dataset_id)
        assert record is not None and record.paging_blob_id is not None
        copy_id, record.paging_blob_id = record.paging_blob_id, None
        session.flush()
        delete_blob(session, copy_id)
    page = client.get(f"/v1/datasets/{dataset_id}/rows?offset=1995&limit=10").json()
    assert page["rows"] == frame.iloc[1995:].to_numpy().tolist()
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert _counts(db) == (0, 0)


def test_an_upload_and_its_copy_are_stored_in_the_callers_transaction(
        client: TestClient, db: Database, settings: Settings) -> None:
    """A failure after create_dataset returns rolls both blobs back; no file is left."""
    body, _ = _csv_body(1000)
    upload_path = settings.tmp_dir / "upload-test"
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    upload_path.write_bytes(body)
    upload = ReceivedUpload(path=upload_path, size_bytes=len(body),
                            sha256=hashlib.sha256(body).hexdigest(), content_type="text/csv")
    assert client.get("/v1/datasets").status_code == 200
    with db.session() as session:
        workspace_id = session.scalar(select(Workspace.id).where(Workspace.name == "default"))
    assert workspace_id is not None
    with pytest.raises(RuntimeError), db.session() as session:
        record = create_dataset(session, settings, workspace_id, upload, name=None, target=None,
                                fmt=None)
        assert record.paging_blob_id is not None and _counts_in(session) == (2, 2)
        raise RuntimeError("a later step of the same request fails")
    assert _counts(db) == (0, 0)
    assert sorted(p.name for p in settings.tmp_dir.iterdir()) == ["upload-test"], \
        "the copy's temporary file is gone"
    r = client.post("/v1/datasets", files={"file": ("d.csv", body)}, data={"target": "nope"})
    assert r.status_code == 422 and _counts(db) == (0, 0)
    assert sorted(p.name for p in settings.tmp_dir.iterdir()) == ["upload-test"]


# -- jobs read the same table from the copy ------------------------------------------

class DumpParams(BaseModel):
    out_path: str


def run_dump_table(ctx: RunContext[DumpParams]) -> JobOutput:
    """Writes the table the job got to an Arrow IPC file, types and all."""
    table = ctx.load_dataset()
    with pa.OSFile(ctx.params.out_path, "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return JobOutput(summary={"n_rows": table.num_rows})


KIND = JobKind(name="test_dump_table", params_model=DumpParams, needs_model=False,
               check=lambda ctx: None,
               estimate=lambda ctx: {"rows_to_predict": 0, "seconds": 0.1},
               run=run_dump_table)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The service tests' settings, with this module's kind registered too."""
    return with_test_kinds(settings, __name__)


def _mixed_csv(n: int) -> bytes:
    """Every column type the CSV reader gives, with missing values, over many blocks."""
    lines = ["i,f,b,s,ts,d,e"]
    for i in range(n):
        lines.append(",".join([
            str(i), "" if i % 7 == 0 else f"{i / 3:.6f}", "true" if i % 3 else "false",
            "" if i % 5 == 0 else f"name {i % 97}",
            f"2024-01-{1 + i % 28:02d} 03:04:{i % 60:02d}", f"2023-{1 + i % 12:02d}-15",
            "",
        ]))
    return ("\n".join(lines) + "\n").encode()


def _dump_job(client: TestClient, db: Database, dataset_id: str, out: Path) -> pa.Table:
    job_id = post_job(client, "test_dump_table", dataset_id, out_path=str(out))["id"]
    assert wait_final(db, job_id, timeout=60).status == "succeeded", \
        client.get(f"/v1/jobs/{job_id}").json()
    with pa.memory_map(str(out)) as source:
        return pa.ipc.open_file(source).read_all()


def test_jobs_read_the_copy_with_the_values_and_types_of_the_csv(
        worker_client: tuple[TestClient, Database], db: Database, tmp_path: Path) -> None:
    client, _ = worker_client
    body = _mixed_csv(80_000)
    assert len(body) > 3 * BLOCK_BYTES
    dataset_id = client.post("/v1/datasets", files={"file": ("m.csv", body)}).json()["id"]
    record = _record(db, dataset_id)
    source = tmp_path / "m.csv"
    source.write_bytes(body)
    expected = read_table(source, table_info(record))
    assert {str(t) for t in expected.schema.types} >= {
        "int64", "double", "bool", "string", "timestamp[s]", "date32[day]"}
    assert record.paging_blob_id is not None
    from_copy = _dump_job(client, db, dataset_id, tmp_path / "copy.arrow")
    assert from_copy.schema.equals(expected.schema, check_metadata=True)
    assert from_copy.equals(expected)
    pages = [client.get(f"/v1/datasets/{dataset_id}/rows?offset={offset}&limit=30").json()
             for offset in (0, 79_980)]

    with db.session() as session:  # as stored before copies existed
        stored = session.get(DatasetRecord, dataset_id)
        assert stored is not None
        copy_id, stored.paging_blob_id = stored.paging_blob_id, None
        session.flush()
        delete_blob(session, copy_id)
    from_csv = _dump_job(client, db, dataset_id, tmp_path / "csv.arrow")
    assert from_csv.schema.equals(expected.schema, check_metadata=True)
    assert from_csv.equals(expected)
    assert pages == [
        client.get(f"/v1/datasets/{dataset_id}/rows?offset={offset}&limit=30").json()
        for offset in (0, 79_980)], "pages of the copy are the pages of the scan"
    day, second = 1 + 79_999 % 28, 79_999 % 60
    assert pages[1]["rows"][-1][4] == f"2024-01-{day:02d}T03:04:{second:02d}"


def test_permutation_job_on_a_parquet_dataset_larger_than_one_chunk(
        worker_client: tuple[TestClient, Database], db: Database,
        saved_models: dict[str, SavedModel]) -> None:
    from sklearn.inspection import permutation_importance

    client, _ = worker_client
    X, y = make_data(n=120_000)
    frame = pd.DataFrame(X, columns=FEATURE_NAMES)
    frame["y"] = y["regression"]
    body = _parquet(frame, row_group_size=30_000, compression=None)
    assert len(body) > CHUNK_BYTES
    dataset_id = client.post("/v1/datasets", files={"file": ("p.parquet", body)},
                             data={"target": "y"}).json()["id"]
    saved = saved_models["sklearn_hgb_regression"]
    model_id = client.post("/v1/models", files={"file": (
        saved.path.name, saved.path.read_bytes())}).json()["id"]
    job_id = client.post("/v1/jobs", json={
        "kind": "permutation_importance", "model_id": model_id, "dataset_id": dataset_id,
        "params": {"n_repeats": 2}}).json()["id"]
    assert wait_final(db, job_id, timeout=120).status == "succeeded", \
        client.get(f"/v1/jobs/{job_id}").json()
    summary = client.get(f"/v1/jobs/{job_id}/result").json()
    reference = permutation_importance(saved.native, frame[FEATURE_NAMES], frame["y"],
                                       scoring="r2", n_repeats=2, random_state=0)
    by_name = {item["feature"]: item for item in summary["importances"]}
    for j, name in enumerate(FEATURE_NAMES):
        np.testing.assert_allclose(by_name[name]["values"], reference.importances[j],
                                   atol=1e-9)


def test_a_copy_written_while_columns_widen_has_the_wider_types(
        worker_client: tuple[TestClient, Database], db: Database, tmp_path: Path) -> None:
    """The copy comes from the inspecting scan; a late value past the first block makes
    the scan start again with wider types, and the copy with it."""
    client, _ = worker_client
    n = 200_000
    lines = ["i,x,s,e"] + [f"{k},{k % 11},{k % 13},{'' if k % 2 else k}" for k in range(n)]
    lines[n - 5] = f"{n - 6},1.5,abc,"  # int -> double, int -> string, past the first block
    body = ("\n".join(lines) + "\n").encode()
    assert len(body) > 2 * BLOCK_BYTES
    dataset_id = client.post("/v1/datasets", files={"file": ("w.csv", body)}).json()["id"]
    record = _record(db, dataset_id)
    info = table_info(record)
    assert info.column_types is not None
    assert (info.column_types["x"], info.column_types["s"]) == ("double", "string")
    source = tmp_path / "w.csv"
    source.write_bytes(body)
    expected = read_table(source, info)
    from_copy = _dump_job(client, db, dataset_id, tmp_path / "copy.arrow")
    assert from_copy.schema.equals(expected.schema)
    assert from_copy.equals(expected)
    page = client.get(f"/v1/datasets/{dataset_id}/rows?offset={n - 6}&limit=3").json()
    assert page["rows"][0][1:3] == [1.5, "abc"]
