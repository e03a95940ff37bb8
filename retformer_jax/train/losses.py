"""Losses and mixup for RetFormer: soft-target cross-entropy, LACE, label smoothing, mixup.

LACE (logit-adjusted cross-entropy, Menon et al. 2021) trains on logits + tau * log(pi_y), pi the
training label frequencies, and predicts with the raw logits, which rebalances the long tail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOSSES = ("ce", "lace")


def log_prior(train_counts) -> np.ndarray:
  """log pi per class from training counts (a class with no images counts as 1)."""
  counts = np.maximum(np.asarray(train_counts, np.float64), 1.0)
  return np.log(counts / counts.sum()).astype(np.float32)


def smoothed_targets(labels_b, num_classes: int, smoothing: float):
  """(1 - eps) one_hot + eps / C."""
  onehot = jax.nn.one_hot(labels_b, num_classes, dtype=jnp.float32)
  return onehot * (1.0 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits_bc, targets_bc):
  """Per-example -sum_c t_c log softmax(logits)_c, in float32."""
  logp = jax.nn.log_softmax(logits_bc.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets_bc * logp, axis=-1)


def classification_loss(logits_bc, targets_bc, *, loss: str, log_prior_c=None, lace_tau=1.0):
  """Per-example CE, or LACE = CE(logits + lace_tau * log pi)."""
  if loss == "lace":
    if log_prior_c is None:
      raise ValueError("loss='lace' needs the training label frequencies (log_prior_c).")
    logits_bc = logits_bc.astype(jnp.float32) + lace_tau * log_prior_c
  elif loss != "ce":
    raise ValueError(f"config.train.loss={loss!r}; use one of {LOSSES}.")
  return soft_cross_entropy(logits_bc, targets_bc)


def mixup_apply(lam, perm_b, inputs, targets_bc):
  """x -> lam x + (1 - lam) x[perm] for every input and for the targets."""
  mix = lambda x: lam * x + (1.0 - lam) * x[perm_b]
  return tuple(mix(x) for x in inputs), mix(targets_bc)


def mixup(rng, alpha: float, inputs, targets_bc):
  """Mixup with lam ~ Beta(alpha, alpha) and a random pairing of the batch."""
  lam_rng, perm_rng = jax.random.split(rng)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  perm_b = jax.random.permutation(perm_rng, targets_bc.shape[0])
  return mixup_apply(lam, perm_b, inputs, targets_bc)
