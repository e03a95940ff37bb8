"""HuggingFace CLIP folders <-> our Flax CLIP (`retformer_jax.models.clip`).

Reads `config.json` + safetensors (no torch, no pickle) of transformers' CLIPModel and of the
OpenCLIP checkpoints republished in that format (laion/*, DataComp ViT-B/16: same tensor names,
no projection bias, `logit_scale` present, sometimes `position_ids` buffers, which are ignored).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from retformer_jax import atomic_io
from retformer_jax.convert import mapping, safetensors_io
from retformer_jax.convert.mapping import Conv, Linear, Reshape, WeightImportError
from retformer_jax.models.clip import CLIP, abstract_params
from retformer_jax.models.clip_config import ClipConfig

# Buffers some exporters save; they carry no learned state.
IGNORED = (r".*\.position_ids",)

_BLOCK = (
    ("ln1/scale", "layer_norm1.weight"), ("ln1/bias", "layer_norm1.bias"),
    ("ln2/scale", "layer_norm2.weight"), ("ln2/bias", "layer_norm2.bias"),
    ("attn/q_kernel", "self_attn.q_proj.weight", Linear(1)),
    ("attn/k_kernel", "self_attn.k_proj.weight", Linear(1)),
    ("attn/v_kernel", "self_attn.v_proj.weight", Linear(1)),
    ("attn/q_bias", "self_attn.q_proj.bias", Reshape()),
    ("attn/k_bias", "self_attn.k_proj.bias", Reshape()),
    ("attn/v_bias", "self_attn.v_proj.bias", Reshape()),
    ("attn/o_kernel", "self_attn.out_proj.weight", Linear(2)),
    ("attn/o_bias", "self_attn.out_proj.bias"),
    ("mlp/fc1_kernel", "mlp.fc1.weight", Linear(1)), ("mlp/fc1_bias", "mlp.fc1.bias"),
    ("mlp/fc2_kernel", "mlp.fc2.weight", Linear(1)), ("mlp/fc2_bias", "mlp.fc2.bias"),
)


def rule_table(scan_layers: bool) -> tuple[mapping.Rule, ...]:
  """Our parameter paths -> HF CLIPModel tensor names."""
  specs = [
      ("vision/patch_kernel", "vision_model.embeddings.patch_embedding.weight", Conv()),
      ("vision/class_embedding", "vision_model.embeddings.class_embedding"),
      ("vision/position_embedding", "vision_model.embeddings.position_embedding.weight"),
      ("vision/pre_ln/scale", "vision_model.pre_layrnorm.weight"),
      ("vision/pre_ln/bias", "vision_model.pre_layrnorm.bias"),
      ("vision/post_ln/scale", "vision_model.post_layernorm.weight"),
      ("vision/post_ln/bias", "vision_model.post_layernorm.bias"),
      ("text/token_embedding", "text_model.embeddings.token_embedding.weight"),
      ("text/position_embedding", "text_model.embeddings.position_embedding.weight"),
      ("text/final_ln/scale", "text_model.final_layer_norm.weight"),
      ("text/final_ln/bias", "text_model.final_layer_norm.bias"),
      ("visual_projection", "visual_projection.weight", Linear(1)),
      ("text_projection", "text_projection.weight", Linear(1)),
      ("logit_scale", "logit_scale"),
  ]
  for ours, theirs in (("vision", "vision_model"), ("text", "text_model")):
    for ours_leaf, hf_leaf, *hook in _BLOCK:
      if scan_layers:
        target = f"{ours}/encoder/layers/{ours_leaf}"
        source = f"{theirs}.encoder.layers.{{layer}}.{hf_leaf}"
      else:
        target = f"{ours}/encoder/layers_(\\d+)/{ours_leaf}"
        source = f"{theirs}.encoder.layers.{{1}}.{hf_leaf}"
      specs.append((target, source, *hook))
  return mapping.rules(*specs)


def load_clip(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
              scan_layers: bool = True):
  """(CLIP module, params pytree of jax arrays) from a HF CLIP folder.

  `dtype` is the compute dtype (e.g. "bfloat16" on TPU/GPU); weights are stored as
  `param_dtype`. Raises WeightImportError naming every missing / unexpected / mis-shaped tensor.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"CLIP folder {path!r} does not exist. Give a local HuggingFace CLIP folder "
        "(config.json + *.safetensors), e.g. from `huggingface-cli download "
        "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K --local-dir DIR`.")
  config = ClipConfig.from_json_file(os.path.join(path, "config.json"), dtype=dtype,
                                     param_dtype=param_dtype, scan_layers=scan_layers)
  model = CLIP(config)
  reader = safetensors_io.SafetensorsFolder(path)
  params = mapping.load_params(abstract_params(model), rule_table(scan_layers), reader,
                               ignore=IGNORED, what=f"CLIP checkpoint {path}")
  return model, jax.tree.map(jnp.asarray, params)


def save_clip(model: CLIP, params, folder: str) -> None:
  """Writes `model.safetensors` + `config.json` in HF CLIPModel layout (each file atomically)."""
  os.makedirs(folder, exist_ok=True)
  tensors = mapping.export_params(params, rule_table(model.config.scan_layers))
  safetensors_io.save_file(tensors, os.path.join(folder, "model.safetensors"),
                           metadata={"format": "pt"})
  atomic_io.write_json(os.path.join(folder, "config.json"), model.config.to_hf_dict(), indent=2)


__all__ = ["load_clip", "save_clip", "rule_table", "WeightImportError"]
