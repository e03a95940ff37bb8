"""Images to RGB uint8 HWC, the way transformers' image processors convert them."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb_uint8(image, who: str = "image preprocessing") -> np.ndarray:
  """uint8 [H, W, 3] from a PIL image or a uint8 [H, W], [H, W, 1|3|4] array; transparency is
  composited onto white (PIL alpha_composite, as transformers does), grey is repeated."""
  if isinstance(image, Image.Image):
    if image.mode == "RGB":
      return np.asarray(image)
    if "A" not in image.getbands() and image.info.get("transparency") is None:
      return np.asarray(image.convert("RGB"))
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
  x = np.asarray(image)
  if x.dtype != np.uint8:
    raise ValueError(f"{who} takes uint8 images or PIL images; got dtype {x.dtype}.")
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{who} takes images [H, W] or [H, W, 1|3|4]; got shape {x.shape}.")
  if x.shape[-1] == 1:
    return np.repeat(x, 3, axis=-1)
  if x.shape[-1] == 4:
    return to_rgb_uint8(Image.fromarray(x, "RGBA"), who)
  return x
