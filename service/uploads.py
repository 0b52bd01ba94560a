"""Receiving an upload: the request body streamed to a temporary file, hashed, capped.

Both styles of API.md land here: ``multipart/form-data`` (a part ``file`` plus small form
fields) and a raw body. The size cap is enforced while bytes arrive, so an oversized
upload is refused without ever being held or written whole.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import BadRequest, PayloadTooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32


@dataclass
class ReceivedUpload:
    """An upload on local disk. ``fields`` holds the multipart form fields (or nothing)."""

    path: Path
    size_bytes: int
    sha256: str
    content_type: str
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


async def receive_upload(request: Request, *, max_bytes: int, tmp_dir: Path) -> ReceivedUpload:
    """Stream the body of ``request`` to a temporary file under ``tmp_dir``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 1024 * 1024:
        raise _too_large(max_bytes)
    content_type, options = parse_options_header(request.headers.get("content-type"))
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
    os.close(fd)
    path = Path(name)
    try:
        if content_type == b"multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise BadRequest("The multipart body has no boundary; let your client set "
                                 "the Content-Type header (curl -F file=@data.csv does).")
            return await _receive_multipart(request, path, boundary, max_bytes)
        return await _receive_raw(request, path, content_type.decode("latin-1"), max_bytes)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload is larger than this server's limit of {max_bytes:,} bytes "
        "(TABXAI_MAX_UPLOAD_BYTES); send a smaller file, or ask the operator to raise it."
    )


async def _receive_raw(request: Request, path: Path, content_type: str, max_bytes: int
                       ) -> ReceivedUpload:
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            digest.update(chunk)
            out.write(chunk)
    return ReceivedUpload(path, size, digest.hexdigest(), content_type)


class _MultipartSink:
    """Callbacks for the streaming multipart parser: the file part goes to disk."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.out = path.open("wb")
        self.max_bytes = max_bytes
        self.digest = hashlib.sha256()
        self.size = 0
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_content_type = ""
        self.file_seen = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part_name: str | None = None
        self._part_is_file = False
        self._field_value = bytearray()
        self.complete = False  # the closing boundary --BOUNDARY-- was read

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._field_value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part_name = name
        self._part_is_file = name == "file"
        if self._part_is_file:
            if self.file_seen:
                raise BadRequest("Send exactly one part named 'file'.")
            self.file_seen = True
            raw_filename = options.get(b"filename")
            self.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
            ctype, _ = parse_options_header(self._headers.get(b"content-type"))
            self.file_content_type = ctype.decode("latin-1")
        elif len(self.fields) >= MAX_FIELDS:
            raise BadRequest(f"Too many form fields; at most {MAX_FIELDS} are read.")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part_is_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise _too_large(self.max_bytes)
            view = data[start:end]
            self.digest.update(view)
            self.out.write(view)
        else:
            self._field_value += data[start:end]
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise BadRequest(f"The form field '{self._part_name}' is longer than "
                                 f"{MAX_FIELD_BYTES:,} bytes.")

    def on_part_end(self) -> None:
        if not self._part_is_file and self._part_name:
            try:
                self.fields[self._part_name] = self._field_value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadRequest(f"The form field '{self._part_name}' is not UTF-8.") from exc

    def on_end(self) -> None:
        self.complete = True


async def _receive_multipart(request: Request, path: Path, boundary: bytes, max_bytes: int
                             ) -> ReceivedUpload:
    sink = _MultipartSink(path, max_bytes)
    parser = MultipartParser(boundary, sink.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except (BadRequest, PayloadTooLarge):
                raise
            except ValueError as exc:  # python-multipart's parse errors
                raise BadRequest(f"The multipart body is malformed: {exc}.") from exc
        parser.finalize()
    finally:
        sink.out.close()
    if not sink.complete:
        # A body cut short (a dropped connection, a client that stopped) parses as far as
        # it goes; only the closing boundary says the file part is whole.
        raise BadRequest(
            "The multipart body ended before its closing boundary: the upload was cut "
            "short. Send it again.",
            code="incomplete_multipart",
        )
    if not sink.file_seen:
        raise BadRequest("The multipart body has no part named 'file'; send the table as "
                         "-F file=@data.csv.")
    return ReceivedUpload(
        path, sink.size, sink.digest.hexdigest(), sink.file_content_type, sink.filename,
        sink.fields,
    )
