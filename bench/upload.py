"""Upload throughput and the server's peak memory for a large generated CSV.

Starts `tabxai serve` (SQLite, no workers) on a free loopback port, streams a generated
CSV of --size-mb megabytes to POST /v1/datasets, and prints MB/s and the server's peak
RSS (VmHWM) next to the file size. Target: peak RSS under 300 MB for a 1 GB file.

    .venv/bin/python bench/upload.py --size-mb 1024

With ``--bomb-gib N`` it instead sends a small .csv.gz that expands to N GiB of
two-column rows and prints how long the server took to refuse it (the table limits,
TABXAI_MAX_TABLE_BYTES and TABXAI_MAX_TABLE_ROWS, stop the reading as soon as one is
passed) and the answer.
"""

from __future__ import annotations

import argparse
import gzip
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def generate_csv(path: Path, size_bytes: int, n_columns: int = 20) -> int:
    """Random rows: one 8 MB block formatted once, then written with its rows rotated."""
    rng = np.random.default_rng(0)
    header = ",".join([f"x{i}" for i in range(n_columns - 1)] + ["y"]) + "\n"
    block = rng.normal(size=(40_000, n_columns))
    lines = [",".join(f"{v:.6f}" for v in row) + "\n" for row in block]
    written = 0
    with path.open("w") as f:
        f.write(header)
        written += len(header)
        shift = 0
        while written < size_bytes:
            text = "".join(lines[shift:] + lines[:shift])
            f.write(text)
            written += len(text)
            shift = (shift + 7919) % len(lines)
    return path.stat().st_size


def generate_bomb(path: Path, expanded_gib: int) -> int:
    """A gzip file of concatenated members: a header, then 1 MiB of "1,2" rows compressed
    once and repeated ``expanded_gib * 1024`` times (a few MB on disk)."""
    member = gzip.compress(b"1,2\n" * (1 << 18), 9)
    with path.open("wb") as f:
        f.write(gzip.compress(b"a,b\n"))
        for _ in range(expanded_gib * 1024):
            f.write(member)
    return path.stat().st_size


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--bomb-gib", type=int, default=0,
                        help="send a .csv.gz expanding to this many GiB instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.bomb_gib:
            csv_path = Path(tmp) / "bomb.csv.gz"
            size = generate_bomb(csv_path, args.bomb_gib)
            print(f"generated a {size / 1e6:,.1f} MB .csv.gz expanding to {args.bomb_gib} GiB")
        else:
            csv_path = Path(tmp) / "big.csv"
            size = generate_csv(csv_path, args.size_mb << 20)
            print(f"generated {size / 1e6:,.0f} MB CSV in {time.perf_counter() - t0:.1f} s")
        port = free_port()
        env = {**os.environ, "TABXAI_DATA_DIR": str(Path(tmp) / "data"),
               "TABXAI_PORT": str(port), "TABXAI_WORKERS": "0"}
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            idle_rss = peak_rss_bytes(server.pid)
            t0 = time.perf_counter()
            target = "b" if args.bomb_gib else "y"
            with csv_path.open("rb") as f:
                response = httpx.post(f"{base}/v1/datasets?target={target}", content=f,
                                      headers={"content-type": "text/csv"}, timeout=3600)
            elapsed = time.perf_counter() - t0
            if args.bomb_gib:
                problem = response.json()
                print(f"answered {response.status_code} {problem.get('code')} after "
                      f"{elapsed:.1f} s: {problem.get('detail')}")
                print(f"server peak RSS: {peak_rss_bytes(server.pid) / 2**20:,.0f} MiB "
                      f"(idle {idle_rss / 2**20:,.0f} MiB)")
                return
            response.raise_for_status()
            rss = peak_rss_bytes(server.pid)
            print(f"rows: {response.json()['n_rows']:,}")
            rate = size / 1e6 / elapsed
            print(f"upload: {size / 1e6:,.0f} MB in {elapsed:.1f} s = {rate:.1f} MB/s"
                  " (received, parsed, stored in SQLite, catalogued)")
            print(f"server peak RSS: {rss / 2**20:,.0f} MiB (idle {idle_rss / 2**20:,.0f} MiB) "
                  f"for a {size / 2**20:,.0f} MiB file; target < 300 MiB: "
                  f"{'met' if rss < 300 * 2**20 else 'NOT met'}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
