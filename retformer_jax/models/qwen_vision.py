"""Vision tower of Qwen2-VL and Qwen2.5-VL (linen, layers stacked and scanned).

Patches arrive flattened as the HF image processor gives them ([N, C*T*P*P]); the Conv3d patch
embedding is a matmul over that row. Images of different sizes share one call: their patches
are concatenated and attention is restricted by segment ids (one id per image for full
attention, one per window for Qwen2.5-VL's windowed blocks), with the layout precomputed on the
host by `qwen_layout.vision_layout`.

Qwen2.5-VL: RMSNorm, gated SiLU MLP with bias, window attention except in
`fullatt_blocks`, RMSNorm in the merger. Qwen2-VL: LayerNorm, fc1-act-fc2 MLP, full attention
everywhere, LayerNorm in the merger.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from retformer_jax.models import layers, qwen_layout
from retformer_jax.models.qwen_config import VisionConfig

_INIT = nn.initializers.normal(0.02)


class VisionTower(nn.Module):
  """Patches [N, patch_dim] -> merged image tokens [N / merge**2, out_dim]."""

  cfg: VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _p(self, name, shape, axes, init=_INIT):
    return layers.param(self, name, init, shape, axes, self.param_dtype)

  def setup(self):
    c = self.cfg
    L, W, H, F = c.depth, c.width, c.heads, c.mlp_dim
    hd = W // H
    ones, zeros = nn.initializers.ones, nn.initializers.zeros
    self.patch_embed = self._p("patch_embed", (c.patch_dim, W), ("patch", "embed"))
    blk = {
        "norm1": self._p("norm1", (L, W), ("layers", "embed"), ones),
        "norm2": self._p("norm2", (L, W), ("layers", "embed"), ones),
        "qkv": self._p("qkv", (L, W, 3, H, hd), ("layers", "embed", None, "heads", "head_dim")),
        "qkv_bias": self._p("qkv_bias", (L, 3, H, hd), ("layers", None, "heads", "head_dim"),
                            zeros),
        "proj": self._p("proj", (L, H, hd, W), ("layers", "heads", "head_dim", "embed")),
        "proj_bias": self._p("proj_bias", (L, W), ("layers", "embed"), zeros),
    }
    if c.windowed:
      blk.update({
          "gate": self._p("gate", (L, W, F), ("layers", "embed", "mlp")),
          "gate_bias": self._p("gate_bias", (L, F), ("layers", "mlp"), zeros),
          "up": self._p("up", (L, W, F), ("layers", "embed", "mlp")),
          "up_bias": self._p("up_bias", (L, F), ("layers", "mlp"), zeros),
          "down": self._p("down", (L, F, W), ("layers", "mlp", "embed")),
          "down_bias": self._p("down_bias", (L, W), ("layers", "embed"), zeros),
      })
    else:
      blk.update({
          "norm1_bias": self._p("norm1_bias", (L, W), ("layers", "embed"), zeros),
          "norm2_bias": self._p("norm2_bias", (L, W), ("layers", "embed"), zeros),
          "fc1": self._p("fc1", (L, W, F), ("layers", "embed", "mlp")),
          "fc1_bias": self._p("fc1_bias", (L, F), ("layers", "mlp"), zeros),
          "fc2": self._p("fc2", (L, F, W), ("layers", "mlp", "embed")),
          "fc2_bias": self._p("fc2_bias", (L, W), ("layers", "embed"), zeros),
      })
    self.blocks = blk
    U = W * c.merge_size ** 2
    self.merger_norm = self._p("merger_norm", (W,), ("embed",), ones)
    if not c.windowed:
      self.merger_norm_bias = self._p("merger_norm_bias", (W,), ("embed",), zeros)
    self.merger_fc1 = self._p("merger_fc1", (U, U), ("mlp", "embed"))
    self.merger_fc1_bias = self._p("merger_fc1_bias", (U,), ("embed",), zeros)
    self.merger_fc2 = self._p("merger_fc2", (U, c.out_dim), ("mlp", "embed"))
    self.merger_fc2_bias = self._p("merger_fc2_bias", (c.out_dim,), ("embed",), zeros)

  def layout(self, grid_thw, pad_to: int | None = None) -> qwen_layout.VisionLayout:
    c = self.cfg
    return qwen_layout.vision_layout(grid_thw, merge=c.merge_size, windowed=c.windowed,
                                     window_size=c.window_size, patch_size=c.patch_size,
                                     pad_to=pad_to)

  def __call__(self, patches, perm, rot_hw, full_seg, win_seg, unperm):
    """Arguments are the arrays of a `VisionLayout`; returns [Np / merge**2, out_dim]."""
    c = self.cfg
    dt = self.dtype
    W, H = c.width, c.heads
    hd = W // H
    norm = layers.rms_norm if c.windowed else None
    act = layers.activation(c.act)
    x = jnp.asarray(patches, dt) @ self.patch_embed.astype(dt)
    x = x[perm]
    inv = 1.0 / (c.rope_theta ** (jnp.arange(0, hd // 2, 2, dtype=jnp.float32) / (hd // 2)))
    freqs = rot_hw[:, :, None].astype(jnp.float32) * inv  # [N, 2, hd/4]
    freqs = jnp.concatenate([freqs[:, 0], freqs[:, 1]], -1)
    freqs = jnp.concatenate([freqs, freqs], -1)  # [N, hd]
    cos, sin = jnp.cos(freqs)[:, None, :], jnp.sin(freqs)[:, None, :]
    full_mask = (full_seg[:, None] == full_seg[None, :])
    win_mask = (win_seg[:, None] == win_seg[None, :])
    is_full = np.zeros(c.depth, bool)
    is_full[[i for i in c.fullatt_blocks if i < c.depth]] = True
    if not c.windowed:
      is_full[:] = True
    neg = jnp.finfo(jnp.float32).min

    def block(x, xs):
      p, full = xs
      if norm is not None:
        h = layers.rms_norm(x, p["norm1"], c.eps)
      else:
        h = layers.layer_norm(x, p["norm1"], p["norm1_bias"], c.eps)
      qkv = jnp.einsum("nd,dkhe->knhe", h, p["qkv"].astype(dt)) + p["qkv_bias"].astype(dt)[:, None]
      q, k, v = qkv[0], qkv[1], qkv[2]
      q32, k32 = q.astype(jnp.float32), k.astype(jnp.float32)
      q = (q32 * cos + layers.rotate_half(q32) * sin).astype(dt)
      k = (k32 * cos + layers.rotate_half(k32) * sin).astype(dt)
      s = jnp.einsum("nhe,mhe->hnm", q, k).astype(jnp.float32) * (hd ** -0.5)
      mask = jnp.where(full, full_mask, win_mask)
      s = jnp.where(mask[None], s, neg)
      a = jax.nn.softmax(s, axis=-1).astype(dt)
      o = jnp.einsum("hnm,mhe->nhe", a, v)
      x = x + jnp.einsum("nhe,hed->nd", o, p["proj"].astype(dt)) + p["proj_bias"].astype(dt)
      if norm is not None:
        h = layers.rms_norm(x, p["norm2"], c.eps)
        g = act(h @ p["gate"].astype(dt) + p["gate_bias"].astype(dt))
        u = h @ p["up"].astype(dt) + p["up_bias"].astype(dt)
        m = (g * u) @ p["down"].astype(dt) + p["down_bias"].astype(dt)
      else:
        h = layers.layer_norm(x, p["norm2"], p["norm2_bias"], c.eps)
        m = act(h @ p["fc1"].astype(dt) + p["fc1_bias"].astype(dt))
        m = m @ p["fc2"].astype(dt) + p["fc2_bias"].astype(dt)
      return x + m, None

    x, _ = jax.lax.scan(block, x, (self.blocks, jnp.asarray(is_full)))
    if c.windowed:
      x = layers.rms_norm(x, self.merger_norm, c.eps)
    else:
      x = layers.layer_norm(x, self.merger_norm, self.merger_norm_bias, c.eps)
    x = x.reshape(-1, W * c.merge_size ** 2)
    x = jax.nn.gelu(x @ self.merger_fc1.astype(dt) + self.merger_fc1_bias.astype(dt),
                    approximate=False)
    x = x @ self.merger_fc2.astype(dt) + self.merger_fc2_bias.astype(dt)
    return x[unperm]
