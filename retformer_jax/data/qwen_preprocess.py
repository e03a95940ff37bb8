"""Qwen2-VL / Qwen2.5-VL inputs: images as the released RetLLM code prepares them (qwen_vl_utils,
then `Qwen2VLImageProcessorPil`), and the chat prompt of the scorer through the folder's tokenizer.

    proc = QwenImageProcessor.from_folder(path, min_pixels=256 * 28 * 28, max_pixels=512 * 28 * 28)
    patches, grid_thw = proc(image_uint8_hwc)      # float32 [N, C*T*P*P], int64 [3]
    prompter = QwenPrompter(tokenizer, image_token_id)
    ids = prompter.pair_ids(caption, num_image_tokens=grid_thw.prod() // 4)

Images: by default first resized as `qwen_vl_utils.fetch_image` does (PIL bicubic to multiples
of 28 within its own [4, 16384] * 28^2 pixel bounds), since the released RetLLM code loads every
image that way; `pre_resize=False` skips that step. Then, as the processor: resize so both sides
are multiples of patch * merge and the area lies within [min_pixels, max_pixels] (`smart_resize`,
PIL bicubic), rescale, normalise, flatten into patches in the processor's block-major order.
Same operations, order and precision as transformers, so the pixels are identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
from PIL import Image

from retformer_jax.data import rgb

MATCH_PROMPT = "Does the image match the caption: <{caption}>? Please directly output True or False"
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int, min_pixels: int,
                 max_pixels: int) -> tuple[int, int]:
  """Height and width, multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"Image {height}x{width}: aspect ratio must be below 200.")
  h = round(height / factor) * factor
  w = round(width / factor) * factor
  if h * w > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h = max(factor, math.floor(height / beta / factor) * factor)
    w = max(factor, math.floor(width / beta / factor) * factor)
  elif h * w < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h = math.ceil(height * beta / factor) * factor
    w = math.ceil(width * beta / factor) * factor
  return h, w


