"""Public loaders for HuggingFace-format model folders (config.json + *.safetensors).

    from retformer_jax.convert import hf
    model, params = hf.load_clip("path/to/hf_clip_folder")
    model, params = hf.load_siglip("path/to/hf_siglip_folder")
    family, model, params = hf.load_image_text_encoder("path/to/clip_or_siglip_folder")
    model, params = hf.load_qwen2_5_vl("path/to/hf_qwen_folder")

Weights are read with NumPy (no torch, no pickle) and checked tensor by tensor.
"""

from __future__ import annotations

import json
import os

from retformer_jax import errors
from retformer_jax.convert import clip_import, qwen_import, siglip_import

# config.json model_type -> encoder family (the name the KB stores record).
ENCODER_FAMILIES = {"clip": "clip", "siglip": "siglip"}


class EncoderFolderError(errors.UserError, ValueError):
  pass


def load_clip(path: str, **kwargs):
  """Flax CLIP (linen module, params pytree) from a HF CLIP or OpenCLIP-in-HF-format folder."""
  return clip_import.load_clip(path, **kwargs)


def load_siglip(path: str, **kwargs):
  """Flax SigLIP (linen module, params pytree) from a HF SiglipModel folder (SigLIP, or SigLIP 2
  at fixed resolution)."""
  return siglip_import.load_siglip(path, **kwargs)


def encoder_family(path: str) -> str:
  """"clip" or "siglip", from the folder's config.json `model_type`."""
  cfg = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"Encoder folder {path!r} does not exist. Give a local HuggingFace CLIP or SigLIP "
        "folder (config.json + *.safetensors).")
  try:
    with open(cfg) as f:
      model_type = json.load(f).get("model_type", "clip")
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{cfg} is missing: an encoder folder needs the config.json saved with the weights "
        "(transformers `save_pretrained` writes it).") from None
  except ValueError as e:
    raise EncoderFolderError(f"{cfg} is not valid JSON ({e}).") from e
  if model_type == "siglip2":
    raise EncoderFolderError(
        f"{cfg} has model_type 'siglip2' (NaFlex SigLIP 2), which is not supported; use a "
        "fixed-resolution SigLIP 2 folder (model_type 'siglip', e.g. "
        "google/siglip2-base-patch16-224), a SigLIP or a CLIP one.")
  if model_type not in ENCODER_FAMILIES:
    raise EncoderFolderError(f"{cfg} has model_type {model_type!r}; config.clip.path takes a "
                             "CLIP (model_type 'clip') or SigLIP (model_type 'siglip') folder.")
  return ENCODER_FAMILIES[model_type]


def load_image_text_encoder(path: str, **kwargs):
  """(family, linen module, params) for a CLIP or SigLIP folder, chosen by its model_type.
  Both modules have `encode_image(pixels_bhwc)` and `encode_text(ids, mask)`."""
  family = encoder_family(path)
  loader = load_clip if family == "clip" else load_siglip
  model, params = loader(path, **kwargs)
  return family, model, params


def load_qwen2_5_vl(path: str, **kwargs):
  """Flax Qwen2.5-VL or Qwen2-VL (linen module, params pytree) from a HF folder."""
  return qwen_import.load_qwen2_5_vl(path, **kwargs)
