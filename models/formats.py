"""Model file formats and their detection from the bytes.

Detection never trusts a file name. Cheap checks on the first bytes come first; only an
ONNX candidate is parsed (with ``onnx``), so call :func:`detect_format` on untrusted files
inside the inspection sandbox (``models.inspection.inspect_model`` does).
"""

from __future__ import annotations

import bz2
import lzma
import zipfile
import zlib
from pathlib import Path

from models.errors import InvalidModel, UnsupportedModelFormat

__all__ = ["FORMATS", "SERVED_FORMATS", "UNTRUSTED_FORMATS", "detect_format"]

FORMATS = ("xgboost", "lightgbm", "sklearn", "onnx", "torchscript", "pickle", "joblib")
SERVED_FORMATS = ("xgboost", "lightgbm", "sklearn", "onnx", "torchscript")
UNTRUSTED_FORMATS = ("torchscript", "pickle", "joblib")

ACCEPTED_SENTENCE = (
    "tabxai reads XGBoost Boosters saved as JSON or UBJSON, LightGBM Boosters saved as "
    "text, scikit-learn estimators saved with skops.io.dump, ONNX graphs with one 2-D "
    "float input, and (when the operator trusts uploads) TorchScript, pickle and joblib."
)

_HEAD_BYTES = 64 * 1024
# Protobuf tags of the fields of onnx.ModelProto (field number << 3 | wire type); a
# serialized model starts with one of them, in practice ir_version (0x08).
_ONNX_FIRST_TAGS = frozenset({0x08, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42, 0x4A, 0x72, 0x7A})
# UBJSON type markers that may follow the opening '{' of an object (key length types,
# or the '$'/'#' optimised-container markers, or '}' for an empty object).
_UBJSON_MARKERS = frozenset(b"iUIlL$#}")


def detect_format(path: Path) -> str:
    """Return the format of the model file at ``path``, one of :data:`FORMATS`.

    Raises UnsupportedModelFormat when the bytes are none of them, with a sentence that
    lists what is accepted.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head:
        raise UnsupportedModelFormat(f"The model file is empty. {ACCEPTED_SENTENCE}")
    if zipfile.is_zipfile(path):
        return _detect_zip(path)
    if head[:1] == b"{":
        if len(head) > 1 and head[1] in _UBJSON_MARKERS and b"learner" in head:
            return "xgboost"
        if b'"learner"' in head:
            return "xgboost"
        raise UnsupportedModelFormat(
            f"The file is JSON but not an XGBoost model (it has no 'learner' key). "
            f"{ACCEPTED_SENTENCE}"
        )
    if head.startswith(b"tree\n") and b"\nversion=v" in head:
        return "lightgbm"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if _is_compressed_pickle(head):
        return "joblib"
    if head[0] in _ONNX_FIRST_TAGS and _parses_as_onnx(path):
        return "onnx"
    raise UnsupportedModelFormat(
        f"The file is not a model format tabxai knows. {ACCEPTED_SENTENCE}"
    )


def _detect_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise InvalidModel(f"The zip archive is corrupt: {error}.") from error
    if "schema.json" in names:
        return "sklearn"
    # torch.jit.save writes "<archive>/constants.pkl" and "<archive>/code/..." entries.
    if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names) and any(
        "code/" in n for n in names
    ):
        return "torchscript"
    raise UnsupportedModelFormat(
        f"The file is a zip archive that is neither a skops file nor TorchScript. "
        f"{ACCEPTED_SENTENCE}"
    )


def _is_compressed_pickle(head: bytes) -> bool:
    """Whether ``head`` is the start of a compressed pickle, as joblib writes them."""
    decompressors = (
        (b"\x78", lambda b: zlib.decompressobj().decompress(b, 16)),
        (b"\x1f\x8b", lambda b: zlib.decompressobj(31).decompress(b, 16)),
        (b"BZh", lambda b: bz2.BZ2Decompressor().decompress(b, 16)),
        (b"\xfd7zXZ", lambda b: lzma.LZMADecompressor().decompress(b, 16)),
        (b"\x5d\x00\x00", lambda b: lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(b, 16)),
    )
    for magic, decompress in decompressors:
        if head.startswith(magic):
            try:
                start = decompress(head)
            except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
                return False
            return start[:1] == b"\x80"
    # joblib < 0.10 wrote "ZF" followed by a hex length before a zlib stream.
    return head.startswith(b"ZF0x")


def _parses_as_onnx(path: Path) -> bool:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError):
        return False
    return len(proto.graph.node) > 0 or len(proto.graph.output) > 0
