"""Reader of biomatch's vector files (`.bmvec`, format version 1; see `datasets/FORMAT.md`).

Every check of the Rust reader (`datasets/src/format.rs`) is made here too: magic, version,
flags, dimension, metadata length, total length against the file size, CRC-32 of every byte
before the footer, then the metadata JSON. Any mismatch raises `BmvecError`; a partial result is
never returned.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"BMVEC\x00\x00\x01"
FORMAT_VERSION = 1
FLAG_UNIT_NORM = 1
KNOWN_FLAGS = FLAG_UNIT_NORM
MAX_DIM = 1 << 16
MAX_META_LEN = 16 << 20
HEADER = 32
FOOTER = 4


class BmvecError(ValueError):
    """A file that is not a valid `.bmvec` file."""


@dataclass
class VectorFile:
    meta: object
    dim: int
    flags: int
    labels: np.ndarray  # uint64, one per record
    samples: np.ndarray  # uint32
    vectors: np.ndarray  # float32, (count, dim), C-contiguous

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _crc32(buf: np.ndarray) -> int:
    """CRC-32 (IEEE, as crc32fast and zlib) of a uint8 array, in bounded chunks."""
    crc = 0
    step = 64 << 20
    for at in range(0, buf.shape[0], step):
        crc = zlib.crc32(buf[at : at + step], crc)
    return crc & 0xFFFFFFFF


def read_bmvec(path: str | Path) -> VectorFile:
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER)
    if head[:8] != MAGIC[: len(head[:8])]:
        raise BmvecError(f"{path}: not a .bmvec file (bad magic)")
    if len(head) < HEADER or size < HEADER + FOOTER:
        raise BmvecError(f"{path}: truncated ({size} bytes)")
    version, dim, count, flags, meta_len = struct.unpack_from("<IIQII", head, 8)
    if version != FORMAT_VERSION:
        raise BmvecError(f"{path}: format version {version}, this reader knows {FORMAT_VERSION}")
    if flags & ~KNOWN_FLAGS:
        raise BmvecError(f"{path}: reserved flag bits set ({flags:#x})")
    if not 1 <= dim <= MAX_DIM:
        raise BmvecError(f"{path}: dimension {dim} not in 1..={MAX_DIM}")
    if meta_len > MAX_META_LEN:
        raise BmvecError(f"{path}: metadata of {meta_len} bytes exceeds {MAX_META_LEN}")
    expected = HEADER + meta_len + count * (12 + 4 * dim) + FOOTER
    if size < expected:
        raise BmvecError(f"{path}: truncated: {size} bytes, the header says {expected}")
    if size > expected:
        raise BmvecError(f"{path}: trailing data: {size} bytes, the header says {expected}")
    # Only now is anything proportional to `count` allocated.
    data = np.fromfile(path, dtype=np.uint8)
    if data.shape[0] != size:
        raise BmvecError(f"{path}: changed while being read")
    (stored,) = struct.unpack("<I", data[-FOOTER:].tobytes())
    actual = _crc32(data[:-FOOTER])
    if stored != actual:
        raise BmvecError(f"{path}: CRC mismatch (stored {stored:#010x}, computed {actual:#010x})")
    try:
        meta = json.loads(data[HEADER : HEADER + meta_len].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BmvecError(f"{path}: bad metadata: {e}") from e
    record = np.dtype([("label", "<u8"), ("sample", "<u4"), ("v", "<f4", (dim,))])
    assert record.itemsize == 12 + 4 * dim
    recs = data[HEADER + meta_len : size - FOOTER].view(record)
    labels = recs["label"].astype(np.uint64)
    samples = recs["sample"].astype(np.uint32)
    vectors = np.ascontiguousarray(recs["v"], dtype=np.float32)
    del recs, data
    if not np.isfinite(vectors).all():
        raise BmvecError(f"{path}: non-finite vector component")
    return VectorFile(meta, dim, flags, labels, samples, vectors)
