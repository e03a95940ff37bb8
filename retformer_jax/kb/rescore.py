"""Exact re-scoring of an index's candidates from the store's (memory-mapped) vectors.

A compressed index (IVF-PQ codes, ScaNN AH codes) finds candidates; their full fp16 vectors,
read from the store on disk, rank them. Per batch of queries the candidate rows are read once
each, in row order (sequential on disk, shared candidates read once), and one jitted function
gathers them per query, converts to float32 and takes the dot products. The call is dispatched
asynchronously, so reading the next batch from the store overlaps the arithmetic of this one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Candidate rows per batch (2 MiB of fp16 at d = 512): they stay in cache while scored.
ROWS = 2048


@jax.jit
def _candidate_dots(rows_ud, inv_mc, q_md):
  """[m, c] dot products of query i with rows_ud[inv_mc[i, j]]."""
  vec_mcd = jnp.take(rows_ud, inv_mc, axis=0).astype(jnp.float32)
  return jnp.sum(vec_mcd * q_md[:, None, :], axis=-1)


def rescore(q_md: np.ndarray, ids: np.ndarray, vectors: np.ndarray, batch: int = 0):
  """(sims [m, c] float32, ids): exact inner products of each query with its candidate rows of
  `vectors` (ids -1 -> -inf). `batch` queries at a time (0: ROWS // depth)."""
  q = np.asarray(q_md, np.float32)
  m, c = ids.shape
  batch = batch or max(1, ROWS // max(c, 1))
  d = vectors.shape[1]
  if m == 0 or c == 0:
    return np.full(ids.shape, -np.inf, np.float32), ids
  pending = []
  for lo in range(0, m, batch):
    i = ids[lo:lo + batch]
    uniq, inv = np.unique(np.where(i >= 0, i, 0), return_inverse=True)
    # Fixed shapes (one compilation per depth); rows past len(uniq) are never indexed.
    rows = np.empty((batch * c, d), vectors.dtype)
    np.take(vectors, uniq, axis=0, out=rows[:len(uniq)])
    inv_mc = np.zeros((batch, c), np.int32)
    inv_mc[:len(i)] = inv.reshape(i.shape)
    q_pad = np.zeros((batch, d), np.float32)
    q_pad[:len(i)] = q[lo:lo + batch]
    pending.append(_candidate_dots(rows, inv_mc, q_pad))
  sims = np.concatenate([np.asarray(p) for p in pending])[:m]
  return np.where(ids >= 0, sims, -np.inf).astype(np.float32), ids
