"""Reads and writes HuggingFace safetensors with NumPy only: no torch, no pickle.

Tensors are memory-mapped, so a 7B checkpoint is read one tensor at a time. bfloat16 and
float8 come back as `ml_dtypes` arrays.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from retformer_jax import atomic_io, errors

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(errors.UserError, ValueError):
  pass


def _read_header(path: str) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise SafetensorsError(f"{path}: not a safetensors file (shorter than 8 bytes).")
    (n,) = struct.unpack("<Q", raw)
    if n > 100_000_000:
      raise SafetensorsError(f"{path}: not a safetensors file (header length {n}).")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise SafetensorsError(f"{path}: corrupt safetensors header ({e}).") from e
  return header, 8 + n


class SafetensorsFile:
  """One .safetensors file; `get(name)` memory-maps a single tensor."""

  def __init__(self, path: str):
    self.path = path
    header, self._data_start = _read_header(path)
    self.metadata = header.pop("__metadata__", {}) or {}
    self._entries = header
    self._size = os.path.getsize(path)

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    e = self._entries[name]
    if e["dtype"] not in _DTYPES:
      raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {e['dtype']}.")
    dtype = _DTYPES[e["dtype"]]
    begin, end = e["data_offsets"]
    shape = tuple(e["shape"])
    count = int(np.prod(shape)) if shape else 1
    if end - begin != count * dtype.itemsize or self._data_start + end > self._size:
      raise SafetensorsError(f"{self.path}: tensor {name!r} is truncated or corrupt.")
    if count == 0:
      return np.zeros(shape, dtype)
    arr = np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + begin,
                    shape=(count,))
    return arr.reshape(shape)


class SafetensorsFolder:
  """All tensors of a HuggingFace folder: a sharded `*.safetensors.index.json`, else
  `model.safetensors`, else every `*.safetensors` file in it."""

  def __init__(self, folder: str):
    if not os.path.isdir(folder):
      raise FileNotFoundError(
          f"Model folder {folder!r} does not exist. Give a local HuggingFace folder holding "
          "config.json and *.safetensors (e.g. from `huggingface-cli download ORG/NAME "
          "--local-dir DIR`).")
    self.folder = folder
    index = [f for f in os.listdir(folder) if f.endswith(".safetensors.index.json")]
    files: list[str]
    if index:
      with open(os.path.join(folder, index[0])) as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
      # As transformers does; e.g. laion/* repos also hold open_clip_model.safetensors, the
      # same weights under OpenCLIP's own names.
      files = ["model.safetensors"]
    else:
      files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
      pickled = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
      hint = (f" It holds pickled weights ({pickled[0]}), which are never read for safety: "
              "re-save them as safetensors (`model.save_pretrained(dir, "
              "safe_serialization=True)` in transformers).") if pickled else ""
      raise FileNotFoundError(f"No *.safetensors weights in {folder!r}.{hint}")
    self._files: dict[str, SafetensorsFile] = {}
    self._where: dict[str, SafetensorsFile] = {}
    for fname in files:
      path = os.path.join(folder, fname)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{folder!r}: the index lists shard {fname!r} but it is missing.")
      sf = SafetensorsFile(path)
      self._files[fname] = sf
      for k in sf.keys():
        self._where[k] = sf

  def keys(self) -> list[str]:
    return list(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def shape(self, name: str) -> tuple[int, ...]:
    return self._where[name].shape(name)

  def get(self, name: str) -> np.ndarray:
    return self._where[name].get(name)


def save_file(tensors: Mapping[str, np.ndarray], path: str,
              metadata: Mapping[str, str] | None = None) -> None:
  """Writes tensors atomically (temporary file, then rename)."""
  header: dict = {}
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  offset = 0
  arrays = []
  for name in sorted(tensors):
    a = np.asarray(tensors[name], order="C")  # keeps 0-d tensors 0-d
    if a.dtype not in _NAMES:
      raise SafetensorsError(f"Cannot store tensor {name!r} of dtype {a.dtype}.")
    header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  with atomic_io.replacing(path) as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for a in arrays:
      f.write(a.tobytes())