def fetch_image_size(height: int, width: int, factor: int = 28, min_pixels: int = 4 * 28 * 28,
                     max_pixels: int = 16384 * 28 * 28) -> tuple[int, int]:
  """The size `qwen_vl_utils.fetch_image` resizes an image to (its defaults): `smart_resize`,
  except that a rounded side is at least `factor` (thin images differ) and a shrunk one is not."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"Image {height}x{width}: aspect ratio must be below 200.")
  h = max(factor, round(height / factor) * factor)
  w = max(factor, round(width / factor) * factor)
  if h * w > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h = math.floor(height / beta / factor) * factor
    w = math.floor(width / beta / factor) * factor
  elif h * w < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h = math.ceil(height * beta / factor) * factor
    w = math.ceil(width * beta / factor) * factor
  return h, w


@dataclasses.dataclass(frozen=True)
class QwenImageProcessor:
  min_pixels: int = 56 * 56
  max_pixels: int = 28 * 28 * 1280
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  image_mean: tuple[float, ...] = _CLIP_MEAN
  image_std: tuple[float, ...] = _CLIP_STD
  rescale_factor: float = 1 / 255
  resample: int = 3  # PIL bicubic
  # The released code loads images through qwen_vl_utils, which first resizes them (bicubic) to
  # multiples of 28 within [4, 16384] * 28^2 pixels; True (default) repeats that step, False
  # gives the HF processor's pixels alone.
  pre_resize: bool = True

  def __post_init__(self):
    if not 0 < self.min_pixels <= self.max_pixels:
      raise ValueError(f"min_pixels={self.min_pixels} / max_pixels={self.max_pixels}: need "
                       "0 < min_pixels <= max_pixels.")

  @classmethod
  def from_folder(cls, path: str, *, min_pixels: int | None = None,
                  max_pixels: int | None = None, pre_resize: bool = True) -> "QwenImageProcessor":
    """From `preprocessor_config.json`; min/max_pixels arguments override the file."""
    file = os.path.join(path, "preprocessor_config.json")
    if not os.path.exists(file):
      raise FileNotFoundError(f"{file} is missing: a Qwen-VL folder needs its image processor "
                              "config beside the weights.")
    with open(file) as f:
      d = json.load(f)
    size = d.get("size") or {}
    lo = min_pixels or d.get("min_pixels") or size.get("shortest_edge") or cls.min_pixels
    hi = max_pixels or d.get("max_pixels") or size.get("longest_edge") or cls.max_pixels
    return cls(min_pixels=int(lo), max_pixels=int(hi),
               patch_size=int(d.get("patch_size", 14)),
               temporal_patch_size=int(d.get("temporal_patch_size", 2)),
               merge_size=int(d.get("merge_size", 2)),
               image_mean=tuple(float(v) for v in d.get("image_mean", _CLIP_MEAN)),
               image_std=tuple(float(v) for v in d.get("image_std", _CLIP_STD)),
               rescale_factor=float(d.get("rescale_factor", 1 / 255)),
               resample=int(d.get("resample", 3)), pre_resize=pre_resize)

  def __call__(self, image) -> tuple[np.ndarray, np.ndarray]:
    """One image -> (patches float32 [N, 3*T*P*P], grid_thw int64 [3])."""
    x = rgb.to_rgb_uint8(image, "Qwen image preprocessing")
    if self.pre_resize:
      h, w = fetch_image_size(x.shape[0], x.shape[1])
      x = np.asarray(Image.fromarray(x).resize((w, h), resample=Image.Resampling.BICUBIC))
    h, w = smart_resize(x.shape[0], x.shape[1], self.patch_size * self.merge_size,
                        self.min_pixels, self.max_pixels)
    x = np.asarray(Image.fromarray(x).resize((w, h), resample=Image.Resampling(self.resample)))
    x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
    x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
    x = x.transpose(2, 0, 1)  # CHW
    p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
    gh, gw = h // p, w // p
    x = x.reshape(3, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (t, p, p))
    return (np.ascontiguousarray(x.reshape(gh * gw, 3 * t * p * p), np.float32),
            np.array([1, gh, gw], np.int64))


class QwenPrompter:
  """Token ids of the scoring prompt: chat [image, match question] + generation prompt."""

  def __init__(self, tokenizer, image_token_id: int, template: str = MATCH_PROMPT,
               chat_template: str | None = None):
    self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
    if not self.chat_template:
      raise ValueError("The tokenizer has no chat template; the Qwen-VL folder needs "
                       "chat_template.jinja / chat_template.json (or chat_template in "
                       "tokenizer_config.json).")
    self.tokenizer = tokenizer
    self.image_token_id = int(image_token_id)
    self.template = template
    true_id = tokenizer.convert_tokens_to_ids("True")
    if true_id is None or true_id == getattr(tokenizer, "unk_token_id", None):
      raise ValueError("The tokenizer has no single token 'True'; the score reads P('True').")
    self.true_id = int(true_id)

  @staticmethod
  def folder_chat_template(path: str) -> str | None:
    """The processor's chat template saved beside the weights (chat_template.json), if any."""
    file = os.path.join(path, "chat_template.json")
    if not os.path.exists(file):
      return None
    with open(file) as f:
      return json.load(f).get("chat_template")

  def text(self, caption: str) -> str:
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": self.template.format(caption=caption)}]}]
    return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                              tokenize=False, add_generation_prompt=True)

  def pair_ids(self, caption: str, num_image_tokens: int) -> np.ndarray:
    """int32 ids with the single image placeholder expanded to `num_image_tokens` copies."""
    ids = np.asarray(self.tokenizer(self.text(caption), add_special_tokens=False)["input_ids"])
    where = np.flatnonzero(ids == self.image_token_id)
    if where.size != 1:
      raise ValueError(f"The chat template gave {where.size} image placeholders "
                       f"(token {self.image_token_id}); it must give exactly one.")
    i = int(where[0])
    return np.concatenate([ids[:i], np.full(num_image_tokens, self.image_token_id),
                           ids[i + 1:]]).astype(np.int32)
