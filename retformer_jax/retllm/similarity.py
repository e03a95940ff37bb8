"""Exact cosine top-k between two embedding sets (the coarse stage's candidate lists).

Galleries here are small (1k-25k vectors), so exact search is both exact and fast.
"""

from __future__ import annotations

import types

import numpy as np

from retformer_jax.kb.index_exact import ExactIndex


def l2_normalise(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  if (norm == 0).any():
    raise ValueError("l2_normalise: an embedding has zero norm.")
  return x / norm


def top_k(queries: np.ndarray, gallery: np.ndarray, k: int,
          block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Cosine top-k of each query among the gallery: (sims float32 [Q, k], idx int64 [Q, k]).

  The KB's exact backend does the search (gallery sharded over the local devices)."""
  q, g = l2_normalise(queries), l2_normalise(gallery)
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"top_k: query dim {q.shape[1]} != gallery dim {g.shape[1]}.")
  k = min(k, len(g))
  index = ExactIndex(g.shape[1], types.SimpleNamespace(approx=False, recall_target=1.0,
                                                       query_batch=block))
  index.build(g)
  sims, idx = index.search(q, k)
  return sims.astype(np.float32), idx.astype(np.int64)
