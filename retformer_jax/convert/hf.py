"""Public loaders for HuggingFace-format model folders (config.json + *.safetensors).

    from retformer_jax.convert import hf
    model, params = hf.load_clip("path/to/hf_clip_folder")
    model, params = hf.load_qwen2_5_vl("path/to/hf_qwen_folder")

Weights are read with NumPy (no torch, no pickle) and checked tensor by tensor.
"""

from __future__ import annotations

from retformer_jax.convert import clip_import, qwen_import


def load_clip(path: str, **kwargs):
  """Flax CLIP (linen module, params pytree) from a HF CLIP or OpenCLIP-in-HF-format folder."""
  return clip_import.load_clip(path, **kwargs)


def load_qwen2_5_vl(path: str, **kwargs):
  """Flax Qwen2.5-VL or Qwen2-VL (linen module, params pytree) from a HF folder."""
  return qwen_import.load_qwen2_5_vl(path, **kwargs)
