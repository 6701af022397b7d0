"""Files whose bytes depend only on their content: atomic writes, hashes, JSON and NPZ.

A leaf module (imports nothing of ntkrepro), so that every layer can write results the
same way: a file is written to a temporary name and renamed, JSON has sorted keys, and an
``.npz`` carries no timestamps, so identical results give identical bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary dot file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_bytes(data: bytes) -> str:
    """SHA-256 of ``data``, as hex."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def number(x: Any) -> float | int | bool | None:
    """A JSON-safe scalar: bools and integers as they are, floats with NaN/inf as None."""
    if isinstance(x, bool):
        return x
    if isinstance(x, int) or (hasattr(x, "dtype") and x.dtype.kind in "iu"):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(v: Any) -> Any:
    """``v`` with numpy/JAX arrays and scalars turned into JSON types (NaN/inf as None)."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, str) or v is None:
        return v
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return number(v)


def json_bytes(data: Any) -> bytes:
    """The one serialization of every JSON result (indented, sorted keys: byte-stable)."""
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """An ``.npz`` (``np.load`` reads it, no pickle) whose bytes depend only on the arrays:
    every member gets the fixed zip date 1980-01-01 (``np.savez`` stamps the clock)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return buf.getvalue()
