"""SigLIP inputs from a HF folder: images as `SiglipImageProcessorPil` prepares them, texts through
the folder's tokenizer padded to the text tower's length, as the models were trained.

    pre = SiglipPreprocessor.from_folder(path)
    pixels_bhwc = pre.images(list_of_uint8_hwc)          # float32 [B, H, W, 3], normalised
    ids_bt, mask_bt = pre.texts(["a photo of a cat."])    # int32 [B, 64]; mask all ones

Images: resize to `size` (height x width, no aspect ratio kept, no crop; PIL bicubic by default),
rescale, normalise with mean = std = 0.5 — the transform of `clip_preprocess.ImageTransform`
with SigLIP's defaults, so the pixels are identical to transformers'.

Texts: `padding="max_length"` to max_position_embeddings (64), truncated. The mask is all ones:
the released models attend to the padding and pool the last position, so it must not be masked.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from retformer_jax.data.clip_preprocess import ImageTransform

# transformers' SiglipImageProcessorPil defaults (used when preprocessor_config.json omits a key).
_DEFAULTS = {
    "do_resize": True, "size": {"height": 224, "width": 224}, "resample": 3,
    "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": True,
}


def image_transform(d: dict) -> ImageTransform:
  """The image half of a SigLIP `preprocessor_config.json`."""
  d = {**_DEFAULTS, **{k: v for k, v in d.items() if v is not None}}
  if isinstance(d["size"], int):  # legacy: an int size means a square
    d["size"] = {"height": d["size"], "width": d["size"]}
  return ImageTransform.from_dict(d)


class SiglipPreprocessor:
  """Image transform and tokenizer of one SigLIP folder."""

  def __init__(self, transform: ImageTransform, tokenizer, max_length: int):
    self.transform = transform
    self.tokenizer = tokenizer
    self.max_length = max_length
    if tokenizer.pad_token is None:
      raise ValueError("The SigLIP tokenizer has no pad token; set pad_token in "
                       "tokenizer_config.json (SigLIP pads to max_length with it).")

  @classmethod
  def from_folder(cls, path: str) -> "SiglipPreprocessor":
    """Reads preprocessor_config.json, the tokenizer files and config.json of `path`."""
    proc_file = os.path.join(path, "preprocessor_config.json")
    if not os.path.exists(proc_file):
      raise FileNotFoundError(f"{proc_file} is missing: a SigLIP folder needs the image "
                              "processor config saved beside the weights.")
    with open(proc_file) as f:
      transform = image_transform(json.load(f))
    with open(os.path.join(path, "config.json")) as f:
      text_cfg = json.load(f).get("text_config") or {}
    max_length = int(text_cfg.get("max_position_embeddings", 64))
    # `transformers` is imported on use: it is slow to import and only this loader needs it.
    from transformers import AutoTokenizer

    try:
      tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
      raise FileNotFoundError(f"No usable tokenizer in {path!r} ({e}); a SigLIP folder needs its "
                              "tokenizer files (spiece.model or tokenizer.json).") from e
    return cls(transform, tokenizer, max_length)

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
    """Strings -> (input_ids, attention_mask), int32 [B, max_length]; the mask is all ones."""
    enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                         max_length=self.max_length, return_tensors="np")
    ids = np.asarray(enc["input_ids"], np.int32)
    return ids, np.ones_like(ids)
