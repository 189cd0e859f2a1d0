"""The safetensors format, read memory-mapped (bf16 included) and written one tensor at a time.

A file is: u64 little-endian header size N, N bytes of JSON {name: {dtype, shape,
data_offsets: [begin, end]}}, then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """name -> read-only array view into the memory-mapped file (no tensor data is read yet)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    except (OSError, struct.error, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        if end > data.size:
            raise ValueError(f"{path}: tensor {name} runs past the end of the file (truncated?)")
        dtype = _DTYPES[info["dtype"]]
        tensors[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return tensors


TensorSpec = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def write_safetensors(path: Path, tensors: Iterable[TensorSpec]) -> None:
    """Writes (name, shape, dtype, make_array) entries, materialising one array at a time; the
    file appears complete or not at all (written beside, then renamed)."""
    tensors = list(tensors)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype, _ in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {
            "dtype": _NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, make in tensors:
            array = np.ascontiguousarray(make(), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"{path}: {name} has shape {array.shape}, expected {shape}")
            f.write(array.tobytes())
    os.replace(partial, path)
