"""Re-ranking of CLIP's candidate lists by MLLM scores, and Recall@k.

The fine stage scores the first K entries of each query's CLIP list. The reranked list is
those K ordered by (score desc, entropy asc, CLIP rank asc) — the reference's tie-break on
floored scores — followed by the rest of the CLIP list in CLIP order.
"""

from __future__ import annotations

import numpy as np


def rerank(clip_order: np.ndarray, scores: np.ndarray, entropy: np.ndarray) -> np.ndarray:
  """Reorders each row of `clip_order` [Q, L] by its first K=scores.shape[1] scored entries.

  scores, entropy: float [Q, K] for clip_order[:, :K]. Returns int64 [Q, L].
  """
  clip_order = np.asarray(clip_order)
  scores, entropy = np.asarray(scores), np.asarray(entropy)
  q, k = scores.shape
  if entropy.shape != (q, k) or clip_order.ndim != 2 or clip_order.shape[0] != q:
    raise ValueError(f"rerank: clip_order {clip_order.shape}, scores {scores.shape} and "
                     f"entropy {entropy.shape} disagree (want [Q, L], [Q, K], [Q, K]).")
  if clip_order.shape[1] < k:
    raise ValueError(f"rerank: {k} scores per query but only {clip_order.shape[1]} candidates.")
  if np.isnan(scores).any() or np.isnan(entropy).any():
    raise ValueError("rerank: NaN in scores or entropy.")
  rank = np.broadcast_to(np.arange(k), (q, k))
  # np.lexsort sorts by the last key first: score desc, then entropy asc, then CLIP rank asc.
  perm = np.stack([np.lexsort((rank[i], entropy[i], -scores[i])) for i in range(q)]) if q else (
      np.zeros((0, k), np.int64))
  head = np.take_along_axis(clip_order[:, :k], perm, axis=1)
  return np.concatenate([head, clip_order[:, k:]], axis=1).astype(np.int64)


def recall_at(ranked: np.ndarray, is_hit, ks=(1, 5, 10)) -> dict[int, float]:
  """Fraction of queries with a ground-truth item in their first k (in %).

  ranked: int [Q, L] gallery indices, best first; is_hit(ranked) -> bool [Q, L].
  A list shorter than k counts only what it holds.
  """
  ranked = np.asarray(ranked)
  hits = np.asarray(is_hit(ranked), bool)
  if hits.shape != ranked.shape:
    raise ValueError(f"recall_at: is_hit returned {hits.shape}, expected {ranked.shape}.")
  if not len(ranked):
    raise ValueError("recall_at: no queries.")
  return {k: float(100.0 * hits[:, :k].any(axis=1).mean()) for k in ks}


def text_to_image_recall(ranked_images: np.ndarray, query_captions: np.ndarray,
                         caption_image: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
  """Caption queries: a hit is the caption's one ground-truth image."""
  gt = np.asarray(caption_image)[np.asarray(query_captions)]
  return recall_at(ranked_images, lambda r: r == gt[:, None], ks)


def image_to_text_recall(ranked_captions: np.ndarray, query_images: np.ndarray,
                         caption_image: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
  """Image queries: a hit is any of the image's captions."""
  owner = np.asarray(caption_image)
  q = np.asarray(query_images)
  return recall_at(ranked_captions, lambda r: owner[r] == q[:, None], ks)


def metrics_dict(t2i: dict[int, float], i2t: dict[int, float], clip_t2i: dict[int, float],
                 clip_i2t: dict[int, float]) -> dict[str, float]:
  """The keys of WORKDIR/retllm/metrics.json."""
  out = {}
  for prefix, a, b in (("", t2i, i2t), ("clip_", clip_t2i, clip_i2t)):
    for k, v in a.items():
      out[f"{prefix}t2i_r{k}"] = v
    for k, v in b.items():
      out[f"{prefix}i2t_r{k}"] = v
  return out
