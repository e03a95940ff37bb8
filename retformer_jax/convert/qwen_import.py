"""Weight import for Qwen2.5-VL and Qwen2-VL HF folders (config.json + safetensors, no torch).

Both tensor layouts are read: the hub one (`model.layers.*`, `visual.*`, as on
Qwen/Qwen2.5-VL-7B-Instruct and as transformers 5.x `save_pretrained` writes it) and the
transformers 4.5x in-memory one (`model.language_model.*`, `model.visual.*`). Missing,
unexpected and mis-shaped tensors are errors that name them.
"""

from __future__ import annotations

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from retformer_jax.convert import mapping, safetensors_io
from retformer_jax.models.qwen2_5_vl import QwenVL, QwenVLConfig, TextConfig
from retformer_jax.models.qwen_vision import VisionConfig

MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")


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


def config_from_hf(d: dict) -> QwenVLConfig:
  """QwenVLConfig from a config.json dict (transformers 4.x flat or 5.x nested layout)."""
  mt = d.get("model_type")
  if mt not in MODEL_TYPES:
    raise ValueError(f"config.json has model_type={mt!r}; this loader reads {MODEL_TYPES}.")
  text = {k: v for k, v in d.items() if k not in ("vision_config", "text_config")}
  text.update(d.get("text_config") or {})
  if text.get("use_sliding_window"):
    raise ValueError("config.json sets use_sliding_window=true, which this model does not "
                     "implement; set it to false (the released Qwen2/2.5-VL checkpoints do).")
  rope = dict(text.get("rope_scaling") or {})
  rope.update(text.get("rope_parameters") or {})
  head_dim = text["hidden_size"] // text["num_attention_heads"]
  section = tuple(int(s) for s in rope.get("mrope_section", (16, 24, 24)))
  if sum(section) != head_dim // 2:
    raise ValueError(f"config.json mrope_section {list(section)} must sum to head_dim/2 = "
                     f"{head_dim // 2}.")
  tc = TextConfig(
      vocab_size=int(text["vocab_size"]), hidden=int(text["hidden_size"]),
      mlp_dim=int(text["intermediate_size"]), layers=int(text["num_hidden_layers"]),
      heads=int(text["num_attention_heads"]),
      kv_heads=int(text.get("num_key_value_heads") or text["num_attention_heads"]),
      rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 1000000.0))),
      mrope_section=section, eps=float(text.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(d.get("tie_word_embeddings") or text.get("tie_word_embeddings")))
  if text.get("hidden_act", "silu") != "silu":
    raise ValueError(f"config.json hidden_act={text.get('hidden_act')!r}; the decoder uses silu.")
  v = d["vision_config"]
  common = dict(
      depth=int(v["depth"]), heads=int(v["num_heads"]), patch_size=int(v.get("patch_size", 14)),
      temporal_patch_size=int(v.get("temporal_patch_size", 2)),
      in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
      merge_size=int(v.get("spatial_merge_size", 2)),
      rope_theta=float((v.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
  if mt == "qwen2_5_vl":
    vc = VisionConfig(variant=mt, width=int(v["hidden_size"]), mlp_dim=int(v["intermediate_size"]),
                      out_dim=int(v["out_hidden_size"]), window_size=int(v.get("window_size", 112)),
                      fullatt_blocks=tuple(int(i) for i in v.get("fullatt_block_indexes", ())),
                      act=v.get("hidden_act", "silu"), **common)
  else:
    width = int(v["embed_dim"])
    vc = VisionConfig(variant=mt, width=width, mlp_dim=int(width * v.get("mlp_ratio", 4)),
                      out_dim=int(v["hidden_size"]), window_size=0, fullatt_blocks=(),
                      act=v.get("hidden_act", "quick_gelu"), **common)
  if vc.out_dim != tc.hidden:
    raise ValueError(f"vision output width {vc.out_dim} != text hidden_size {tc.hidden} in "
                     "config.json.")
  return QwenVLConfig(vision=vc, text=tc, image_token_id=int(d.get("image_token_id", 151655)),
                      video_token_id=int(d.get("video_token_id", 151656)),
                      vision_start_token_id=int(d.get("vision_start_token_id", 151652)),
                      vision_end_token_id=int(d.get("vision_end_token_id", 151653)))


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


def build(cfg: QwenVLConfig, dtype: str = "float32") -> QwenVL:
  dt = jnp.dtype(dtype)
  return QwenVL(cfg, dtype=dt, param_dtype=dt)


def abstract_params(model: QwenVL):
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), method=QwenVL.init_params))
  return nn.unbox(shapes["params"])


def logical_specs(model: QwenVL):
  """PartitionSpecs of logical axis names for every parameter (same tree as the params)."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), method=QwenVL.init_params))
  return nn.get_partition_spec(boxed["params"])


def param_shardings(model: QwenVL, mesh, axis_rules):
  """NamedShardings placing each parameter on `mesh` by the logical-axis rules."""
  return nn.logical_to_mesh_sharding(logical_specs(model), mesh, tuple(axis_rules))


def read_config(path: str) -> dict:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{path!r} has no config.json; give a HuggingFace Qwen2-VL or "
                            "Qwen2.5-VL folder.")
  with open(cfg_path) as f:
    return json.load(f)


def load_qwen2_5_vl(path: str, *, dtype: str = "float32"):
  """(model, params) from a HF Qwen2.5-VL or Qwen2-VL folder; params as NumPy arrays."""
  cfg = config_from_hf(read_config(path))
  model = build(cfg, dtype)
  reader = _HubNames(safetensors_io.SafetensorsFolder(path))
  ignore = (r"lm_head\.weight",) if cfg.text.tie_embeddings else ()
  params = mapping.load_params(abstract_params(model), RULES, reader, ignore=ignore,
                               what=f"checkpoint {path!r}")
  return model, params


def export_qwen2_5_vl(params) -> dict[str, np.ndarray]:
  """Our params -> {hub tensor name: array}, the inverse of the import."""
  return mapping.export_params(params, RULES)


def count(params) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
