"""Blobs in the database, in ordered chunks of about 4 MiB.

Any API process or worker on any machine sees the same bytes with only the database
shared, and a blob is written in the caller's transaction, so a failed upload leaves no
chunk behind. Reading never loads a whole blob: :class:`BlobReader` is a seekable
file object that fetches one chunk at a time in short transactions of its own.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from service.db import Database
from service.errors import NotFound
from service.ids import new_id
from service.tables import Blob, BlobChunk

CHUNK_BYTES = 4 * 1024 * 1024


def store_file(session: Session, path: Path, *, sha256: str | None = None,
               chunk_bytes: int = CHUNK_BYTES) -> Blob:
    """Store the file at ``path`` as a new blob inside the session's transaction; its
    SHA-256 is computed on the way when the caller does not already know it."""
    digest = hashlib.sha256() if sha256 is None else None

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while data := f.read(chunk_bytes):
                if digest is not None:
                    digest.update(data)
                yield data

    blob = store_chunks(session, chunks(), sha256=sha256 or "")
    if digest is not None:
        blob.sha256 = digest.hexdigest()
        session.flush()
    return blob


def store_chunks(session: Session, chunks: Iterable[bytes], *, sha256: str = "") -> Blob:
    """Store byte strings as one blob, each string one chunk, in the caller's transaction.

    Chunks go through Core inserts, not the ORM, so none stays in the session's identity
    map: storing a 1 GB upload holds one chunk in memory at a time. Every chunk but the
    last must be as long as the first: readers find a byte's chunk by division.
    """
    blob = Blob(id=new_id("blob"), size_bytes=0, sha256=sha256, n_chunks=0, chunk_bytes=0)
    session.add(blob)
    session.flush()
    size = 0
    seq = 0
    last = 0
    for data in chunks:
        if seq == 0:
            blob.chunk_bytes = len(data)
        elif last != blob.chunk_bytes:
            raise ValueError(f"chunk {seq - 1} holds {last} bytes, not {blob.chunk_bytes}; "
                             "only the last chunk of a blob may be shorter")
        last = len(data)
        session.execute(insert(BlobChunk), [{"blob_id": blob.id, "seq": seq, "data": data}])
        size += len(data)
        seq += 1
    blob.size_bytes = size
    blob.n_chunks = seq
    session.flush()
    return blob


def delete_blob(session: Session, blob_id: str) -> None:
    session.execute(delete(BlobChunk).where(BlobChunk.blob_id == blob_id))
    session.execute(delete(Blob).where(Blob.id == blob_id))


def read_chunk(session: Session, blob_id: str, seq: int) -> bytes:
    data = session.scalar(
        select(BlobChunk.data).where(BlobChunk.blob_id == blob_id, BlobChunk.seq == seq)
    )
    if data is None:
        raise NotFound(f"Chunk {seq} of blob {blob_id} is missing.")
    return bytes(data)


class BlobReader(io.RawIOBase):
    """A read-only, seekable file over a blob; holds at most one chunk in memory.

    Given the :class:`Database`, each chunk is fetched in a short transaction of its own
    (a reader may outlive a request); given a :class:`Session`, through that session (a
    check inside the request's own transaction). ``bytes_read`` counts what was read."""

    def __init__(self, source: Database | Session, blob_id: str) -> None:
        super().__init__()
        self._db = source if isinstance(source, Database) else None
        self._session = source if isinstance(source, Session) else None
        with self._reading() as session:
            blob = session.get(Blob, blob_id)
            if blob is None:
                raise NotFound(f"Blob {blob_id} does not exist.")
            self.size = blob.size_bytes
            self.n_chunks = blob.n_chunks
            self.chunk_bytes = blob.chunk_bytes
        self._blob_id = blob_id
        self._pos = 0
        self._chunk = b""
        self._chunk_start = 0
        self.bytes_read = 0

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        if self._session is not None:
            yield self._session
            return
        assert self._db is not None
        with self._db.session(readonly=True) as session:
            yield session

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"invalid whence {whence!r}; use SEEK_SET, SEEK_CUR or SEEK_END")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Exactly ``size`` bytes, fewer only at the end of the blob; all the rest when
        ``size`` is negative or None. Callers such as pyarrow's Parquet reader take a
        short read for the end of the file, so every read spans chunks as needed."""
        self._checkClosed()
        remaining = max(0, self.size - self._pos)
        n = remaining if size is None or size < 0 else min(size, remaining)
        buffer = bytearray(n)
        got = self.readinto(buffer)
        return bytes(buffer) if got == n else bytes(buffer[:got])

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the position on, across as many chunks as it takes."""
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._pos < self.size:
            if not (self._chunk_start <= self._pos < self._chunk_start + len(self._chunk)):
                self._load_chunk_at(self._pos)
            start = self._pos - self._chunk_start
            n = min(len(view) - filled, len(self._chunk) - start)
            view[filled:filled + n] = self._chunk[start:start + n]
            filled += n
            self._pos += n
        self.bytes_read += filled
        return filled

    def _load_chunk_at(self, pos: int) -> None:
        seq = min(pos // self.chunk_bytes, self.n_chunks - 1)
        with self._reading() as session:
            chunk = read_chunk(session, self._blob_id, seq)
        start = seq * self.chunk_bytes
        if not start <= pos < start + len(chunk):
            raise OSError(f"Chunk {seq} of blob {self._blob_id} holds {len(chunk)} bytes, "
                          f"not the {self.chunk_bytes} its blob row says; the blob is damaged.")
        self._chunk, self._chunk_start = chunk, start

    def iter_chunks(self) -> Iterator[bytes]:
        """Yield the blob's chunks in order (for streamed downloads)."""
        for seq in range(self.n_chunks):
            with self._reading() as session:
                yield read_chunk(session, self._blob_id, seq)


def copy_blob_to_file(db: Database, blob_id: str, path: Path) -> None:
    """Write a blob to a local file, one chunk at a time."""
    reader = BlobReader(db, blob_id)
    with path.open("wb") as out:
        for data in reader.iter_chunks():
            out.write(data)

