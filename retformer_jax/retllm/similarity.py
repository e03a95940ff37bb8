"""Exact cosine top-k between two embedding sets (the coarse stage's candidate lists).

Galleries here are small (1k-25k vectors), so an exact jitted matmul + `jax.lax.top_k` over
blocks of queries is both exact and fast; ties resolve to the lower gallery index.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  if (norm == 0).any():
    raise ValueError("l2_normalise: an embedding has zero norm.")
  return x / norm


@functools.partial(jax.jit, static_argnames=("k",))
def _block_top_k(q_bd, g_nd, k):
  sims_bn = jnp.einsum("bd,nd->bn", q_bd, g_nd, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.top_k(sims_bn, k)


def top_k(queries: np.ndarray, gallery: np.ndarray, k: int,
          block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Cosine top-k of each query among the gallery: (sims float32 [Q, k], idx int64 [Q, k])."""
  q, g = l2_normalise(queries), l2_normalise(gallery)
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"top_k: query dim {q.shape[1]} != gallery dim {g.shape[1]}.")
  k = min(k, len(g))
  g_dev = jnp.asarray(g)
  sims, idx = [], []
  for start in range(0, len(q), block):
    chunk = q[start:start + block]
    pad = block - len(chunk) if len(q) > block else 0  # one compiled shape for all blocks
    s, i = _block_top_k(jnp.asarray(np.pad(chunk, ((0, pad), (0, 0)))), g_dev, k)
    sims.append(np.asarray(s)[:len(chunk)])
    idx.append(np.asarray(i)[:len(chunk)])
  if not sims:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  return np.concatenate(sims).astype(np.float32), np.concatenate(idx).astype(np.int64)
