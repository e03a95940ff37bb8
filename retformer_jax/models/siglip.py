"""Flax linen SigLIP (and fixed-resolution SigLIP 2): a ViT with an attention-pooling head and a
bidirectional text encoder with a linear head.

Numerically the same as transformers' `SiglipModel.get_image_features` / `get_text_features`
(`pooler_output`): not normalised. The encoder blocks are CLIP's (`models/clip.py`): SigLIP's
encoder layer is the same pre-LN block with the same tensors.

    model = SigLIP(config)
    img_bd = model.apply({"params": params}, pixels_bhwc, method=model.encode_image)
    txt_bd = model.apply({"params": params}, input_ids_bt, method=model.encode_text)

Text: the released models were trained on ids padded to `max_position_embeddings` (64) with no
attention mask, and pool the LAST position (a pad token when the text is short); tokenise with
`padding="max_length"` and pass no mask (or all ones) to get those features.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from retformer_jax.models import clip, layers
from retformer_jax.models.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

Dtype = Any


class ProbeAttention(nn.Module):
  """Multi-head attention of one learned query (the probe) over the patch states."""

  cfg: SiglipVisionConfig
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, probe_bqd, x_btd):
    d, h, k = self.cfg.hidden_size, self.cfg.num_heads, self.cfg.head_dim
    ker = nn.initializers.normal(d ** -0.5)
    zero = nn.initializers.zeros_init()
    w = {n: layers.param(self, f"{n}_kernel", ker, (d, h, k), ("embed", "heads", "head_dim"),
                         self.param_dtype).astype(self.dtype) for n in "qkv"}
    b = {n: layers.param(self, f"{n}_bias", zero, (h, k), ("heads", "head_dim"),
                         self.param_dtype).astype(self.dtype) for n in "qkv"}
    w_o = layers.param(self, "o_kernel", ker, (h, k, d), ("heads", "head_dim", "embed"),
                       self.param_dtype)
    b_o = layers.param(self, "o_bias", zero, (d,), ("embed",), self.param_dtype)
    x_btd = x_btd.astype(self.dtype)
    q_bqhk = jnp.einsum("bqd,dhk->bqhk", probe_bqd.astype(self.dtype), w["q"]) + b["q"]
    k_bthk = jnp.einsum("btd,dhk->bthk", x_btd, w["k"]) + b["k"]
    v_bthk = jnp.einsum("btd,dhk->bthk", x_btd, w["v"]) + b["v"]
    q_bqhk = q_bqhk * jnp.asarray(k ** -0.5, self.dtype)
    logits_bhqt = jnp.einsum("bqhk,bthk->bhqt", q_bqhk, k_bthk).astype(jnp.float32)
    probs_bhqt = jax.nn.softmax(logits_bhqt, axis=-1).astype(self.dtype)
    out_bqhk = jnp.einsum("bhqt,bthk->bqhk", probs_bhqt, v_bthk)
    return jnp.einsum("bqhk,hkd->bqd", out_bqhk, w_o.astype(self.dtype)) + b_o.astype(self.dtype)


class MapHead(nn.Module):
  """Multihead attention pooling: probe attention, then a residual LN + MLP on the pooled row."""

  cfg: SiglipVisionConfig
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x_btd):
    c = self.cfg
    probe_d = layers.param(self, "probe", nn.initializers.normal(c.hidden_size ** -0.5),
                           (c.hidden_size,), ("embed",), self.param_dtype)
    probe_b1d = jnp.broadcast_to(probe_d.astype(self.dtype), (x_btd.shape[0], 1, c.hidden_size))
    kw = dict(cfg=c, dtype=self.dtype, param_dtype=self.param_dtype)
    y_b1d = ProbeAttention(**kw, name="attn")(probe_b1d, x_btd)
    z_b1d = layers.LayerNorm("ln", self.dtype, self.param_dtype, c.layer_norm_eps)(y_b1d)
    y_b1d = y_b1d + clip.Mlp(**kw, name="mlp")(z_b1d)
    return y_b1d[:, 0]


class VisionTower(nn.Module):
  """Patch embedding (with bias), positions, blocks, post-LN, MAP head."""

  cfg: SiglipVisionConfig
  dtype: Dtype
  param_dtype: Dtype
  scan_layers: bool

  @nn.compact
  def __call__(self, pixels_bhwc):
    c = self.cfg
    b, hgt, wid, ch = pixels_bhwc.shape
    if (hgt, wid, ch) != (c.image_size, c.image_size, c.num_channels):
      raise ValueError(
          f"SigLIP image tower expects pixels [B, {c.image_size}, {c.image_size}, "
          f"{c.num_channels}] (NHWC, normalised), got {list(pixels_bhwc.shape)}; resize with "
          "retformer_jax.data.siglip_preprocess.SiglipPreprocessor.")
    p, g, d = c.patch_size, c.grid, c.hidden_size
    w_patch = layers.param(self, "patch_kernel", nn.initializers.normal(0.02), (p, p, ch, d),
                           (None, None, "channels", "embed"), self.param_dtype)
    b_patch = layers.param(self, "patch_bias", nn.initializers.zeros_init(), (d,), ("embed",),
                           self.param_dtype)
    pos_td = layers.param(self, "position_embedding", nn.initializers.normal(d ** -0.5),
                          (c.num_positions, d), ("length", "embed"), self.param_dtype)
    x = pixels_bhwc[:, :g * p, :g * p].astype(self.dtype).reshape(b, g, p, g, p, ch)
    x_btd = jnp.einsum("bhpwqc,pqcd->bhwd", x, w_patch.astype(self.dtype)).reshape(b, g * g, d)
    x_btd = x_btd + b_patch.astype(self.dtype) + pos_td.astype(self.dtype)
    x_btd = nn.with_logical_constraint(x_btd, ("batch", "length", "embed"))
    x_btd = clip.Encoder(c, self.dtype, self.param_dtype, self.scan_layers, name="encoder")(
        x_btd, None)
    x_btd = layers.LayerNorm("post_ln", self.dtype, self.param_dtype, c.layer_norm_eps)(x_btd)
    return MapHead(c, self.dtype, self.param_dtype, name="head")(x_btd)


class TextTower(nn.Module):
  """Bidirectional transformer over tokens; the final-LN state of the last position through a
  linear head."""

  cfg: SiglipTextConfig
  dtype: Dtype
  param_dtype: Dtype
  scan_layers: bool

  @nn.compact
  def __call__(self, ids_bt, mask_bt):
    c = self.cfg
    _, t = ids_bt.shape
    if t > c.max_position_embeddings:
      raise ValueError(f"SigLIP text tower: sequence length {t} exceeds max_position_embeddings "
                       f"{c.max_position_embeddings}; tokenise with truncation.")
    d = c.hidden_size
    tok_vd = layers.param(self, "token_embedding", nn.initializers.normal(d ** -0.5),
                          (c.vocab_size, d), ("vocab", "embed"), self.param_dtype)
    pos_td = layers.param(self, "position_embedding", nn.initializers.normal(d ** -0.5),
                          (c.max_position_embeddings, d), ("length", "embed"), self.param_dtype)
    x_btd = (jnp.take(tok_vd, ids_bt, axis=0) + pos_td[:t]).astype(self.dtype)
    mask_b1tt = None if mask_bt is None else (mask_bt[:, None, None, :] != 0)
    x_btd = clip.Encoder(c, self.dtype, self.param_dtype, self.scan_layers, name="encoder")(
        x_btd, mask_b1tt)
    x_btd = layers.LayerNorm("final_ln", self.dtype, self.param_dtype, c.layer_norm_eps)(x_btd)
    w_head = layers.param(self, "head_kernel", nn.initializers.normal(d ** -0.5),
                          (d, c.projection_size), ("embed", None), self.param_dtype)
    b_head = layers.param(self, "head_bias", nn.initializers.zeros_init(), (c.projection_size,),
                          (None,), self.param_dtype)
    return (jnp.einsum("bd,dp->bp", x_btd[:, -1], w_head.astype(self.dtype)) +
            b_head.astype(self.dtype))


class SigLIP(nn.Module):
  """Both towers plus SigLIP's learned `logit_scale` and `logit_bias` (sigmoid logits)."""

  config: SiglipConfig

  def setup(self):
    c = self.config
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    self.vision = VisionTower(c.vision, dt, pdt, c.scan_layers)
    self.text = TextTower(c.text, dt, pdt, c.scan_layers)
    self.logit_scale = layers.param(self, "logit_scale", nn.initializers.constant(jnp.log(10.0)),
                                    (), (), pdt)
    self.logit_bias = layers.param(self, "logit_bias", nn.initializers.constant(-10.0), (), (),
                                   pdt)

  def encode_image(self, pixels_bhwc):
    """[B, H, W, C] normalised pixels -> [B, d] image features."""
    return self.vision(pixels_bhwc)

  def encode_text(self, input_ids, attention_mask=None):
    """[B, T] token ids -> [B, d] text features. The released models take no mask (None or all
    ones); a 0/1 mask is applied to the keys as transformers does."""
    return self.text(input_ids, attention_mask)

  def __call__(self, pixels_bhwc, input_ids, attention_mask=None):
    """Both features (L2-normalised) and the image x text logits, exp(scale) * cos + bias;
    sigmoid(logits) is the probability that a pair matches. Ranking by the logits is ranking by
    cosine similarity."""
    img_bd = self.encode_image(pixels_bhwc).astype(jnp.float32)
    txt_nd = self.encode_text(input_ids, attention_mask).astype(jnp.float32)
    img_bd = img_bd / jnp.linalg.norm(img_bd, axis=-1, keepdims=True)
    txt_nd = txt_nd / jnp.linalg.norm(txt_nd, axis=-1, keepdims=True)
    scale = jnp.exp(self.logit_scale.astype(jnp.float32))
    return img_bd, txt_nd, scale * (img_bd @ txt_nd.T) + self.logit_bias.astype(jnp.float32)


def init_params(model: SigLIP, rng: jax.Array):
  """Random parameters (unboxed) for `model`."""
  c = model.config
  pixels = jnp.zeros((1, c.vision.image_size, c.vision.image_size, c.vision.num_channels))
  ids = jnp.zeros((1, min(4, c.text.max_position_embeddings)), jnp.int32)
  return nn.meta.unbox(model.init(rng, pixels, ids)["params"])


def abstract_params(model: SigLIP):
  """Shapes and dtypes of the parameters, without allocating them."""
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
