"""Flax linen CLIP: a ViT image tower and a causal text tower, each with a linear projection.

Numerically the same as transformers' `CLIPModel.get_image_features` / `get_text_features`
(`pooler_output`): projected, not normalised. Images are NHWC, already normalised.

    model = CLIP(config)
    img_bp = model.apply({"params": params}, pixels_bhwc, method=model.encode_image)
    txt_bp = model.apply({"params": params}, input_ids_bt, attention_mask_bt,
                         method=model.encode_text)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from retformer_jax.models import layers
from retformer_jax.models.clip_config import ClipConfig, TextConfig, TowerConfig, VisionConfig

Dtype = Any
_NEG = -1e30  # finite "minus infinity" for masked attention logits (no NaN on empty rows)


class Attention(nn.Module):
  """Multi-head self-attention; q, k, v are one fused matmul at run time."""

  cfg: TowerConfig
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x_btd, mask_b1tt):
    d, h, k = self.cfg.hidden_size, self.cfg.num_heads, self.cfg.head_dim
    std = d ** -0.5
    ker = nn.initializers.normal(std)
    zero = nn.initializers.zeros_init()
    w = [layers.param(self, f"{n}_kernel", ker, (d, h, k), ("embed", "heads", "head_dim"),
                self.param_dtype) for n in "qkv"]
    b = [layers.param(self, f"{n}_bias", zero, (h, k), ("heads", "head_dim"), self.param_dtype)
         for n in "qkv"]
    w_o = layers.param(self, "o_kernel", ker, (h, k, d), ("heads", "head_dim", "embed"),
                 self.param_dtype)
    b_o = layers.param(self, "o_bias", zero, (d,), ("embed",), self.param_dtype)

    w_dshk = jnp.stack(w, axis=1).astype(self.dtype)
    b_shk = jnp.stack(b, axis=0).astype(self.dtype)
    qkv_bsthk = jnp.einsum("btd,dshk->bsthk", x_btd.astype(self.dtype), w_dshk) + b_shk[:, None]
    q_bthk = qkv_bsthk[:, 0] * jnp.asarray(k ** -0.5, self.dtype)
    k_bthk, v_bthk = qkv_bsthk[:, 1], qkv_bsthk[:, 2]
    logits_bhqk = jnp.einsum("bqhk,bthk->bhqt", q_bthk, k_bthk).astype(jnp.float32)
    if mask_b1tt is not None:
      logits_bhqk = jnp.where(mask_b1tt, logits_bhqk, _NEG)
    probs_bhqk = jax.nn.softmax(logits_bhqk, axis=-1).astype(self.dtype)
    out_bqhk = jnp.einsum("bhqt,bthk->bqhk", probs_bhqk, v_bthk)
    return jnp.einsum("bqhk,hkd->bqd", out_bqhk, w_o.astype(self.dtype)) + b_o.astype(self.dtype)


class Mlp(nn.Module):
  cfg: TowerConfig
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x_btd):
    d, f = self.cfg.hidden_size, self.cfg.intermediate_size
    zero = nn.initializers.zeros_init()
    w1 = layers.param(self, "fc1_kernel", nn.initializers.normal((2 * d) ** -0.5), (d, f),
                ("embed", "mlp"), self.param_dtype)
    b1 = layers.param(self, "fc1_bias", zero, (f,), ("mlp",), self.param_dtype)
    w2 = layers.param(self, "fc2_kernel", nn.initializers.normal(f ** -0.5), (f, d),
                ("mlp", "embed"), self.param_dtype)
    b2 = layers.param(self, "fc2_bias", zero, (d,), ("embed",), self.param_dtype)
    h_btf = jnp.einsum("btd,df->btf", x_btd.astype(self.dtype), w1.astype(self.dtype))
    h_btf = layers.activation(self.cfg.hidden_act)(h_btf + b1.astype(self.dtype))
    h_btf = nn.with_logical_constraint(h_btf, ("batch", "length", "mlp"))
    return jnp.einsum("btf,fd->btd", h_btf, w2.astype(self.dtype)) + b2.astype(self.dtype)


class Block(nn.Module):
  """Pre-LN transformer block. Returns (x, None) so that it can be scanned."""

  cfg: TowerConfig
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x_btd, mask_b1tt):
    eps = self.cfg.layer_norm_eps
    kw = dict(cfg=self.cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    y = layers.LayerNorm("ln1", self.dtype, self.param_dtype, eps)(x_btd)
    x_btd = x_btd + Attention(**kw, name="attn")(y, mask_b1tt)
    y = layers.LayerNorm("ln2", self.dtype, self.param_dtype, eps)(x_btd)
    x_btd = x_btd + Mlp(**kw, name="mlp")(y)
    x_btd = nn.with_logical_constraint(x_btd, ("batch", "length", "embed"))
    return x_btd, None


class Encoder(nn.Module):
  """`num_layers` blocks, scanned (params stacked on a leading `layers` axis) or unrolled."""

  cfg: TowerConfig
  dtype: Dtype
  param_dtype: Dtype
  scan_layers: bool

  @nn.compact
  def __call__(self, x_btd, mask_b1tt):
    kw = dict(cfg=self.cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.scan_layers:
      stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,), length=self.cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x_btd, _ = stack(**kw, name="layers")(x_btd, mask_b1tt)
      return x_btd
    for i in range(self.cfg.num_layers):
      x_btd, _ = Block(**kw, name=f"layers_{i}")(x_btd, mask_b1tt)
    return x_btd


class VisionTower(nn.Module):
  """ViT: patch embedding, class token, positions, pre-LN, blocks, post-LN of the class token."""

  cfg: VisionConfig
  dtype: Dtype
  param_dtype: Dtype
  scan_layers: bool

  @nn.compact
  def __call__(self, pixels_bhwc):
    c = self.cfg
    b, hgt, wid, ch = pixels_bhwc.shape
    if (hgt, wid, ch) != (c.image_size, c.image_size, c.num_channels):
      raise ValueError(
          f"CLIP image tower expects pixels [B, {c.image_size}, {c.image_size}, "
          f"{c.num_channels}] (NHWC, normalised), got {list(pixels_bhwc.shape)}; resize with "
          "retformer_jax.data.clip_preprocess.ClipPreprocessor.")
    p, g, d = c.patch_size, c.grid, c.hidden_size
    w_patch = layers.param(self, "patch_kernel", nn.initializers.normal(0.02), (p, p, ch, d),
                     (None, None, "channels", "embed"), self.param_dtype)
    cls_d = layers.param(self, "class_embedding", nn.initializers.normal(d ** -0.5), (d,),
                   ("embed",), self.param_dtype)
    pos_td = layers.param(self, "position_embedding", nn.initializers.normal(0.02),
                    (c.num_positions, d), ("length", "embed"), self.param_dtype)
    x = pixels_bhwc.astype(self.dtype).reshape(b, g, p, g, p, ch)
    x_bgd = jnp.einsum("bhpwqc,pqcd->bhwd", x, w_patch.astype(self.dtype)).reshape(b, g * g, d)
    cls_b1d = jnp.broadcast_to(cls_d.astype(self.dtype), (b, 1, d))
    x_btd = jnp.concatenate([cls_b1d, x_bgd], axis=1) + pos_td.astype(self.dtype)
    x_btd = layers.LayerNorm("pre_ln", self.dtype, self.param_dtype, c.layer_norm_eps)(x_btd)
    x_btd = nn.with_logical_constraint(x_btd, ("batch", "length", "embed"))
    x_btd = Encoder(c, self.dtype, self.param_dtype, self.scan_layers, name="encoder")(
        x_btd, None)
    return layers.LayerNorm("post_ln", self.dtype, self.param_dtype, c.layer_norm_eps)(x_btd[:, 0])


class TextTower(nn.Module):
  """Causal transformer over tokens; the output is the final-LN state at the EOS token."""

  cfg: TextConfig
  dtype: Dtype
  param_dtype: Dtype
  scan_layers: bool

  @nn.compact
  def __call__(self, ids_bt, mask_bt):
    c = self.cfg
    b, t = ids_bt.shape
    if t > c.max_position_embeddings:
      raise ValueError(f"CLIP text tower: sequence length {t} exceeds max_position_embeddings "
                       f"{c.max_position_embeddings}; tokenise with truncation.")
    d = c.hidden_size
    tok_vd = layers.param(self, "token_embedding", nn.initializers.normal(0.02), (c.vocab_size, d),
                    ("vocab", "embed"), self.param_dtype)
    pos_td = layers.param(self, "position_embedding", nn.initializers.normal(0.01),
                    (c.max_position_embeddings, d), ("length", "embed"), self.param_dtype)
    x_btd = (jnp.take(tok_vd, ids_bt, axis=0) + pos_td[:t]).astype(self.dtype)
    causal_tt = jnp.tril(jnp.ones((t, t), bool))
    mask_b1tt = causal_tt[None, None] & (mask_bt[:, None, None, :] != 0)
    x_btd = Encoder(c, self.dtype, self.param_dtype, self.scan_layers, name="encoder")(
        x_btd, mask_b1tt)
    x_btd = layers.LayerNorm("final_ln", self.dtype, self.param_dtype, c.layer_norm_eps)(x_btd)
    ids_bt = ids_bt.astype(jnp.int32)
    if c.eos_token_id == 2:
      # Configs from before transformers PR #24773 carry eos_token_id=2: HF then pools at the
      # highest token id (the EOT token of the original vocabulary).
      pos_b = jnp.argmax(ids_bt, axis=-1)
    else:
      pos_b = jnp.argmax((ids_bt == c.eos_token_id).astype(jnp.int32), axis=-1)
    return jnp.take_along_axis(x_btd, pos_b[:, None, None], axis=1)[:, 0]


class CLIP(nn.Module):
  """Both towers and their projections (no bias), plus CLIP's learned `logit_scale`."""

  config: ClipConfig

  def setup(self):
    c = self.config
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    self.vision = VisionTower(c.vision, dt, pdt, c.scan_layers)
    self.text = TextTower(c.text, dt, pdt, c.scan_layers)
    self.visual_projection = layers.param(
        self, "visual_projection", nn.initializers.normal(c.vision.hidden_size ** -0.5),
        (c.vision.hidden_size, c.projection_dim), ("embed", None), pdt)
    self.text_projection = layers.param(
        self, "text_projection", nn.initializers.normal(c.text.hidden_size ** -0.5),
        (c.text.hidden_size, c.projection_dim), ("embed", None), pdt)
    self.logit_scale = layers.param(
        self, "logit_scale", nn.initializers.constant(c.logit_scale_init_value), (), (), pdt)

  def encode_image(self, pixels_bhwc):
    """[B, H, W, C] normalised pixels -> [B, projection_dim] image features."""
    dt = jnp.dtype(self.config.dtype)
    pooled_bd = self.vision(pixels_bhwc)
    return jnp.einsum("bd,dp->bp", pooled_bd, self.visual_projection.astype(dt))

  def encode_text(self, input_ids, attention_mask=None):
    """[B, T] token ids (+ [B, T] 0/1 mask) -> [B, projection_dim] text features."""
    dt = jnp.dtype(self.config.dtype)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    pooled_bd = self.text(input_ids, attention_mask)
    return jnp.einsum("bd,dp->bp", pooled_bd, self.text_projection.astype(dt))

  def __call__(self, pixels_bhwc, input_ids, attention_mask=None):
    """Both features and the CLIP logits (image x text), as used for init and zero-shot."""
    img_bp = self.encode_image(pixels_bhwc)
    txt_np = self.encode_text(input_ids, attention_mask)
    img_bp = img_bp / jnp.linalg.norm(img_bp, axis=-1, keepdims=True)
    txt_np = txt_np / jnp.linalg.norm(txt_np, axis=-1, keepdims=True)
    logits_bn = jnp.exp(self.logit_scale.astype(jnp.float32)) * (img_bp @ txt_np.T)
    return img_bp, txt_np, logits_bn


def init_params(model: CLIP, rng: jax.Array):
  """Random parameters (unboxed) for `model`."""
  c = model.config
  pixels = jnp.zeros((1, c.vision.image_size, c.vision.image_size, c.vision.num_channels))
  ids = jnp.zeros((1, min(4, c.text.max_position_embeddings)), jnp.int32)
  return nn.meta.unbox(model.init(rng, pixels, ids)["params"])


def abstract_params(model: CLIP):
  """Shapes and dtypes of the parameters, without allocating them."""
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
