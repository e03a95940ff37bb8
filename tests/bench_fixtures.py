"""Small helpers for the benchmark-reader tests: images written by hand, not by the demo."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def image(path, value: int, size=(5, 7)) -> np.ndarray:
  """Writes a flat-coloured PNG/JPEG-named image (PNG bytes keep the pixels exact)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  arr = np.full((*size, 3), value, np.uint8)
  Image.fromarray(arr).save(path, format="PNG")
  return arr


def dump(path, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)
