"""Visual re-injection ("visual retracing") into one decoder FFN, per sample.

After each decoder layer l with layer_lo < l < layer_hi, the last position's hidden state goes
through lm_head (the raw hidden state, as the released code does; optionally the final norm
first); if the entropy of the softmax over its top-k
logits, divided by log(k), exceeds tau, layer l+1 is armed (once per forward). In the armed
layer, with x the FFN input, F = FFN(x) and M the memory (the sequence's input embeddings, or
its image tokens only):

    K = (mean|W_gate| / mean|M|) M,   V = (mean|W_down| / mean|M|) M
    A = SiLU(x K^T) V,   Â = A * mean|F| / mean|A|,   output = (1 - alpha) F + alpha Â

Means run over one sample's valid positions only, so a padded batch gives each sample the value
it would get alone.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class InjectionConfig:
  enabled: bool = False
  alpha: float = 0.12
  tau: float = 0.75
  layer_lo: int = 5
  layer_hi: int = 16
  top_k: int = 10
  memory: str = "all"  # "all": every input embedding; "image": image tokens only
  # Per-layer trigger logits = lm_head(h) on the raw hidden state, as the released code computes
  # them; True reads lm_head(final_norm(h)) instead (the normed variant).
  final_norm: bool = False

  def __post_init__(self):
    if self.memory not in ("all", "image"):
      raise ValueError(f"InjectionConfig.memory={self.memory!r}; use 'all' or 'image'.")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"InjectionConfig.alpha={self.alpha} must lie in [0, 1].")
    if self.top_k < 2:
      raise ValueError(f"InjectionConfig.top_k={self.top_k} must be >= 2.")

  @property
  def first_armable(self) -> int:
    """The lowest layer that can ever be injected."""
    return self.layer_lo + 2


def _masked_mean_abs(x_bnd, mask_bn):
  m = mask_bn.astype(jnp.float32)[..., None]
  total = jnp.sum(jnp.abs(x_bnd.astype(jnp.float32)) * m, axis=(1, 2))
  count = jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0) * x_bnd.shape[-1]
  return total / count  # [B]


def reinject(x_btd, f_btd, seq_mask_bt, mem_bmd, mem_mask_bm, gate_kernel, down_kernel,
             alpha: float):
  """(1 - alpha) F + alpha Â for every sample (callers select the armed samples)."""
  x = x_btd.astype(jnp.float32)
  f = f_btd.astype(jnp.float32)
  mem = mem_bmd.astype(jnp.float32)
  mem_abs = _masked_mean_abs(mem, mem_mask_bm)
  g_abs = jnp.mean(jnp.abs(gate_kernel.astype(jnp.float32)))
  d_abs = jnp.mean(jnp.abs(down_kernel.astype(jnp.float32)))
  k = mem * (g_abs / mem_abs)[:, None, None]
  v = mem * (d_abs / mem_abs)[:, None, None]
  s = jax.nn.silu(jnp.einsum("btd,bmd->btm", x, k))
  s = s * mem_mask_bm.astype(jnp.float32)[:, None, :]
  a = jnp.einsum("btm,bmd->btd", s, v)
  scale = _masked_mean_abs(f, seq_mask_bt) / _masked_mean_abs(a, seq_mask_bt)
  return (1.0 - alpha) * f + alpha * a * scale[:, None, None]


def topk_entropy(logits_bv, k: int):
  """Entropy of softmax(top-k logits) divided by log(k), per row."""
  top, _ = jax.lax.top_k(logits_bv.astype(jnp.float32), k)
  logp = jax.nn.log_softmax(top, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1) / jnp.log(float(k))


@dataclasses.dataclass(frozen=True)
class ArmState:
  """Per-sample trigger state carried across layers."""
  armed_next: jax.Array  # [B] bool: the next layer is injected
  fired: jax.Array  # [B] bool: the trigger already fired in this forward
  armed_layer: jax.Array  # [B] int32: the injected layer, -1 if none

  @staticmethod
  def initial(batch: int) -> "ArmState":
    return ArmState(jnp.zeros((batch,), bool), jnp.zeros((batch,), bool),
                    jnp.full((batch,), -1, jnp.int32))

  def step(self, layer, entropy_b, cfg: InjectionConfig, num_layers: int) -> "ArmState":
    eligible = (layer > cfg.layer_lo) & (layer < cfg.layer_hi) & (layer + 1 < num_layers)
    fire = eligible & ~self.fired & (entropy_b > cfg.tau)
    return ArmState(fire, self.fired | fire, jnp.where(fire, layer + 1, self.armed_layer))


jax.tree_util.register_dataclass(ArmState, data_fields=["armed_next", "fired", "armed_layer"],
                                 meta_fields=[])
