"""Dataset uploads over HTTP, both styles and both formats, and every way to get it wrong."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.db import Database
from service.tables import Blob, BlobChunk

CSV = b"age,income,city,y\n31,52000.5,Oslo,1\n45,,Lima,0\n29,41000,Oslo,1\n"


def _frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "x1": rng.normal(size=n), "x2": rng.integers(0, 9, size=n),
        "flag": rng.random(n) > 0.5, "cat": pd.Categorical(rng.choice(["a", "b"], n)),
        "y": rng.normal(size=n),
    })


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _counts(db: Database) -> tuple[int, int]:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Blob)), \
            s.scalar(select(func.count()).select_from(BlobChunk))


def assert_problem(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"/problems/{code}"
    assert len(body["detail"]) > 20 and body["detail"].endswith(".")
    return body


def test_multipart_csv_upload_returns_the_dataset(client: TestClient) -> None:
    r = client.post("/v1/datasets", files={"file": ("people.csv", CSV, "text/csv")},
                    data={"target": "y"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert r.headers["location"] == f"/v1/datasets/{ds['id']}"
    assert ds["id"].startswith("ds_") and ds["name"] == "people" and ds["format"] == "csv"
    assert ds["n_rows"] == 3 and ds["n_columns"] == 4 and ds["target"] == "y"
    assert ds["size_bytes"] == len(CSV)
    import hashlib

    assert ds["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert ds["columns"] == [
        {"name": "age", "dtype": "int", "n_missing": 0},
        {"name": "income", "dtype": "float", "n_missing": 1},
        {"name": "city", "dtype": "string", "n_missing": 0},
        {"name": "y", "dtype": "int", "n_missing": 0},
    ]
    assert ds["created_at"].endswith("Z")
    assert client.get(f"/v1/datasets/{ds['id']}").json() == ds


def test_raw_body_csv_and_parquet(client: TestClient) -> None:
    r = client.post("/v1/datasets?name=raw&target=y", content=CSV,
                    headers={"content-type": "text/csv"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "raw" and r.json()["n_rows"] == 3

    df = _frame()
    r = client.post("/v1/datasets?target=y", content=_parquet_bytes(df),
                    headers={"content-type": "application/vnd.apache.parquet"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "parquet" and ds["n_rows"] == 50
    assert [c["dtype"] for c in ds["columns"]] == ["float", "int", "bool", "category", "float"]

    r = client.post("/v1/datasets?format=parquet", content=_parquet_bytes(df),
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201 and r.json()["format"] == "parquet"


def test_multipart_parquet(client: TestClient) -> None:
    r = client.post("/v1/datasets", files={"file": ("t.parquet", _parquet_bytes(_frame(7)))})
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "parquet" and r.json()["n_rows"] == 7


def test_gzip_semicolon_and_bom_csv(client: TestClient) -> None:
    body = gzip.compress("\ufeffa;b;label\n1,5;2;x\n3;4;y\n".encode())
    r = client.post("/v1/datasets", files={"file": ("d.csv.gz", body)},
                    data={"target": "label"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert [c["name"] for c in ds["columns"]] == ["a", "b", "label"]
    assert ds["n_rows"] == 2
    rows = client.get(f"/v1/datasets/{ds['id']}/rows").json()
    assert rows["rows"] == [["1,5", 2, "x"], ["3", 4, "y"]]


def test_rows_preview_pages(client: TestClient) -> None:
    n = 1000
    text = "i,v\n" + "".join(f"{i},{i / 2}\n" for i in range(n))
    ds = client.post("/v1/datasets", files={"file": ("r.csv", text.encode())}).json()
    page = client.get(f"/v1/datasets/{ds['id']}/rows?offset=990&limit=20").json()
    assert page["columns"] == ["i", "v"]
    assert page["rows"] == [[i, i / 2] for i in range(990, 1000)]
    assert page["n_rows"] == n
    pq = client.post("/v1/datasets", files={"file": ("p.parquet", _parquet_bytes(_frame()))})
    rows = client.get(f"/v1/datasets/{pq.json()['id']}/rows?offset=48&limit=5").json()["rows"]
    assert len(rows) == 2 and len(rows[0]) == 5


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "empty_table"),
        (b"1,2,3\n4,5,6\n", "no_header"),
        (b"a,b\n1,2\n3,4,5\n", "ragged_rows"),
        (b"a,b\n", "empty_table"),
        (b"a,a\n1,2\n", "duplicate_column"),
        (b"PAR1\x00\x01garbage-not-parquetPAR1", "unreadable_table"),
    ],
)
def test_bad_tables_are_refused_and_leave_nothing(client: TestClient, db: Database,
                                                  body: bytes, code: str) -> None:
    r = client.post("/v1/datasets", files={"file": ("bad.csv", body)})
    assert_problem(r, 422, code)
    assert _counts(db) == (0, 0)
    assert client.get("/v1/datasets").json()["items"] == []


def test_unknown_target_names_the_columns(client: TestClient, db: Database) -> None:
    r = client.post("/v1/datasets", files={"file": ("a.csv", CSV)}, data={"target": "price"})
    body = assert_problem(r, 422, "unknown_target")
    assert "price" in body["detail"] and "income" in body["detail"]
    assert _counts(db) == (0, 0)


def test_wrong_content_type_is_415(client: TestClient, db: Database) -> None:
    r = client.post("/v1/datasets", content=b"<xml/>", headers={"content-type": "image/png"})
    assert_problem(r, 415, "unsupported_format")
    r = client.post("/v1/datasets?format=excel", content=CSV,
                    headers={"content-type": "text/csv"})
    assert_problem(r, 415, "unsupported_format")
    assert _counts(db) == (0, 0)


def test_oversized_upload_is_413_while_streaming(make_client: Callable[..., TestClient],
                                                 db: Database) -> None:
    client = make_client(max_upload_bytes=1000)
    big = b"a,b\n" + b"1,2\n" * 400

    def chunks():  # no Content-Length: the cap must bite while the body streams
        for i in range(0, len(big), 100):
            yield big[i:i + 100]

    r = client.post("/v1/datasets", content=chunks(), headers={"content-type": "text/csv"})
    assert_problem(r, 413, "payload_too_large")
    r = client.post("/v1/datasets", files={"file": ("big.csv", big)})
    assert_problem(r, 413, "payload_too_large")
    assert _counts(db) == (0, 0)
    tmp = client.app.state.settings.tmp_dir  # type: ignore[attr-defined]
    assert list(tmp.iterdir()) == []


def test_multipart_without_file_part_is_400(client: TestClient) -> None:
    r = client.post("/v1/datasets", data={"target": "y"}, files={"other": ("x.csv", CSV)})
    assert_problem(r, 400, "bad_request")


def test_cursor_pagination_newest_first(client: TestClient) -> None:
    ids = [client.post("/v1/datasets", files={"file": (f"d{i}.csv", CSV)}).json()["id"]
           for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        url = "/v1/datasets?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    assert_problem(client.get("/v1/datasets?cursor=%%%"), 400, "invalid_cursor")
    assert_problem(client.get("/v1/datasets?limit=501"), 422, "invalid_request")


def test_delete_removes_row_and_chunks(client: TestClient, db: Database) -> None:
    ds = client.post("/v1/datasets", files={"file": ("d.csv", CSV)}).json()
    assert _counts(db)[0] == 2, "the upload and its paging copy"
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert _counts(db) == (0, 0)
    assert_problem(client.get(f"/v1/datasets/{ds['id']}"), 404, "not_found")
    assert_problem(client.delete(f"/v1/datasets/{ds['id']}"), 404, "not_found")


def test_large_upload_spans_many_chunks(client: TestClient, db: Database) -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.normal(size=(120_000, 8)), columns=[f"c{i}" for i in range(8)])
    body = df.to_csv(index=False).encode()
    assert len(body) > 8 << 20
    r = client.post("/v1/datasets", files={"file": ("big.csv", body)})
    assert r.status_code == 201, r.text
    assert r.json()["n_rows"] == 120_000
    with db.session() as s:
        sizes = dict(s.execute(select(Blob.size_bytes, Blob.n_chunks)).all())
    assert len(sizes) == 2, "the upload and its paging copy"
    assert sizes[len(body)] == -(-len(body) // (4 << 20))
    assert _counts(db)[1] == sum(sizes.values())
    rows = client.get(f"/v1/datasets/{r.json()['id']}/rows?offset=119999&limit=5").json()
    assert rows["rows"] == [pytest.approx(df.iloc[119999].tolist())]
