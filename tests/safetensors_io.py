"""A reader of the safetensors format (8-byte header length, JSON header, raw data), so the
tests can load stored weights into PyTorch without another dependency."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}


def load(path: Path) -> dict[str, torch.Tensor]:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + header_len])
    data = raw[8 + header_len:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        tensor = torch.frombuffer(bytearray(data[start:end]), dtype=DTYPES[meta["dtype"]])
        out[name] = tensor.reshape(meta["shape"])
    return out
