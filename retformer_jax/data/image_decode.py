"""Image decoding: encoded bytes (JPEG, PNG, WebP, ...) to uint8 RGB arrays, with PIL."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def decode_image(data: bytes) -> np.ndarray:
  """Encoded image -> uint8 [H, W, 3] RGB (grey, CMYK and palette images are converted; an
  alpha channel is dropped). Bad bytes raise PIL's own error, whose type names the problem."""
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)
