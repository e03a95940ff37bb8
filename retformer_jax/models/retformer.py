"""RetFormer: a CLIP-feature classifier that also reads its query's retrieved neighbours.

  L_I = MLP(z)                                  backbone branch
  E^I = [z; v^I_1..k],  E^T = [0; v^T_1..k]     the query's own text slot is zero (no label leak)
  L cross-fusion layers, pre-LN:
    I' = Att(q=T, k=I, v=I) + I    (text queries image)
    T' = Att(q=I, k=T, v=T) + T    (image queries text)
    each followed by an MLP with residual
  L_R = h([I_0; T_0])                           head on the query slot of both streams
  f   = (tau / 2) (L_I + L_R)

Ablation switches (`ModelConfig`):
  use_retrieval=False   f = (tau / 2) L_I: the MLP-only baseline.
  modalities="image"    one stream X = E^I = [z; v^I_1..k] with self-attention (X' = Att(X, X, X)
                        + X, then MLP); the head reads X_0.
  modalities="text"     one stream X = [z; v^T_1..k] with self-attention: the query image
                        embedding (CLIP's joint space) attends over the neighbours' texts; the
                        query's own text is never used.

The attention weights of the query slot (position 0) over [query; neighbours] are sown into the
`intermediates` collection (`query_attention`), which is what the explanation sheet draws.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from retformer_jax.models import layers

MODALITIES = ("image_text", "image", "text")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  num_classes: int
  width: int = 0  # 0 = the CLIP embedding dim (no input projection)
  num_layers: int = 4
  num_heads: int = 8
  mlp_ratio: int = 4
  backbone_hidden: int = 0  # hidden width of the MLP branch; 0 = one linear layer
  tau: float = 2.0
  use_retrieval: bool = True
  modalities: str = "image_text"
  dropout: float = 0.0
  dtype: str = "float32"

  def __post_init__(self):
    if self.modalities not in MODALITIES:
      raise ValueError(f"config.model.modalities={self.modalities!r}; use one of {MODALITIES}.")
    if self.dtype not in DTYPES:
      raise ValueError(f"config.model.dtype={self.dtype!r}; use one of {list(DTYPES)}.")
    if self.num_classes < 1 or self.num_layers < 0:
      raise ValueError("RetFormer needs num_classes >= 1 and config.model.num_layers >= 0.")

  @classmethod
  def from_config(cls, model_config, num_classes: int) -> "ModelConfig":
    names = [f.name for f in dataclasses.fields(cls) if f.name != "num_classes"]
    return cls(num_classes=num_classes, **{n: model_config[n] for n in names})


class Attention(nn.Module):
  """Multi-head attention of `x_bqd` over `kv_bkd`; sows the weights of query slot 0."""

  num_heads: int
  dtype: Any
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_bqd, kv_bkd, *, train: bool):
    d = x_bqd.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"RetFormer width {d} is not a multiple of num_heads {self.num_heads}.")
    hd = d // self.num_heads
    proj = lambda n, b=True: layers.Dense((self.num_heads, hd), ("embed", "heads", "head_dim"),
                                          self.dtype, b, name=n)
    q_bqhk = proj("query")(x_bqd)
    k_bshk = proj("key", False)(kv_bkd)  # a key bias cannot change the softmax: none
    v_bshk = proj("value")(kv_bkd)
    logits_bhqs = jnp.einsum("bqhk,bshk->bhqs", q_bqhk, k_bshk) / jnp.sqrt(hd).astype(self.dtype)
    w_bhqs = jax.nn.softmax(logits_bhqs.astype(jnp.float32), axis=-1)
    self.sow("intermediates", "query_attention", w_bhqs[:, :, 0, :].mean(axis=1))
    w_bhqs = nn.Dropout(self.dropout)(w_bhqs, deterministic=not train).astype(self.dtype)
    o_bqhk = jnp.einsum("bhqs,bshk->bqhk", w_bhqs, v_bshk)
    o_bqhk = nn.with_logical_constraint(o_bqhk, ("batch", "length", "heads", "head_dim"))
    return layers.Dense(d, ("heads", "head_dim", "embed"), self.dtype, name="out")(o_bqhk)


class Mlp(nn.Module):
  hidden: int
  dtype: Any

  @nn.compact
  def __call__(self, x_btd):
    d = x_btd.shape[-1]
    h_btf = layers.Dense(self.hidden, ("embed", "mlp"), self.dtype, name="fc1")(x_btd)
    h_btf = nn.with_logical_constraint(nn.gelu(h_btf), ("batch", "length", "mlp"))
    return layers.Dense(d, ("mlp", "embed"), self.dtype, name="fc2")(h_btf)


class CrossFusionLayer(nn.Module):
  """Text queries image and image queries text (both from the old streams), then MLPs."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, i_bsd, t_bsd, *, train: bool):
    c, dt = self.cfg, DTYPES[self.cfg.dtype]
    d = i_bsd.shape[-1]
    ni = layers.LayerNorm("ln_image", dt)(i_bsd)
    nt = layers.LayerNorm("ln_text", dt)(t_bsd)
    i_new = Attention(c.num_heads, dt, c.dropout, name="text_queries_image")(nt, ni, train=train)
    t_new = Attention(c.num_heads, dt, c.dropout, name="image_queries_text")(ni, nt, train=train)
    i_bsd, t_bsd = i_new + i_bsd, t_new + t_bsd
    i_bsd = i_bsd + Mlp(c.mlp_ratio * d, dt, name="mlp_image")(
        layers.LayerNorm("ln_image_mlp", dt)(i_bsd))
    t_bsd = t_bsd + Mlp(c.mlp_ratio * d, dt, name="mlp_text")(
        layers.LayerNorm("ln_text_mlp", dt)(t_bsd))
    spec = ("batch", "length", "embed")
    return nn.with_logical_constraint(i_bsd, spec), nn.with_logical_constraint(t_bsd, spec)


