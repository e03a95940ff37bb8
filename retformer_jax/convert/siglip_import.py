"""HuggingFace SiglipModel folders -> our Flax SigLIP (`retformer_jax.models.siglip`).

Reads `config.json` + safetensors (no torch, no pickle) of transformers' SiglipModel: SigLIP and
the fixed-resolution SigLIP 2 checkpoints. The encoder layers have CLIP's tensor names; the MAP
head's torch MultiheadAttention keeps q, k and v in one `in_proj_weight` [3d, d], sliced here.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from retformer_jax.convert import clip_import, mapping, safetensors_io
from retformer_jax.convert.mapping import Conv, Linear, Reshape, WeightImportError
from retformer_jax.models.siglip import SigLIP, abstract_params
from retformer_jax.models.siglip_config import SiglipConfig

# Buffers some exporters save; they carry no learned state.
IGNORED = (r".*\.position_ids",)


@dataclasses.dataclass(frozen=True)
class InProjSlice(Linear):
  """Part `part` of 3 (q, k, v) of a fused torch in_proj weight [3*out, in] or bias [3*out].
  Import only: three of our parameters come from one tensor."""

  part: int = 0

  def to_ours(self, x, shape):
    x = np.asarray(x)
    n = x.shape[0] // 3
    x = x[self.part * n:(self.part + 1) * n]
    return x.reshape(shape) if x.ndim == 1 else x.T.reshape(shape)

  def to_hf(self, y, hf_shape):
    raise WeightImportError("SigLIP weights are import-only (the fused in_proj is not rebuilt).")

  def hf_shape(self, shape):
    if self.n_in == 0:  # bias
      return (3 * int(np.prod(shape)),)
    out, inp = super().hf_shape(shape)
    return (3 * out, inp)


@dataclasses.dataclass(frozen=True)
class Unsqueeze(mapping.Hook):
  """Our [d] <-> HF [1, ..., 1, d] (the MAP probe is [1, 1, d])."""

  lead: int = 2

  def hf_shape(self, shape):
    return (1,) * self.lead + tuple(shape)


def rule_table(scan_layers: bool) -> tuple[mapping.Rule, ...]:
  """Our parameter paths -> HF SiglipModel tensor names."""
  head = "vision_model.head"
  specs = [
      ("vision/patch_kernel", "vision_model.embeddings.patch_embedding.weight", Conv()),
      ("vision/patch_bias", "vision_model.embeddings.patch_embedding.bias"),
      ("vision/position_embedding", "vision_model.embeddings.position_embedding.weight"),
      ("vision/post_ln/scale", "vision_model.post_layernorm.weight"),
      ("vision/post_ln/bias", "vision_model.post_layernorm.bias"),
      ("vision/head/probe", f"{head}.probe", Unsqueeze(2)),
      ("vision/head/ln/scale", f"{head}.layernorm.weight"),
      ("vision/head/ln/bias", f"{head}.layernorm.bias"),
      ("vision/head/mlp/fc1_kernel", f"{head}.mlp.fc1.weight", Linear(1)),
      ("vision/head/mlp/fc1_bias", f"{head}.mlp.fc1.bias"),
      ("vision/head/mlp/fc2_kernel", f"{head}.mlp.fc2.weight", Linear(1)),
      ("vision/head/mlp/fc2_bias", f"{head}.mlp.fc2.bias"),
      ("vision/head/attn/o_kernel", f"{head}.attention.out_proj.weight", Linear(2)),
      ("vision/head/attn/o_bias", f"{head}.attention.out_proj.bias"),
      ("text/token_embedding", "text_model.embeddings.token_embedding.weight"),
      ("text/position_embedding", "text_model.embeddings.position_embedding.weight"),
      ("text/final_ln/scale", "text_model.final_layer_norm.weight"),
      ("text/final_ln/bias", "text_model.final_layer_norm.bias"),
      ("text/head_kernel", "text_model.head.weight", Linear(1)),
      ("text/head_bias", "text_model.head.bias"),
      ("logit_scale", "logit_scale", Reshape()),
      ("logit_bias", "logit_bias", Reshape()),
  ]
  for i, n in enumerate("qkv"):
    specs.append((f"vision/head/attn/{n}_kernel", f"{head}.attention.in_proj_weight",
                  InProjSlice(n_in=1, part=i)))
    specs.append((f"vision/head/attn/{n}_bias", f"{head}.attention.in_proj_bias",
                  InProjSlice(n_in=0, part=i)))
  # SigLIP's encoder layer is CLIP's, tensor for tensor.
  for ours, theirs in (("vision", "vision_model"), ("text", "text_model")):
    for ours_leaf, hf_leaf, *hook in clip_import._BLOCK:
      if scan_layers:
        target = f"{ours}/encoder/layers/{ours_leaf}"
        source = f"{theirs}.encoder.layers.{{layer}}.{hf_leaf}"
      else:
        target = f"{ours}/encoder/layers_(\\d+)/{ours_leaf}"
        source = f"{theirs}.encoder.layers.{{1}}.{hf_leaf}"
      specs.append((target, source, *hook))
  return mapping.rules(*specs)


def load_siglip(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
                scan_layers: bool = True):
  """(SigLIP module, params pytree of jax arrays) from a HF SiglipModel folder.

  `dtype` is the compute dtype (e.g. "bfloat16" on TPU/GPU); weights are stored as
  `param_dtype`. Raises WeightImportError naming every missing / unexpected / mis-shaped tensor.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"SigLIP folder {path!r} does not exist. Give a local HuggingFace SiglipModel folder "
        "(config.json + *.safetensors), e.g. from `huggingface-cli download "
        "google/siglip-base-patch16-224 --local-dir DIR`.")
  config = SiglipConfig.from_json_file(os.path.join(path, "config.json"), dtype=dtype,
                                       param_dtype=param_dtype, scan_layers=scan_layers)
  model = SigLIP(config)
  reader = safetensors_io.SafetensorsFolder(path)
  params = mapping.load_params(abstract_params(model), rule_table(scan_layers), reader,
                               ignore=IGNORED, what=f"SigLIP checkpoint {path}")
  return model, jax.tree.map(jnp.asarray, params)


__all__ = ["load_siglip", "rule_table", "WeightImportError"]
