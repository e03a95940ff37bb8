"""Qwen2.5-VL and Qwen2-VL in Flax linen: vision tower + decoder with multimodal RoPE.

    model, params = hf.load_qwen2_5_vl(folder)
    logits = model.apply({"params": params}, input_ids, pixel_values, image_grid_thw,
                         attention_mask)

takes the HF model's inputs (pixel_values flattened as its image processor gives them) and
returns logits [B, T, vocab]. That call prepares index arrays on the host (`prepare_inputs`:
window layout, 3-D rotary positions exactly as HF `get_rope_index`, masks), so its inputs must
be concrete; jit `forward` on those arrays instead. Building blocks for fast scoring:

- `image_features(...)`: vision tower on the arrays of a `qwen_layout.VisionLayout`;
- `embed(input_ids)`: token embeddings;
- `decode(...)`: a range of decoder layers over embeddings, optionally continuing a cached
  prefix (its per-layer K/V), optionally with visual re-injection (`qwen_injection`).

Decoder weights are stacked over layers (`layers` axis) and run with `lax.scan`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from retformer_jax.models import layers, qwen_injection, qwen_layout
from retformer_jax.models.qwen_config import QwenVLConfig, TextConfig
from retformer_jax.models.qwen_vision import VisionTower

_INIT = nn.initializers.normal(0.02)
_NEG = float(np.finfo(np.float32).min)


class DecoderParams(nn.Module):
  """All decoder-layer weights, stacked over a leading `layers` axis."""

  cfg: TextConfig
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> dict:
    c = self.cfg
    L, D, H, K, E, F = c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim, c.mlp_dim
    ones, zeros = nn.initializers.ones, nn.initializers.zeros

    def p(name, shape, axes, init=_INIT):
      return layers.param(self, name, init, shape, axes, self.param_dtype)

    return {
        "input_norm": p("input_norm", (L, D), ("layers", "embed"), ones),
        "q": p("q", (L, D, H, E), ("layers", "embed", "heads", "head_dim")),
        "q_bias": p("q_bias", (L, H, E), ("layers", "heads", "head_dim"), zeros),
        "k": p("k", (L, D, K, E), ("layers", "embed", "kv_heads", "head_dim")),
        "k_bias": p("k_bias", (L, K, E), ("layers", "kv_heads", "head_dim"), zeros),
        "v": p("v", (L, D, K, E), ("layers", "embed", "kv_heads", "head_dim")),
        "v_bias": p("v_bias", (L, K, E), ("layers", "kv_heads", "head_dim"), zeros),
        "o": p("o", (L, H, E, D), ("layers", "heads", "head_dim", "embed")),
        "post_norm": p("post_norm", (L, D), ("layers", "embed"), ones),
        "gate": p("gate", (L, D, F), ("layers", "embed", "mlp")),
        "up": p("up", (L, D, F), ("layers", "embed", "mlp")),
        "down": p("down", (L, F, D), ("layers", "mlp", "embed")),
    }


def mrope_cos_sin(positions_3bt, cfg: TextConfig, dtype):
  """cos, sin [B, T, 1, head_dim]: section i of the frequencies follows position axis i % 3."""
  E = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, E, 2, dtype=np.float32) / E))
  if sum(cfg.mrope_section) != E // 2:
    raise ValueError(f"mrope_section {cfg.mrope_section} must sum to head_dim/2 = {E // 2}.")
  axis = np.concatenate([np.full(n, i % 3) for i, n in enumerate(cfg.mrope_section)])
  pos = positions_3bt.astype(jnp.float32)
  freqs = pos[..., None] * jnp.asarray(inv)  # [3, B, T, E/2]
  ax = jnp.asarray(axis)
  freqs = jnp.where(ax == 0, freqs[0], jnp.where(ax == 1, freqs[1], freqs[2]))
  emb = jnp.concatenate([freqs, freqs], -1)
  return jnp.cos(emb).astype(dtype)[:, :, None, :], jnp.sin(emb).astype(dtype)[:, :, None, :]


def _attend(q_bthe, k_bske, v_bske, mask_bts, dtype):
  B, T, H, E = q_bthe.shape
  K = k_bske.shape[2]
  q = q_bthe.reshape(B, T, K, H // K, E)
  s = jnp.einsum("btkge,bske->bkgts", q, k_bske).astype(jnp.float32) * (E ** -0.5)
  s = jnp.where(mask_bts[:, None, None], s, _NEG)
  a = jax.nn.softmax(s, axis=-1).astype(dtype)
  o = jnp.einsum("bkgts,bske->btkge", a, v_bske)
  return o.reshape(B, T, H, E)


class QwenVL(nn.Module):
  cfg: QwenVLConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    t = self.cfg.text
    self.visual = VisionTower(self.cfg.vision, dtype=self.dtype, param_dtype=self.param_dtype)
    self.layers = DecoderParams(t, self.param_dtype)
    self.embed_tokens = layers.param(self, "embed_tokens", _INIT, (t.vocab_size, t.hidden),
                                     ("vocab", "embed"), self.param_dtype)
    self.final_norm = layers.param(self, "final_norm", nn.initializers.ones, (t.hidden,),
                                   ("embed",), self.param_dtype)
    if not t.tie_embeddings:
      self.lm_head = layers.param(self, "lm_head", _INIT, (t.hidden, t.vocab_size),
                                  ("embed", "vocab"), self.param_dtype)

  def init_params(self):
    """Touches every parameter: `model.init(rng, method=QwenVL.init_params)`."""
    self.layers()
    return self.visual.patch_embed, self.final_norm

  # ------------------------------------------------------------------ pieces
  def _head(self):
    return self.embed_tokens.T if self.cfg.text.tie_embeddings else self.lm_head

  def logits(self, h_nd, final_norm: bool = True):
    if final_norm:
      h_nd = layers.rms_norm(h_nd, self.final_norm, self.cfg.text.eps)
    return jnp.dot(h_nd.astype(self.dtype), self._head().astype(self.dtype),
                   preferred_element_type=jnp.float32)

  def embed(self, input_ids):
    return jnp.take(self.embed_tokens, input_ids, axis=0).astype(self.dtype)

  def image_features(self, patches, perm, rot_hw, full_seg, win_seg, unperm):
    return self.visual(patches, perm, rot_hw, full_seg, win_seg, unperm)

  def decode(self, x_btd, positions_3bt, key_mask_bt, last_idx_b, *, prefix_kv=None,
             prefix_mask_bp=None, start: int = 0, stop: int | None = None, collect_kv=False,
             injection: qwen_injection.InjectionConfig | None = None, arm_state=None,
             memory_bmd=None, memory_mask_bm=None, output: str = "hidden",
             trigger_only: bool = False, collect_hidden: bool = False):
    """Runs decoder layers [start, stop) over embeddings `x_btd`.

    prefix_kv: (k, v) each [stop-start, Bp, P, kv_heads, head_dim] of a cached prefix that
    precedes `x` (Bp = 1 broadcasts to the batch); prefix_mask_bp marks its valid positions.
    key_mask_bt marks valid positions of `x`; a query attends to valid prefix keys and to
    valid keys of `x` at or before it. last_idx_b indexes each sample's last position in `x`.
    output: "hidden" (no head), "last" (logits of the last position) or "all".
    trigger_only: with injection, track the trigger (arm_state) but inject nothing (a pass
    that only finds each sample's armed layer). collect_hidden: also return the input of every
    layer run (`hiddens` [stop-start, B, T, D]).
    Returns dict(hidden, logits, kv, arm_state, hiddens).
    """
    t = self.cfg.text
    stop = t.layers if stop is None else stop
    dt = self.dtype
    B, T, _ = x_btd.shape
    cos, sin = mrope_cos_sin(positions_3bt, t, dt)
    causal = jnp.tril(jnp.ones((T, T), bool))
    mask = causal[None] & key_mask_bt[:, None, :].astype(bool)
    if prefix_kv is not None:
      P = prefix_kv[0].shape[2]
      pm = jnp.broadcast_to(prefix_mask_bp.astype(bool), (B, P))
      mask = jnp.concatenate([jnp.broadcast_to(pm[:, None, :], (B, T, P)), mask], -1)
    inj = injection if injection is not None and injection.enabled else None
    can_inject = inj is not None and stop > inj.first_armable and not trigger_only
    if can_inject and (memory_bmd is None or memory_mask_bm is None):
      raise ValueError("decode with injection over layers that can be armed needs memory_bmd "
                       "(the sequence's input embeddings) and memory_mask_bm.")
    state = arm_state if arm_state is not None else qwen_injection.ArmState.initial(B)
    params = jax.tree_util.tree_map(lambda a: a[start:stop], self.layers())
    head = self._head()
    seq_mask = key_mask_bt.astype(bool)

    def layer(carry, xs):
      h, st = carry
      p, idx, pk, pv = xs
      h_in = h
      h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
      a_in = layers.rms_norm(h, p["input_norm"], t.eps)
      q = jnp.einsum("btd,dhe->bthe", a_in, p["q"].astype(dt)) + p["q_bias"].astype(dt)
      k = jnp.einsum("btd,dhe->bthe", a_in, p["k"].astype(dt)) + p["k_bias"].astype(dt)
      v = jnp.einsum("btd,dhe->bthe", a_in, p["v"].astype(dt)) + p["v_bias"].astype(dt)
      q = q * cos + layers.rotate_half(q) * sin
      k = k * cos + layers.rotate_half(k) * sin
      q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
      kk, vv = k, v
      if pk is not None:
        bk = jnp.broadcast_to(pk.astype(dt), (B,) + pk.shape[1:])
        bv = jnp.broadcast_to(pv.astype(dt), (B,) + pv.shape[1:])
        kk, vv = jnp.concatenate([bk, k], 1), jnp.concatenate([bv, v], 1)
      o = _attend(q, kk, vv, mask, dt)
      h = h + jnp.einsum("bthe,hed->btd", o, p["o"].astype(dt))
      x = layers.rms_norm(h, p["post_norm"], t.eps)
      g = jax.nn.silu(x @ p["gate"].astype(dt))
      g = nn.with_logical_constraint(g * (x @ p["up"].astype(dt)), ("batch", "length", "mlp"))
      f = g @ p["down"].astype(dt)
      if can_inject:
        mixed = jax.lax.cond(
            jnp.any(st.armed_next),
            lambda: qwen_injection.reinject(x, f, seq_mask, memory_bmd, memory_mask_bm,
                                            p["gate"], p["down"], inj.alpha).astype(dt),
            lambda: f)
        f = jnp.where(st.armed_next[:, None, None], mixed, f)
      h = h + f
      if inj is not None:
        h_last = jnp.take_along_axis(h, last_idx_b[:, None, None], axis=1)[:, 0]
        if inj.final_norm:
          h_last = layers.rms_norm(h_last, self.final_norm, t.eps)
        lg = jnp.dot(h_last.astype(dt), head.astype(dt), preferred_element_type=jnp.float32)
        st = st.step(idx, qwen_injection.topk_entropy(lg, inj.top_k), inj, t.layers)
      return (h, st), ((k, v) if collect_kv else None, h_in if collect_hidden else None)

    n = stop - start
    pk, pv = (None, None) if prefix_kv is None else prefix_kv
    xs = (params, jnp.arange(start, stop, dtype=jnp.int32), pk, pv)
    (h, state), (kv, hiddens) = jax.lax.scan(layer, (x_btd.astype(dt), state), xs, length=n)
    out = {"hidden": h, "kv": kv, "arm_state": state, "logits": None, "hiddens": hiddens}
    if output == "last":
      h_last = jnp.take_along_axis(h, last_idx_b[:, None, None], axis=1)[:, 0]
      out["logits"] = self.logits(h_last)
    elif output == "all":
      out["logits"] = self.logits(h)
    return out

  # ------------------------------------------------------------------ HF-style call
  def merge_image_tokens(self, input_ids, x_btd, image_tokens_nd):
    """Writes image features, in order, over the image-token positions (row-major)."""
    is_img = (input_ids == self.cfg.image_token_id)
    order = jnp.cumsum(is_img.reshape(-1)) - 1
    feats = jnp.take(image_tokens_nd.astype(x_btd.dtype), jnp.clip(order, 0), axis=0)
    return jnp.where(is_img.reshape(-1)[:, None], feats, x_btd.reshape(-1, x_btd.shape[-1])
                     ).reshape(x_btd.shape)

  def forward(self, input_ids, pixel_values, perm, rot_hw, full_seg, win_seg, unperm,
              positions, attention_mask, last_idx, memory_mask=None,
              injection: qwen_injection.InjectionConfig | None = None, output: str = "all"):
    """Jittable full forward on the arrays of `prepare_inputs` (no image: pixel_values None)."""
    x = self.embed(input_ids)
    if pixel_values is not None:
      feats = self.image_features(pixel_values, perm, rot_hw, full_seg, win_seg, unperm)
      x = self.merge_image_tokens(input_ids, x, feats)
    return self.decode(x, positions, attention_mask, last_idx, injection=injection,
                       memory_bmd=x, memory_mask_bm=memory_mask, output=output)["logits"]

  def __call__(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
               injection: qwen_injection.InjectionConfig | None = None):
    try:
      arrays = prepare_inputs(self.cfg, input_ids, image_grid_thw, attention_mask, injection)
    except jax.errors.TracerArrayConversionError as e:
      raise TypeError("QwenVL.__call__ prepares index arrays on the host, so input_ids, "
                      "image_grid_thw and attention_mask must be concrete (do not jit this call; "
                      "jit `forward` on the arrays of `prepare_inputs`).") from e
    if pixel_values is None and arrays["perm"] is not None:
      raise ValueError("image_grid_thw is given but pixel_values is None.")
    pv = None if pixel_values is None else jnp.asarray(pixel_values)
    return self.forward(pixel_values=pv, injection=injection, **arrays)


def prepare_inputs(cfg: QwenVLConfig, input_ids, image_grid_thw=None, attention_mask=None,
                   injection: qwen_injection.InjectionConfig | None = None,
                   pad_patches_to: int | None = None) -> dict:
  """Host-side arrays for `QwenVL.forward`: vision layout, 3-D positions, masks, last index.

  The last index is each row's last valid position (left padding: T - 1)."""
  ids = np.asarray(input_ids)
  if ids.ndim != 2:
    raise ValueError(f"input_ids must be [batch, length]; got shape {ids.shape}.")
  am = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
  valid = am > 0
  if not valid.any(axis=1).all():
    raise ValueError("Every row of attention_mask needs at least one valid token.")
  n_img = int((ids == cfg.image_token_id).sum())
  out = dict(input_ids=ids, perm=None, rot_hw=None, full_seg=None, win_seg=None, unperm=None)
  if image_grid_thw is not None:
    v = cfg.vision
    lay = qwen_layout.vision_layout(image_grid_thw, merge=v.merge_size, windowed=v.windowed,
                                    window_size=v.window_size, patch_size=v.patch_size,
                                    pad_to=pad_patches_to)
    if lay.num_tokens != n_img:
      raise ValueError(f"input_ids hold {n_img} image tokens but image_grid_thw gives "
                       f"{lay.num_tokens}; expand <|image_pad|> as the processor does.")
    out.update(perm=lay.perm, rot_hw=lay.rot_hw, full_seg=lay.full_seg, win_seg=lay.win_seg,
               unperm=lay.unperm)
  elif n_img:
    raise ValueError(f"input_ids hold {n_img} image tokens but image_grid_thw is None.")
  out["positions"] = qwen_layout.rope_index(ids, image_grid_thw, am,
                                            image_token_id=cfg.image_token_id,
                                            merge=cfg.vision.merge_size)
  out["attention_mask"] = valid
  out["last_idx"] = np.array([np.flatnonzero(r).max() for r in valid], np.int32)
  out["memory_mask"] = None
  if injection is not None and injection.enabled:
    out["memory_mask"] = valid if injection.memory == "all" else valid & (
        ids == cfg.image_token_id)
  return out


def build(cfg: QwenVLConfig, dtype: str = "float32") -> QwenVL:
  """The model of `cfg`, computing and storing parameters in `dtype`."""
  dt = jnp.dtype(dtype)
  return QwenVL(cfg, dtype=dt, param_dtype=dt)


def _boxed_shapes(model: QwenVL):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), method=QwenVL.init_params))


def abstract_params(model: QwenVL):
  """Shapes and dtypes of the parameters, without allocating them."""
  return nn.unbox(_boxed_shapes(model)["params"])


def logical_specs(model: QwenVL):
  """PartitionSpecs of logical axis names for every parameter (same tree as the params)."""
  return nn.get_partition_spec(_boxed_shapes(model)["params"])


def param_shardings(model: QwenVL, mesh, axis_rules):
  """NamedShardings placing each parameter on `mesh` by the logical-axis rules."""
  return nn.logical_to_mesh_sharding(logical_specs(model), mesh, tuple(axis_rules))


def num_params(params) -> int:
  """Total number of parameter values in a (possibly abstract) params tree."""
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
