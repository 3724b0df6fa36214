"""A minimal MATLAB v5 .mat reader: numeric arrays only, which is all SVHN's files hold.

Layout (MathWorks "MAT-File Format", v5): a 128-byte header (text, subsystem offset, version,
endian marker "IM" = little-endian), then data elements, each an 8-byte tag (type, byte count)
and its payload padded to 8 bytes. ``miCOMPRESSED`` elements are zlib streams of one
``miMATRIX`` element: array flags (class), dimensions, name, then the real part, stored in any
numeric type (MATLAB stores doubles as uint8 when they fit). Arrays are column-major.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

MI_COMPRESSED, MI_MATRIX = 15, 14
# miXXX data type -> numpy dtype of the stored bytes
MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
# mxXXX array class -> numpy dtype of the array MATLAB sees
MX_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}


class MatFormatError(ValueError):
    """The file is not a v5 .mat file this reader understands (or it is truncated)."""


def _element(buf: memoryview, pos: int, order: str) -> tuple[int, memoryview, int]:
    """(type, payload, next position) of the data element at ``pos``."""
    if pos + 8 > len(buf):
        raise MatFormatError("truncated data element tag")
    first = int(np.frombuffer(buf[pos : pos + 4], order + "u4")[0])
    if first >> 16:  # small data element: type and size share the first word, payload <= 4 bytes
        size, dtype = first >> 16, first & 0xFFFF
        return dtype, buf[pos + 4 : pos + 4 + size], pos + 8
    size = int(np.frombuffer(buf[pos + 4 : pos + 8], order + "u4")[0])
    end = pos + 8 + size
    if end > len(buf):
        raise MatFormatError("truncated data element")
    return first, buf[pos + 8 : end], end + (-size % 8 if first != MI_COMPRESSED else 0)


def _matrix(payload: memoryview, order: str) -> tuple[str, np.ndarray]:
    _, flags, pos = _element(payload, 0, order)
    mx_class = int(np.frombuffer(flags[:4], order + "u4")[0]) & 0xFF
    if mx_class not in MX_CLASSES:
        raise MatFormatError(f"unsupported MATLAB array class {mx_class} (only numeric arrays)")
    _, dims_raw, pos = _element(payload, pos, order)
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, order + "i4"))
    _, name_raw, pos = _element(payload, pos, order)
    mi_type, data, pos = _element(payload, pos, order)
    if mi_type not in MI_TYPES:
        raise MatFormatError(f"unsupported MATLAB data type {mi_type}")
    values = np.frombuffer(data, order + MI_TYPES[mi_type])
    if values.size != int(np.prod(dims)):
        raise MatFormatError(f"array {bytes(name_raw).decode()!r} has {values.size} values for shape {dims}")
    array = values.reshape(dims, order="F").astype(MX_CLASSES[mx_class], copy=False)
    return bytes(name_raw).decode("ascii"), array


def _inflate(f, size: int) -> bytearray:
    # Streamed in chunks so that a 1.3 GB compressed element does not sit in memory twice.
    inflater = zlib.decompressobj()
    out = bytearray()
    left = size
    while left:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            raise MatFormatError("truncated compressed element")
        left -= len(chunk)
        out += inflater.decompress(chunk)
    out += inflater.flush()
    if not inflater.eof:
        raise MatFormatError("truncated compressed element")
    return out  # not bytes(out): that would copy SVHN extra's 1.6 GB once more


def load_mat(path: str | Path) -> dict[str, np.ndarray]:
    """Numeric variables of a v5 .mat file, by name, with MATLAB's shapes (column-major data)."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        header = f.read(128)
        if len(header) < 128 or not header.startswith(b"MATLAB 5.0 MAT-file"):
            raise MatFormatError("not a MATLAB 5.0 MAT-file (v7.3/HDF5 files are not supported)")
        order = {b"IM": "<", b"MI": ">"}.get(header[126:128])
        if order is None:
            raise MatFormatError("bad endian marker in the header")
        while True:
            tag = f.read(8)
            if not tag:
                break
            if len(tag) < 8:
                raise MatFormatError("truncated data element tag")
            mi_type, size = (int(v) for v in np.frombuffer(tag, order + "u4"))
            if mi_type == MI_COMPRESSED:
                inner = memoryview(_inflate(f, size))
                mi_type, payload, _ = _element(inner, 0, order)
            else:
                payload = memoryview(f.read(size + (-size % 8)))[:size]
                if len(payload) < size:
                    raise MatFormatError("truncated data element")
            if mi_type == MI_MATRIX:
                name, array = _matrix(payload, order)
                out[name] = array
    return out
