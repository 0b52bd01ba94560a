"""Row paging: GET /v1/datasets/{id}/rows at the first and the last rows of a large CSV.

Starts `tabxai serve` (no workers) on a free loopback port, uploads a generated CSV of
--rows rows (timing the upload, and the server's peak RSS, which includes writing the
paging copy), then times pages of --limit rows at offset 0 and at the end, read from
the paging copy. In the same run, the dataset's copy is unlinked in the database (as
for a dataset stored before copies existed) and the same pages are timed again through
the scan that paging used before; the copy is linked back afterwards.

    .venv/bin/python -m bench.paging                       # 2,000,000 rows, SQLite
    .venv/bin/python -m bench.paging --database-url 'postgresql+psycopg:///test?options=-csearch_path%3Dbench'

On 2 shared cores (2,000,000 rows x 10 columns, 186 MB; pages of 100 rows):

    SQLite      offset 0: 15 ms, 1,000,000: 8 ms, 1,999,900: 7 ms  (scan: 41 ms, 1.3 s, 2.3 s)
    PostgreSQL  offset 0: 86 ms, 1,000,000: 68 ms, 1,999,900: 33 ms (scan: 157 ms, 2.0 s, 3.5 s)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import update

from bench.upload import free_port, peak_rss_bytes
from service.catalog.tables import DatasetRecord
from service.config import Settings
from service.db import Database


def generate_csv(path: Path, n_rows: int, n_columns: int = 10) -> int:
    """An id column, then random floats; rows formatted 100,000 at a time."""
    rng = np.random.default_rng(0)
    header = ",".join(["i"] + [f"x{j}" for j in range(n_columns - 2)] + ["y"]) + "\n"
    with path.open("w") as f:
        f.write(header)
        for start in range(0, n_rows, 100_000):
            n = min(100_000, n_rows - start)
            values = rng.normal(size=(n, n_columns - 1))
            f.writelines(f"{start + i}," + ",".join(f"{v:.6f}" for v in row) + "\n"
                         for i, row in enumerate(values))
    return path.stat().st_size


def time_page(client: httpx.Client, dataset_id: str, offset: int, limit: int,
              repeats: int) -> tuple[float, list[list[float]]]:
    """Median seconds of ``repeats`` requests, and the rows of the last one."""
    times = []
    rows: list[list[float]] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        response = client.get(f"/v1/datasets/{dataset_id}/rows",
                              params={"offset": offset, "limit": limit})
        times.append(time.perf_counter() - t0)
        response.raise_for_status()
        rows = response.json()["rows"]
    return statistics.median(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scan-repeats", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "big.csv"
        t0 = time.perf_counter()
        size = generate_csv(csv_path, args.rows)
        print(f"generated {args.rows:,} rows, {size / 1e6:,.0f} MB CSV in "
              f"{time.perf_counter() - t0:.1f} s")
        settings = Settings(data_dir=Path(tmp) / "data", database_url=args.database_url)
        port = free_port()
        env = {**os.environ, "TABXAI_DATA_DIR": str(settings.data_dir),
               "TABXAI_PORT": str(port), "TABXAI_WORKERS": "0"}
        if args.database_url:
            env["TABXAI_DATABASE_URL"] = args.database_url
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600)
            for _ in range(300):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            t0 = time.perf_counter()
            with csv_path.open("rb") as f:
                response = client.post("/v1/datasets?target=y", content=f,
                                       headers={"content-type": "text/csv"})
            elapsed = time.perf_counter() - t0
            response.raise_for_status()
            dataset_id = response.json()["id"]
            print(f"upload: {elapsed:.1f} s ({size / 1e6 / elapsed:.1f} MB/s; inspected, "
                  f"copied to Parquet, stored), server peak RSS "
                  f"{peak_rss_bytes(server.pid) / 2**20:,.0f} MiB")
            last = args.rows - args.limit
            offsets = (0, args.rows // 2, last)
            copy = {o: time_page(client, dataset_id, o, args.limit, args.repeats)
                    for o in offsets}
            db = Database(settings.resolved_database_url)
            with db.session() as session:
                record = session.get(DatasetRecord, dataset_id)
                assert record is not None and record.paging_blob_id is not None
                copy_blob_id = record.paging_blob_id
                session.execute(update(DatasetRecord).where(DatasetRecord.id == dataset_id)
                                .values(paging_blob_id=None))
            try:
                scan = {o: time_page(client, dataset_id, o, args.limit, args.scan_repeats)
                        for o in offsets}
            finally:
                with db.session() as session:
                    session.execute(update(DatasetRecord)
                                    .where(DatasetRecord.id == dataset_id)
                                    .values(paging_blob_id=copy_blob_id))
                db.dispose()
            for o in offsets:
                assert copy[o][1] == scan[o][1], f"the two paths disagree at offset {o}"
                assert copy[o][1][0][0] == o
            print(f"page of {args.limit} rows (median)  {'offset':>10}  "
                  f"{'paging copy':>12}  {'scan (before)':>14}  ratio")
            for o in offsets:
                print(f"{'':31}{o:>10,}  {copy[o][0] * 1e3:>9.1f} ms  "
                      f"{scan[o][0] * 1e3:>11.1f} ms  {scan[o][0] / copy[o][0]:>5.0f}x")
            print(f"paging copy, last page / first page: {copy[last][0] / copy[0][0]:.2f}; "
                  f"scan: {scan[last][0] / scan[0][0]:.0f}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
