"""Dataset storage and row paging: blobs read back across chunk boundaries, tables larger
than one chunk, and pages whose cost does not grow with their offset."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.db import Database
from service.storage import CHUNK_BYTES, BlobReader, store_file


def _stored(db: Database, tmp_path: Path, data: bytes, chunk_bytes: int) -> str:
    path = tmp_path / "blob"
    path.write_bytes(data)
    with db.session() as session:
        return store_file(session, path, sha256="", chunk_bytes=chunk_bytes).id


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
