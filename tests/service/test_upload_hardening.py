"""Hostile and odd uploads: every one is a clear 4xx that stores nothing, never a 500."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.db import Database
from tests.model_files import SavedModel
from tests.service.test_datasets import _counts, _parquet_bytes, assert_problem


def _assert_nothing_stored(client: TestClient, db: Database) -> None:
    assert _counts(db) == (0, 0)
    assert client.get("/v1/datasets").json()["items"] == []
    assert client.get("/v1/models").json()["items"] == []
    tmp = client.app.state.settings.tmp_dir  # type: ignore[attr-defined]
    assert list(tmp.iterdir()) == []


def _gzip_members(chunk: bytes, copies: int, head: bytes = b"") -> bytes:
    """A gzip file of ``head + chunk * copies``, cheap to make: members concatenate."""
    return gzip.compress(head, 9) + gzip.compress(chunk, 9) * copies


# -- CSV header and text --------------------------------------------------------------

@pytest.mark.parametrize("body", [b"\na,b\n1,2\n", b"\r\na,b\n1,2\n", b"  \na,b\n1,2\n",
                                  gzip.compress(b"\na,b\n1,2\n")])
def test_csv_whose_first_line_is_empty_is_422(client: TestClient, db: Database,
                                              body: bytes) -> None:
    problem = assert_problem(client.post("/v1/datasets", files={"file": ("e.csv", body)}),
                             422, "no_header")
    assert "first line" in problem["detail"] and "header" in problem["detail"]
    _assert_nothing_stored(client, db)


@pytest.mark.parametrize(
    ("body", "bad", "line"),
    [
        (b"a\xff,b\n1,2\n", b"\xff", 1),                        # in the header
        (b"a,b\n1,2\n3,x\xe9y\n", b"\xe9", 3),                   # latin-1 in a data row
        (b"a,b\n1,2\n3,\xc3", b"\xc3", 3),                       # cut inside a character
        (b"a,b\n" + b"1,xy\n" * 400_000 + b"2,\xff\n", b"\xff", 400_002),  # past the sample
    ],
)
def test_csv_that_is_not_utf8_names_where(client: TestClient, db: Database, body: bytes,
                                          bad: bytes, line: int) -> None:
    offset = body.index(bad)
    for name, data in (("t.csv", body), ("t.csv.gz", gzip.compress(body, 1))):
        problem = assert_problem(client.post("/v1/datasets", files={"file": (name, data)}),
                                 422, "not_utf8")
        assert f"byte {offset:,}" in problem["detail"], problem["detail"]
        assert f"line {line:,}" in problem["detail"], problem["detail"]
        assert "UTF-8" in problem["detail"]
    _assert_nothing_stored(client, db)


def test_header_longer_than_64_kib_is_read_whole(client: TestClient) -> None:
    names = [f"feature_{i:06d}" for i in range(8000)]  # 120 KiB of header
    header = ",".join(names).encode()
    assert len(header) > 100 << 10
    rows = b"".join(",".join(str(i + r) for i in range(8000)).encode() + b"\n" for r in range(3))
    r = client.post("/v1/datasets", files={"file": ("wide.csv", header + b"\n" + rows)})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["n_columns"] == 8000 and ds["n_rows"] == 3
    assert [c["name"] for c in ds["columns"]] == names
    assert {c["dtype"] for c in ds["columns"]} == {"int"}


def test_header_longer_than_a_read_block(client: TestClient) -> None:
    long_names = ["a" * (700 << 10), "b" * (700 << 10), "y"]  # 1.4 MiB, beyond one block
    body = (",".join(long_names) + "\n1,2.5,x\n3,4,y\n").encode()
    r = client.post("/v1/datasets", files={"file": ("long.csv", body)}, data={"target": "y"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert [c["name"] for c in ds["columns"]] == long_names
    assert [c["dtype"] for c in ds["columns"]] == ["int", "float", "string"]
    rows = client.get(f"/v1/datasets/{ds['id']}/rows").json()
    assert rows["rows"] == [[1, 2.5, "x"], [3, 4.0, "y"]]


# -- type widening past the first block -----------------------------------------------

_LATE = 400_000  # rows of "x,1": 1.6 MB, well past the 1 MiB block that types are read from


@pytest.mark.parametrize(
    ("late", "dtype", "last"),
    [
        (b"y,1.5\n", "float", 1.5),
        (b"y,99999999999999999999\n", "float", 1e20),
        (b"y,abc\n", "string", "abc"),
        (b"y, 2.5\n", "float", 2.5),
    ],
)
def test_late_value_widens_an_int_column(client: TestClient, late: bytes, dtype: str,
                                         last: object) -> None:
    body = b"name,i\n" + b"x,1\n" * _LATE + late
    r = client.post("/v1/datasets", files={"file": ("late.csv", body)})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["n_rows"] == _LATE + 1
    assert [c["dtype"] for c in ds["columns"]] == ["string", dtype]
    rows = client.get(f"/v1/datasets/{ds['id']}/rows?offset={_LATE - 1}&limit=2").json()
    first = "1" if dtype == "string" else 1
    assert rows["rows"] == [["x", first], ["y", last]]


def test_widening_in_two_steps_and_several_columns(client: TestClient) -> None:
    block = b"1,2,true,2024-01-02,s\n" * 60_000  # 1.3 MB: each anomaly in a later block
    body = (b"i,j,flag,day,text\n" + block + b"1.5,2,true,2024-01-02,s\n" + block
            + b"abc,2,maybe,2024-01-02,s\n" + block + b"1,2.25,true,not a day,s\n")
    r = client.post("/v1/datasets", files={"file": ("w.csv", body)})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["n_rows"] == 3 * 60_000 + 3
    assert {c["name"]: c["dtype"] for c in ds["columns"]} == {
        "i": "string", "j": "float", "flag": "string", "day": "string", "text": "string"}


def test_columns_that_fit_keep_their_types(client: TestClient) -> None:
    body = b"i,f,b,d\n" + b"1,1.5,true,2024-01-02\n" * 60_000 + b"2,,false,2024-03-04\n"
    ds = client.post("/v1/datasets", files={"file": ("k.csv", body)}).json()
    assert [c["dtype"] for c in ds["columns"]] == ["int", "float", "bool", "datetime"]
    assert [c["n_missing"] for c in ds["columns"]] == [0, 1, 0, 0]


# -- limits on the table: decompressed bytes and rows ---------------------------------

def test_gzip_bomb_is_refused_at_the_decompressed_limit(make_client: Callable[..., TestClient],
                                                       db: Database) -> None:
    client = make_client(max_table_bytes=4 << 20)
    bomb = _gzip_members(b"1,2\n" * (1 << 18), 1024, head=b"a,b\n")  # 1 GiB inside 1 MB
    assert len(bomb) < 2 << 20
    problem = assert_problem(client.post("/v1/datasets", files={"file": ("b.csv.gz", bomb)}),
                             413, "table_too_large")
    assert "4,194,304 bytes" in problem["detail"]
    assert "TABXAI_MAX_TABLE_BYTES" in problem["detail"]
    _assert_nothing_stored(client, db)


def test_too_many_rows_is_422(make_client: Callable[..., TestClient], db: Database) -> None:
    client = make_client(max_table_rows=100_000)
    csv = b"a,b\n" + b"1,2\n" * 100_000
    assert client.post("/v1/datasets", files={"file": ("ok.csv", csv)}).status_code == 201
    client.delete(f"/v1/datasets/{client.get('/v1/datasets').json()['items'][0]['id']}")
    bomb = _gzip_members(b"1,2\n" * (1 << 18), 4096, head=b"a,b\n")  # 1e9 rows in 4 MB
    for name, body in (("over.csv", csv + b"3,4\n"), ("bomb.csv.gz", bomb)):
        problem = assert_problem(client.post("/v1/datasets", files={"file": (name, body)}),
                                 422, "too_many_rows")
        assert "100,000 rows" in problem["detail"]
        assert "TABXAI_MAX_TABLE_ROWS" in problem["detail"]
    _assert_nothing_stored(client, db)


def test_parquet_limits_come_from_its_metadata(make_client: Callable[..., TestClient],
                                               db: Database) -> None:
    frame = pd.DataFrame({"x": np.arange(50_000, dtype=np.int64), "y": 1.5})
    body = _parquet_bytes(frame)
    client = make_client(max_table_rows=49_999)
    problem = assert_problem(client.post("/v1/datasets", files={"file": ("t.parquet", body)}),
                             422, "too_many_rows")
    assert "49,999 rows" in problem["detail"] and "50,000" in problem["detail"]
    client = make_client(max_table_bytes=100_000)
    problem = assert_problem(client.post("/v1/datasets", files={"file": ("t.parquet", body)}),
                             413, "table_too_large")
    assert "TABXAI_MAX_TABLE_BYTES" in problem["detail"]
    _assert_nothing_stored(client, db)


def test_table_limits_default_from_the_upload_limit(make_client: Callable[..., TestClient]
                                                    ) -> None:
    settings = make_client(max_upload_bytes=1 << 20).app.state.settings  # type: ignore[attr-defined]
    assert settings.table_bytes_limit == 8 << 20
    assert settings.max_table_rows == 50_000_000


# -- the multipart body ---------------------------------------------------------------

@pytest.mark.parametrize(
    "tail",
    [b"", b"\r\n", b"\r\n--XyZ", b"\r\n--XyZ\r\n"],
)
def test_multipart_without_its_closing_boundary_is_400(client: TestClient, db: Database,
                                                       tail: bytes) -> None:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n"
            b"Content-Type: text/csv\r\n\r\na,b\n1,2\n" + tail)
    for path in ("/v1/datasets", "/v1/models"):
        problem = assert_problem(
            client.post(path, content=body,
                        headers={"content-type": "multipart/form-data; boundary=XyZ"}),
            400, "incomplete_multipart")
        assert "closing boundary" in problem["detail"]
    _assert_nothing_stored(client, db)


def test_complete_multipart_still_works(client: TestClient) -> None:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n"
            b"Content-Type: text/csv\r\n\r\na,b\n1,2\n\r\n--XyZ--\r\n")
    r = client.post("/v1/datasets", content=body,
                    headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 201, r.text
    assert r.json()["n_rows"] == 1


# -- model form fields ----------------------------------------------------------------

_DEEP = "[" * 10_000 + "]" * 10_000  # past the JSON parser's recursion limit, yet fits a URL


@pytest.mark.parametrize(
    ("fields", "status", "code", "words"),
    [
        ({"classes": _DEEP}, 422, "invalid_field", "nested"),
        ({"feature_names": _DEEP}, 422, "invalid_field", "nested"),
        ({"classes": "[[0], [1]]"}, 422, "invalid_field", "flat list"),
        ({"classes": '[{"a": 1}, {"b": 2}]'}, 422, "invalid_field", "flat list"),
        ({"classes": "[null, 1]"}, 422, "invalid_field", "flat list"),
        ({"classes": "[NaN, 1]"}, 400, "invalid_field", "NaN"),
        ({"classes": "[0, 0]"}, 422, "invalid_field", "twice"),
        ({"feature_names": '["f0", "f0", "f1", "f2", "f3"]'}, 422, "invalid_field", "twice"),
        ({"feature_names": '["f0", "", "f1", "f2", "f3"]'}, 422, "invalid_field", "empty"),
        ({"feature_names": '["f0", 1, "f1", "f2", "f3"]'}, 400, "invalid_field", "strings"),
    ],
)
def test_bad_json_fields_on_models(client: TestClient, db: Database,
                                   saved_models: dict[str, SavedModel],
                                   fields: dict[str, str], status: int, code: str,
                                   words: str) -> None:
    body = saved_models["xgboost_binary_ubj"].path.read_bytes()
    r = client.post("/v1/models", files={"file": ("m.ubj", body)}, data=fields)
    problem = assert_problem(r, status, code)
    assert words in problem["detail"], problem["detail"]
    r = client.post("/v1/models", params=fields, content=body,
                    headers={"content-type": "application/octet-stream"})
    assert_problem(r, status, code)
    _assert_nothing_stored(client, db)


def test_json_field_is_bounded_however_it_comes(client: TestClient,
                                                saved_models: dict[str, SavedModel]) -> None:
    from service.catalog.service import _json_list
    from service.errors import BadRequest

    names = json.dumps([f"name_{i}" for i in range(10_000)])
    assert len(names) > 64 << 10
    # A query string is capped by the HTTP server, not by us: the parser bounds it itself.
    with pytest.raises(BadRequest, match="longer than 65,536 bytes"):
        _json_list(names, "feature_names", str)
    body = saved_models["onnx_mlp_regression"].path.read_bytes()
    r = client.post("/v1/models", files={"file": ("m.onnx", body)},
                    data={"feature_names": names})
    assert "longer than 65,536 bytes" in assert_problem(r, 400, "bad_request")["detail"]


def test_good_classes_still_work(client: TestClient,
                                 saved_models: dict[str, SavedModel]) -> None:
    body = saved_models["xgboost_binary_ubj"].path.read_bytes()
    r = client.post("/v1/models", files={"file": ("m.ubj", body)},
                    data={"classes": '["no", "yes"]'})
    assert r.status_code == 201, r.text
    assert r.json()["classes"] == ["no", "yes"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"\xff\xfe\x00garbage", "application/octet-stream"),
        (b"[" * 100_000, "application/json"),
        (b'{"learner": ' * 50_000, "application/json"),
        (b"--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n\xff\xfe",
         "multipart/form-data; boundary=B"),
        (b"--B\r\nno header separator", "multipart/form-data; boundary=B"),
        (b"--B\r\nContent-Disposition: form-data; name=\"\xff\xfe\"\r\n\r\nx\r\n--B--\r\n",
         "multipart/form-data; boundary=B"),
        (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m\"\r\n\r\n"
         b"\r\n--B--\r\n", "multipart/form-data; boundary=B"),
        (b"anything", "multipart/form-data; boundary=" + "x" * 100),
        (b"anything", "multipart/form-data"),
        (b"\x1f\x8b\x08\x00garbage", "application/gzip"),
    ],
)
def test_odd_model_bodies_are_4xx(client: TestClient, db: Database, content: bytes,
                                  content_type: str) -> None:
    r = client.post("/v1/models", content=content, headers={"content-type": content_type})
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"].endswith(".")
    _assert_nothing_stored(client, db)


def test_odd_dataset_bodies_are_4xx(client: TestClient, db: Database) -> None:
    for content, content_type in (
        (b"\x1f\x8b\x08\x00garbage", "text/csv"),
        (gzip.compress(b"a,b\n1,2\n")[:-6], "text/csv"),
        (b"a,b\n\"1,2\n3,4\n", "text/csv"),
        (b"PAR1", "application/vnd.apache.parquet"),
        (b"\x00" * 100, "text/csv"),
    ):
        r = client.post("/v1/datasets", content=content, headers={"content-type": content_type})
        assert 400 <= r.status_code < 500, (content[:40], r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    _assert_nothing_stored(client, db)
