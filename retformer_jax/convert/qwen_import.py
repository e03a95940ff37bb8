"""Weight import for Qwen2.5-VL and Qwen2-VL HF folders (config.json + safetensors, no torch).

Both tensor layouts are read: the hub one (`model.layers.*`, `visual.*`, as on
Qwen/Qwen2.5-VL-7B-Instruct and as transformers 5.x `save_pretrained` writes it) and the
transformers 4.5x in-memory one (`model.language_model.*`, `model.visual.*`). Missing,
unexpected and mis-shaped tensors are errors that name them.
"""

from __future__ import annotations

import json
import os

import numpy as np

from retformer_jax.convert import mapping, safetensors_io
from retformer_jax.models import qwen2_5_vl
from retformer_jax.models.qwen_config import QwenVLConfig


class FlatConv(mapping.Hook):
  """torch Conv3d weight [out, C, T, P, P] -> our matmul kernel [C*T*P*P, out]."""

  def to_ours(self, x, shape):
    x = np.asarray(x)
    return x.reshape(x.shape[0], -1).T.reshape(shape)

  def to_hf(self, y, hf_shape):
    return np.asarray(y).T.reshape(hf_shape)

  def hf_shape(self, shape):
    return (shape[1], shape[0])


def _linear(n_in=1):
  return mapping.Linear(n_in=n_in)


_RESHAPE = mapping.Reshape()
_B = "visual.blocks.{layer}."
_L = "model.layers.{layer}."
TEXT_RULES = mapping.rules(
    ("embed_tokens", "model.embed_tokens.weight"),
    ("final_norm", "model.norm.weight"),
    ("lm_head", "lm_head.weight", _linear()),
    ("layers/input_norm", _L + "input_layernorm.weight"),
    ("layers/post_norm", _L + "post_attention_layernorm.weight"),
    ("layers/(q|k|v)", _L + "self_attn.{1}_proj.weight", _linear()),
    ("layers/(q|k|v)_bias", _L + "self_attn.{1}_proj.bias", _RESHAPE),
    ("layers/o", _L + "self_attn.o_proj.weight", _linear(2)),
    ("layers/(gate|up|down)", _L + "mlp.{1}_proj.weight", _linear()),
)
VISION_RULES = mapping.rules(
    ("visual/patch_embed", "visual.patch_embed.proj.weight", FlatConv()),
    ("visual/norm(1|2)", _B + "norm{1}.weight"),
    ("visual/norm(1|2)_bias", _B + "norm{1}.bias"),
    ("visual/qkv", _B + "attn.qkv.weight", _linear()),
    ("visual/qkv_bias", _B + "attn.qkv.bias", _RESHAPE),
    ("visual/proj", _B + "attn.proj.weight", _linear(2)),
    ("visual/proj_bias", _B + "attn.proj.bias"),
    ("visual/(gate|up|down)", _B + "mlp.{1}_proj.weight", _linear()),
    ("visual/(gate|up|down)_bias", _B + "mlp.{1}_proj.bias"),
    ("visual/(fc1|fc2)", _B + "mlp.{1}.weight", _linear()),
    ("visual/(fc1|fc2)_bias", _B + "mlp.{1}.bias"),
    ("visual/merger_norm", "visual.merger.ln_q.weight"),
    ("visual/merger_norm_bias", "visual.merger.ln_q.bias"),
    ("visual/merger_fc1", "visual.merger.mlp.0.weight", _linear()),
    ("visual/merger_fc1_bias", "visual.merger.mlp.0.bias"),
    ("visual/merger_fc2", "visual.merger.mlp.2.weight", _linear()),
    ("visual/merger_fc2_bias", "visual.merger.mlp.2.bias"),
)
RULES = TEXT_RULES + VISION_RULES


class _HubNames:
  """A safetensors reader seen through hub tensor names."""

  _PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))

  def __init__(self, reader):
    self._reader = reader
    self._map = {}
    for name in reader.keys():
      hub = name
      for old, new in self._PREFIXES:
        if name.startswith(old):
          hub = new + name[len(old):]
          break
      if hub in self._map:
        raise mapping.WeightImportError(
            f"Tensors {self._map[hub]!r} and {name!r} both map to {hub!r}; the folder mixes two "
            "checkpoint layouts.")
      self._map[hub] = name

  def keys(self):
    return list(self._map)

  def __contains__(self, name):
    return name in self._map

  def shape(self, name):
    return self._reader.shape(self._map[name])

  def get(self, name):
    return self._reader.get(self._map[name])


def read_config(path: str) -> dict:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{path!r} has no config.json; give a HuggingFace Qwen2-VL or "
                            "Qwen2.5-VL folder.")
  with open(cfg_path) as f:
    return json.load(f)


def load_qwen2_5_vl(path: str, *, dtype: str = "float32"):
  """(model, params) from a HF Qwen2.5-VL or Qwen2-VL folder; params as NumPy arrays."""
  cfg = QwenVLConfig.from_hf_dict(read_config(path))
  model = qwen2_5_vl.build(cfg, dtype)
  reader = _HubNames(safetensors_io.SafetensorsFolder(path))
  ignore = (r"lm_head\.weight",) if cfg.text.tie_embeddings else ()
  params = mapping.load_params(qwen2_5_vl.abstract_params(model), RULES, reader, ignore=ignore,
                               what=f"checkpoint {path!r}")
  return model, params


def export_qwen2_5_vl(params) -> dict[str, np.ndarray]:
  """Our params -> {hub tensor name: array}, the inverse of the import."""
  return mapping.export_params(params, RULES)

