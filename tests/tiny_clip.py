"""Tiny random HF CLIP folders for tests, written with transformers' `save_pretrained`."""

from __future__ import annotations

import numpy as np


def hf_config(*, vision_act="quick_gelu", text_act="gelu", image_size=30, patch_size=6,
              eos_token_id=98, vocab_size=99, layers=2):
  import transformers

  return transformers.CLIPConfig(
      text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37,
                       num_hidden_layers=layers, num_attention_heads=4,
                       max_position_embeddings=16, hidden_act=text_act,
                       eos_token_id=eos_token_id, bos_token_id=vocab_size - 2, pad_token_id=0),
      vision_config=dict(hidden_size=48, intermediate_size=40, num_hidden_layers=layers,
                         num_attention_heads=6, image_size=image_size, patch_size=patch_size,
                         hidden_act=vision_act),
      projection_dim=24)


def save_hf_clip(folder, seed=0, **kw):
  """Writes a random CLIPModel to `folder`; returns the torch model (eval mode)."""
  import torch
  import transformers

  torch.manual_seed(seed)
  model = transformers.CLIPModel(hf_config(**kw)).eval()
  # Non-trivial LayerNorm and bias values, so that every mapped tensor matters.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "layer_norm" in name or "layernorm" in name \
          or "layrnorm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(folder)
  return model


def padded_ids(lengths, total, *, bos, eos, pad, token_range, seed=0):
  """A right-padded batch: bos, random tokens in `token_range`, eos, pad... and its mask."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), total), pad, np.int64)
  mask = np.zeros((len(lengths), total), np.int64)
  for i, n in enumerate(lengths):
    ids[i, 0] = bos
    ids[i, 1:n - 1] = rng.integers(*token_range, size=n - 2)
    ids[i, n - 1] = eos
    mask[i, :n] = 1
  return ids, mask
