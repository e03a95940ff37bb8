"""A tiny random CLIP written as a complete HuggingFace folder, without torch.

The demo config (`clip.path == ""`) builds it once in the workdir and then loads it through the
same path as real checkpoints: `hf.load_clip`, `AutoTokenizer`, `preprocessor_config.json`.
The tokenizer is a word-level vocabulary of the given corpus (class prompts and captions).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np
from flax import traverse_util

from retformer_jax import atomic_io
from retformer_jax.convert.clip_import import save_clip
from retformer_jax.demo import tokenizers
from retformer_jax.models.clip import CLIP, abstract_params
from retformer_jax.models.clip_config import ClipConfig, TextConfig, VisionConfig

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "preprocessor_config.json", "demo_clip.json")
MAX_TEXT_LENGTH = 77
# OpenAI CLIP normalisation constants, as transformers' OPENAI_CLIP_MEAN / _STD.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def demo_config(vocab_size: int, image_size: int, *, width: int = 64, layers: int = 2,
                patch_size: int = 4, max_text_length: int = MAX_TEXT_LENGTH) -> ClipConfig:
  heads = max(1, width // 32)
  tower = dict(hidden_size=width, intermediate_size=4 * width, num_layers=layers,
               num_heads=heads, hidden_act="quick_gelu")
  return ClipConfig(
      vision=VisionConfig(**tower, image_size=image_size, patch_size=patch_size),
      text=TextConfig(**tower, vocab_size=vocab_size, max_position_embeddings=max_text_length,
                      eos_token_id=tokenizers.CLIP_SPECIALS.index(tokenizers.CLIP_EOS),
                      bos_token_id=tokenizers.CLIP_SPECIALS.index(tokenizers.CLIP_BOS),
                      pad_token_id=tokenizers.CLIP_SPECIALS.index(tokenizers.CLIP_PAD)),
      projection_dim=width, scan_layers=True)


def random_params(model: CLIP, seed: int) -> dict:
  """Random CLIP weights drawn with NumPy in a fixed order (no compilation, so building the demo
  folder takes milliseconds): LayerNorms at identity, zero biases, kernels ~ N(0, 1/fan_in)."""
  rng = np.random.default_rng(seed)
  scanned = model.config.scan_layers
  out = {}
  for path, leaf in sorted(traverse_util.flatten_dict(abstract_params(model), sep="/").items()):
    name = path.rsplit("/", 1)[-1]
    shape = leaf.shape[1:] if scanned and "/layers/" in path else leaf.shape
    if name == "logit_scale":
      x = np.full(leaf.shape, model.config.logit_scale_init_value)
    elif name == "scale":
      x = np.ones(leaf.shape)
    elif name.endswith("bias"):
      x = np.zeros(leaf.shape)
    elif name in ("token_embedding", "position_embedding"):
      x = 0.02 * rng.standard_normal(leaf.shape)
    else:
      n_in = {"o_kernel": 2, "patch_kernel": 3, "class_embedding": 1}.get(name, 1)
      x = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(shape[:n_in]))
    out[path] = x.astype(leaf.dtype)
  return traverse_util.unflatten_dict(out, sep="/")


def _spec(corpus, image_size, seed, kw) -> dict:
  digest = hashlib.sha256("\n".join(corpus).encode()).hexdigest()
  return {"corpus_sha256": digest, "image_size": image_size, "seed": seed, **kw}


def _is_complete(folder: str, spec: dict) -> bool:
  if not all(os.path.exists(os.path.join(folder, f)) for f in FILES):
    return False
  with open(os.path.join(folder, "demo_clip.json")) as f:
    return json.load(f) == spec


def _write(folder: str, corpus, image_size: int, seed: int, kw: dict, spec: dict) -> None:
  vocab_size = tokenizers.write_clip_tokenizer(folder, corpus, model_max_length=MAX_TEXT_LENGTH)
  model = CLIP(demo_config(vocab_size, image_size, **kw))
  save_clip(model, random_params(model, seed), folder)
  atomic_io.write_json(os.path.join(folder, "preprocessor_config.json"), {
      "image_processor_type": "CLIPImageProcessor",
      "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
      "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
      "do_rescale": True, "rescale_factor": 1 / 255,
      "do_normalize": True, "image_mean": list(MEAN), "image_std": list(STD),
      "do_convert_rgb": True,
  })
  atomic_io.write_json(os.path.join(folder, "demo_clip.json"), spec)


def build_demo_clip(folder: str, corpus: Sequence[str], *, image_size: int = 32, seed: int = 0,
                    width: int = 64, layers: int = 2, patch_size: int = 4) -> str:
  """Writes (or reuses) a tiny random CLIP HF folder at `folder`; returns `folder`.

  Deterministic in (corpus, image_size, seed, sizes). Built in a temporary directory and moved
  into place, so a crash never leaves a half-written folder; an existing complete folder with
  the same inputs is reused, one built from other inputs is replaced.
  """
  if not corpus:
    raise ValueError("build_demo_clip needs a non-empty text corpus for its tokenizer.")
  kw = dict(width=width, layers=layers, patch_size=patch_size)
  spec = _spec(list(corpus), image_size, seed, kw)
  return atomic_io.build_folder(
      folder, lambda f: _is_complete(f, spec),
      lambda tmp: _write(tmp, list(corpus), image_size, seed, kw, spec))