class SelfFusionLayer(nn.Module):
  """The single-modality variant: self-attention within one stream, then an MLP."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_bsd, *, train: bool):
    c, dt = self.cfg, DTYPES[self.cfg.dtype]
    n = layers.LayerNorm("ln", dt)(x_bsd)
    x_bsd = x_bsd + Attention(c.num_heads, dt, c.dropout, name="self_attention")(n, n, train=train)
    x_bsd = x_bsd + Mlp(c.mlp_ratio * x_bsd.shape[-1], dt, name="mlp")(
        layers.LayerNorm("ln_mlp", dt)(x_bsd))
    return nn.with_logical_constraint(x_bsd, ("batch", "length", "embed"))


def streams(z_bd, nb_image_bkd, nb_text_bkd):
  """E^I = [z; v^I], E^T = [0; v^T]: the query's own text slot is zero."""
  e_image = jnp.concatenate([z_bd[:, None, :], nb_image_bkd], axis=1)
  e_text = jnp.concatenate([jnp.zeros_like(z_bd)[:, None, :], nb_text_bkd], axis=1)
  return e_image, e_text


class RetFormer(nn.Module):
  """Returns fused logits [B, C] (float32) from z [B, d] and neighbours [B, k, d] (image, text)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, z_bd, nb_image_bkd=None, nb_text_bkd=None, *, train: bool = False):
    c, dt = self.cfg, DTYPES[self.cfg.dtype]
    z_bd = nn.with_logical_constraint(z_bd.astype(dt), ("batch", "embed"))
    if c.backbone_hidden:
      h = layers.Dense(c.backbone_hidden, ("embed", "mlp"), dt, name="backbone_fc1")(z_bd)
      h = nn.with_logical_constraint(nn.gelu(h), ("batch", "mlp"))
      logits_i = layers.Dense(c.num_classes, ("mlp", "classes"), dt, name="backbone_head")(h)
    else:
      logits_i = layers.Dense(c.num_classes, ("embed", "classes"), dt, name="backbone_head")(z_bd)
    logits = logits_i.astype(jnp.float32)
    if c.use_retrieval:
      if nb_image_bkd is None or nb_text_bkd is None:
        raise ValueError("RetFormer with config.model.use_retrieval=True needs neighbour image "
                         "and text vectors; pass them or set use_retrieval=False.")
      logits = logits + self._retrieval_logits(z_bd, nb_image_bkd.astype(dt),
                                               nb_text_bkd.astype(dt), train).astype(jnp.float32)
    out = (c.tau / 2.0) * logits
    return nn.with_logical_constraint(out, ("batch", "classes"))

  def _retrieval_logits(self, z_bd, nb_image_bkd, nb_text_bkd, train):
    c, dt = self.cfg, DTYPES[self.cfg.dtype]
    spec = ("batch", "length", "embed")
    d_in = z_bd.shape[-1]
    width = c.width or d_in
    if c.modalities == "image_text":
      e_image, e_text = streams(z_bd, nb_image_bkd, nb_text_bkd)
      if width != d_in:
        e_image = layers.Dense(width, ("embed", "mlp"), dt, name="proj_image")(e_image)
        e_text = layers.Dense(width, ("embed", "mlp"), dt, name="proj_text")(e_text)
      i_bsd = nn.with_logical_constraint(e_image, spec)
      t_bsd = nn.with_logical_constraint(e_text, spec)
      for layer in range(c.num_layers):
        i_bsd, t_bsd = CrossFusionLayer(c, name=f"fusion_{layer}")(i_bsd, t_bsd, train=train)
      query = jnp.concatenate([i_bsd[:, 0], t_bsd[:, 0]], axis=-1)
    else:
      nb = nb_image_bkd if c.modalities == "image" else nb_text_bkd
      x_bsd = jnp.concatenate([z_bd[:, None, :], nb], axis=1)
      if width != d_in:
        x_bsd = layers.Dense(width, ("embed", "mlp"), dt, name="proj")(x_bsd)
      x_bsd = nn.with_logical_constraint(x_bsd, spec)
      for layer in range(c.num_layers):
        x_bsd = SelfFusionLayer(c, name=f"fusion_{layer}")(x_bsd, train=train)
      query = x_bsd[:, 0]
    query = nn.with_logical_constraint(layers.LayerNorm("ln_head", dt)(query), ("batch", "embed"))
    return layers.Dense(c.num_classes, ("embed", "classes"), dt, name="retrieval_head")(query)


def query_attention(intermediates) -> jnp.ndarray:
  """Head-averaged attention of the query slot over [query; neighbours], averaged over layers.

  For image_text this is the query image attending over the texts (`image_queries_text`);
  for a single stream, its self-attention. Returns [B, k + 1].
  """
  rows = []
  for name in sorted(intermediates):
    if not name.startswith("fusion_"):
      continue
    layer = intermediates[name]
    key = "image_queries_text" if "image_queries_text" in layer else "self_attention"
    rows.append(layer[key]["query_attention"][0])
  if not rows:
    raise ValueError("No attention weights were recorded: apply the model with "
                     "mutable=['intermediates'] and use_retrieval=True with num_layers >= 1.")
  return jnp.mean(jnp.stack(rows, axis=1), axis=1)


def build(model_config, num_classes: int) -> RetFormer:
  """The RetFormer that `config.model` describes, for a data set of `num_classes` classes."""
  return RetFormer(ModelConfig.from_config(model_config, num_classes))
