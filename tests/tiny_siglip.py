"""Tiny random HF SigLIP folders for tests, written with transformers' `save_pretrained`:
weights, the PIL image processor's config and a small word-level tokenizer (nothing is
downloaded)."""

from __future__ import annotations

import numpy as np

# name -> SiglipConfig keyword arguments of a tiny variant
VARIANTS = {
    # tanh GELU (the released models), 30 px images, 6 px patches, 16 text positions.
    "tanh_gelu": dict(vision_act="gelu_pytorch_tanh", text_act="gelu_pytorch_tanh",
                      image_size=30, patch_size=6, max_pos=16, layers=2),
    # exact GELU, 34 px images with 8 px patches (the last 2 px unseen, as 384 px with 14 px
    # patches), 12 text positions, 3 layers.
    "gelu": dict(vision_act="gelu", text_act="quick_gelu", image_size=34, patch_size=8,
                 max_pos=12, layers=3),
}


def hf_config(*, vision_act="gelu_pytorch_tanh", text_act="gelu_pytorch_tanh", image_size=30,
              patch_size=6, max_pos=16, layers=2, vocab_size=99):
  import transformers

  return transformers.SiglipConfig(
      text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37,
                       num_hidden_layers=layers, num_attention_heads=4,
                       max_position_embeddings=max_pos, hidden_act=text_act,
                       projection_size=48, pad_token_id=0, bos_token_id=2,
                       eos_token_id=3),
      vision_config=dict(hidden_size=48, intermediate_size=40, num_hidden_layers=layers,
                         num_attention_heads=6, image_size=image_size, patch_size=patch_size,
                         hidden_act=vision_act))


def save_hf_siglip(folder, seed=0, corpus=("a photo of a cat", "a photo of a dog"), **kw):
  """Writes a random SiglipModel, its image processor and a word-level tokenizer to `folder`;
  returns the torch model (eval mode)."""
  import torch
  import transformers

  from retformer_jax.demo import tokenizers

  torch.manual_seed(seed)
  cfg = hf_config(**kw)
  model = transformers.SiglipModel(cfg).eval()
  # Non-trivial LayerNorm, bias and logit values, so that every mapped tensor matters.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "layernorm" in name or "layer_norm" in name:
        p.add_(0.1 * torch.randn_like(p))
    model.logit_scale.fill_(2.3)
    model.logit_bias.fill_(-4.0)
  model.save_pretrained(folder)
  size = cfg.vision_config.image_size
  transformers.SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(
      folder)
  tokenizers.write_clip_tokenizer(folder, list(corpus),
                                  model_max_length=cfg.text_config.max_position_embeddings)
  return model


def random_ids(batch, length, *, vocab=99, seed=0):
  return np.random.default_rng(seed).integers(1, vocab, size=(batch, length)).astype(np.int64)
