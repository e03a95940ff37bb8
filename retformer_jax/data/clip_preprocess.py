"""CLIP inputs from a HF folder: images as `CLIPImageProcessorPil` prepares them, texts through
the folder's tokenizer.

    pre = ClipPreprocessor.from_folder(path)
    pixels_bhwc = pre.images(list_of_uint8_hwc)          # float32 [B, H, W, 3], normalised
    ids_bt, mask_bt = pre.texts(["a photo of a cat."])    # int32 [B, max_length] each

Images: resize (shortest edge, PIL resampling from the config, bicubic by default), center crop
(zero padding when the image is smaller than the crop), rescale, normalise — the same operations
in the same order and precision as transformers, so the pixels are identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from retformer_jax.data import rgb

# transformers' CLIPImageProcessorPil defaults (used when preprocessor_config.json omits a key).
_DEFAULTS = {
    "do_resize": True, "size": {"shortest_edge": 224}, "resample": 3,
    "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True,
}


@dataclasses.dataclass(frozen=True)
class ImageTransform:
  """The image half of a `preprocessor_config.json`."""

  do_resize: bool
  size: dict
  resample: int
  do_center_crop: bool
  crop_size: dict
  do_rescale: bool
  rescale_factor: float
  do_normalize: bool
  image_mean: tuple[float, float, float]
  image_std: tuple[float, float, float]
  do_convert_rgb: bool

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ImageTransform":
    v = {k: d.get(k, default) for k, default in _DEFAULTS.items()}
    if isinstance(v["size"], int):  # legacy: an int size means the shortest edge
      v["size"] = {"shortest_edge": v["size"]}
    if isinstance(v["crop_size"], int):
      v["crop_size"] = {"height": v["crop_size"], "width": v["crop_size"]}
    for key in ("image_mean", "image_std"):
      x = v[key]
      v[key] = tuple(float(a) for a in (x if isinstance(x, (list, tuple)) else [x] * 3))
    return cls(**v)

  def output_hw(self) -> tuple[int, int] | None:
    """Height and width of every output image, if fixed by the config."""
    if self.do_center_crop:
      return int(self.crop_size["height"]), int(self.crop_size["width"])
    if self.do_resize and "height" in self.size:
      return int(self.size["height"]), int(self.size["width"])
    return None

  def _resize_hw(self, h: int, w: int) -> tuple[int, int]:
    s = self.size
    if s.get("shortest_edge") and s.get("longest_edge"):
      raise ValueError("preprocessor_config.json: size with both shortest_edge and longest_edge "
                       "is not a CLIP setting; use {'shortest_edge': N}.")
    if s.get("shortest_edge"):
      short, long = (w, h) if w <= h else (h, w)
      new_short, new_long = s["shortest_edge"], int(s["shortest_edge"] * long / short)
      return (new_long, new_short) if w <= h else (new_short, new_long)
    if s.get("height") and s.get("width"):
      return int(s["height"]), int(s["width"])
    raise ValueError(f"preprocessor_config.json: unsupported size {s}; use {{'shortest_edge': N}} "
                     "or {'height': H, 'width': W}.")

  def __call__(self, image) -> np.ndarray:
    """One image (uint8 HWC / HW array or PIL image) -> float32 [H, W, 3]."""
    x = (rgb.to_rgb_uint8(image, "CLIP preprocessing") if self.do_convert_rgb
         else np.asarray(image))
    if self.do_resize:
      h, w = self._resize_hw(*x.shape[:2])
      x = np.asarray(Image.fromarray(x).resize((w, h), resample=Image.Resampling(self.resample)))
      if x.ndim == 2:
        x = x[..., None]
    if self.do_center_crop:
      x = _center_crop(x, int(self.crop_size["height"]), int(self.crop_size["width"]))
    if self.do_rescale:
      x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
    if self.do_normalize:
      x = x.astype(np.float32) if not np.issubdtype(x.dtype, np.floating) else x
      x = (x - np.asarray(self.image_mean, x.dtype)) / np.asarray(self.image_std, x.dtype)
    return np.asarray(x, np.float32)


def _center_crop(x_hwc: np.ndarray, ch: int, cw: int) -> np.ndarray:
  h, w = x_hwc.shape[:2]
  top, left = (h - ch) // 2, (w - cw) // 2
  if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
    return x_hwc[top:top + ch, left:left + cw]
  nh, nw = max(ch, h), max(cw, w)  # too small: zero-pad around it first
  pad = np.zeros((nh, nw) + x_hwc.shape[2:], x_hwc.dtype)
  tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
  pad[tp:tp + h, lp:lp + w] = x_hwc
  top, left = top + tp, left + lp
  return pad[max(0, top):min(nh, top + ch), max(0, left):min(nw, left + cw)]


class ClipPreprocessor:
  """Image transform and tokenizer of one CLIP folder."""

  def __init__(self, transform: ImageTransform, tokenizer, max_length: int):
    self.transform = transform
    self.tokenizer = tokenizer
    self.max_length = max_length
    if tokenizer.pad_token is None:
      raise ValueError("The CLIP tokenizer has no pad token; set pad_token in "
                       "tokenizer_config.json (CLIP uses <|endoftext|>).")

  @classmethod
  def from_folder(cls, path: str, max_length: int | None = None) -> "ClipPreprocessor":
    """Reads preprocessor_config.json, the tokenizer files and config.json of `path`."""
    proc_file = os.path.join(path, "preprocessor_config.json")
    if not os.path.exists(proc_file):
      raise FileNotFoundError(f"{proc_file} is missing: a CLIP folder needs the image "
                              "processor config saved beside the weights.")
    with open(proc_file) as f:
      transform = ImageTransform.from_dict(json.load(f))
    with open(os.path.join(path, "config.json")) as f:
      text_cfg = json.load(f).get("text_config") or {}
    limit = int(text_cfg.get("max_position_embeddings", 77))
    if max_length is not None and max_length > limit:
      raise ValueError(f"max_length {max_length} exceeds the text tower's "
                       f"max_position_embeddings {limit}.")
    # `transformers` is imported on use: it is slow to import and only this loader needs it.
    from transformers import AutoTokenizer

    try:
      tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
      raise FileNotFoundError(f"No usable tokenizer in {path!r} ({e}); a CLIP folder needs its "
                              "tokenizer files (tokenizer.json / vocab.json + merges.txt).") from e
    return cls(transform, tokenizer, max_length or limit)

  @property
  def image_hw(self) -> tuple[int, int] | None:
    return self.transform.output_hw()

  def images(self, images: Sequence) -> np.ndarray:
    """uint8 HWC arrays (any sizes) or PIL images -> float32 [B, H, W, 3]."""
    out = [self.transform(im) for im in images]
    if not out:
      hw = self.image_hw or (0, 0)
      return np.zeros((0, *hw, 3), np.float32)
    return np.stack(out)

  def texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (input_ids, attention_mask), int32 [B, max_length], padded and truncated."""
    enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                         max_length=self.max_length, return_tensors="np")
    return (np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32))
