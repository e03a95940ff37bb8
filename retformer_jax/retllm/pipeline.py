"""RetLLM end to end: CLIP candidates -> MLLM scores of the top K -> reranked lists -> Recall@k.

Fine scores are written per chunk of queries (one .npz per chunk, atomically) in a folder keyed
by everything that determines them; a rerun skips finished chunks, so a killed run resumes
and ends with the same metrics as an uninterrupted one. The scorer is built lazily through
`make_scorer`, so a rerun whose chunks are all done never loads the MLLM, and tests pass in
any object with the scorer's two methods.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Protocol, Sequence

from absl import logging
import numpy as np

from retformer_jax import atomic_io, preemption
from retformer_jax.retllm import caption_sets
from retformer_jax.retllm import coarse
from retformer_jax.retllm import ranking

RECALL_KS = (1, 5, 10)


class Scorer(Protocol):
  """What the fine stage needs of retllm.scorer.PairScorer (`score_pairs` used if present)."""

  def score_text_to_image(self, caption: str, images: list[np.ndarray]): ...

  def score_image_to_text(self, image: np.ndarray, captions: list[str]): ...


@dataclasses.dataclass(frozen=True)
class Settings:
  top_k: int = 5  # candidates scored by the MLLM per query
  chunk_size: int = 32  # queries per result file
  num_queries: int = 0  # first N queries per direction (0 = all)
  scorer_identity: str = ""  # everything the scores depend on (model, injection, flooring...)


def _score_chunk(scorer: Scorer, direction: str, data: caption_sets.CaptionSet,
                 queries: np.ndarray, cands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """p_true and entropy [n, k] of each query against its candidates cands [n, k].

  A scorer with `score_pairs` gets the whole chunk at once: it groups pairs by image, so an
  image that is a candidate of several caption queries has its prompt prefix computed once.
  """
  n, k = cands.shape
  if hasattr(scorer, "score_pairs"):
    uniq, inv = np.unique(cands, return_inverse=True)
    inv = inv.reshape(n, k)
    if direction == "t2i":
      images = [data.image(i) for i in uniq]
      captions = [data.captions[q] for q in queries]
      pairs = [(int(inv[r, c]), r) for r in range(n) for c in range(k)]
    else:
      images = [data.image(q) for q in queries]
      captions = [data.captions[i] for i in uniq]
      pairs = [(r, int(inv[r, c])) for r in range(n) for c in range(k)]
    res = scorer.score_pairs(images, captions, pairs)
    return (np.asarray(res.p_true, np.float32).reshape(n, k),
            np.asarray(res.entropy, np.float32).reshape(n, k))
  p = np.zeros((n, k), np.float32)
  e = np.zeros((n, k), np.float32)
  for row, q in enumerate(queries):
    if direction == "t2i":
      res = scorer.score_text_to_image(data.captions[q], [data.image(i) for i in cands[row]])
    else:
      res = scorer.score_image_to_text(data.image(q), [data.captions[i] for i in cands[row]])
    p[row], e[row] = np.asarray(res.p_true), np.asarray(res.entropy)
  return p, e


def _score_direction(direction: str, data: caption_sets.CaptionSet, cands: np.ndarray,
                     queries: np.ndarray, k: int, out_dir: str, chunk_size: int,
                     get_scorer: Callable[[], Scorer]) -> tuple[np.ndarray, np.ndarray]:
  """p_true and entropy [Q, k] for the first k candidates of each query, chunk by chunk."""
  os.makedirs(out_dir, exist_ok=True)
  p_all, e_all = [], []
  num_chunks = -(-len(queries) // chunk_size)
  t0, scored = time.time(), 0
  for c in range(num_chunks):
    start = c * chunk_size
    q_chunk = queries[start:start + chunk_size]
    path = os.path.join(out_dir, f"chunk_{start:07d}_{start + len(q_chunk):07d}.npz")
    if os.path.isfile(path):
      with np.load(path) as z:
        if np.array_equal(z["queries"], q_chunk) and np.array_equal(z["candidates"],
                                                                     cands[q_chunk, :k]):
          p_all.append(z["p_true"])
          e_all.append(z["entropy"])
          continue
      raise RuntimeError(f"{path} holds other queries or candidates than this run; "
                         f"remove {out_dir} to rescore.")
    p, e = _score_chunk(get_scorer(), direction, data, q_chunk, cands[q_chunk, :k])
    atomic_io.save_npz(path, queries=q_chunk, candidates=cands[q_chunk, :k], p_true=p, entropy=e)
    preemption.check(f"RetLLM {direction}, chunk {c + 1} of {num_chunks} (saved)")
    p_all.append(p)
    e_all.append(e)
    scored += len(q_chunk)
    elapsed = max(time.time() - t0, 1e-9)
    left = len(queries) - start - len(q_chunk)
    logging.info("retllm %s: chunk %d/%d done, %.1f pairs/s, ETA %.0f s", direction, c + 1,
                 num_chunks, scored * k / elapsed, left * elapsed / scored)
  if not p_all:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.float32)
  return np.concatenate(p_all), np.concatenate(e_all)


def run(data: caption_sets.CaptionSet, encoder: coarse.Encoder,
        make_scorer: Callable[[], Scorer], out_dir: str, settings: Settings,
        *, embed_batch_size: int = 64, write: bool = True) -> dict[str, float]:
  """Runs both directions and writes OUT_DIR/metrics.json; returns the metrics."""
  k = settings.top_k
  if k < 1:
    raise ValueError(f"retllm.top_k must be >= 1, got {k}.")
  length = max(k, max(RECALL_KS))
  img, txt = coarse.embed(encoder, data, os.path.join(out_dir, "clip"),
                          batch_size=embed_batch_size)
  cands = coarse.candidates(img, txt, length)
  key = hashlib.sha256(json.dumps([
      encoder.identity, settings.scorer_identity, data.name, data.num_images,
      list(data.captions), k]).encode()).hexdigest()[:16]
  score_dir = os.path.join(out_dir, "scores", key)

  scorer_box: list[Scorer] = []

  def get_scorer() -> Scorer:
    if not scorer_box:
      scorer_box.append(make_scorer())
    return scorer_box[0]

  n = settings.num_queries
  q_t2i = np.arange(data.num_captions if n <= 0 else min(n, data.num_captions))
  q_i2t = np.arange(data.num_images if n <= 0 else min(n, data.num_images))
  results = {}
  for direction, cand, queries in (("t2i", cands.t2i, q_t2i), ("i2t", cands.i2t, q_i2t)):
    p, e = _score_direction(direction, data, cand, queries, k, os.path.join(score_dir, direction),
                            settings.chunk_size, get_scorer)
    clip_order = cand[queries]
    results[direction] = (clip_order, ranking.rerank(clip_order, p, e))

  ci = data.caption_image
  (clip_t2i, new_t2i), (clip_i2t, new_i2t) = results["t2i"], results["i2t"]
  metrics = ranking.metrics_dict(
      t2i=ranking.text_to_image_recall(new_t2i, q_t2i, ci, RECALL_KS),
      i2t=ranking.image_to_text_recall(new_i2t, q_i2t, ci, RECALL_KS),
      clip_t2i=ranking.text_to_image_recall(clip_t2i, q_t2i, ci, RECALL_KS),
      clip_i2t=ranking.image_to_text_recall(clip_i2t, q_i2t, ci, RECALL_KS))
  if write:
    atomic_io.save_npz(os.path.join(score_dir, "ranked.npz"), t2i_queries=q_t2i, t2i=new_t2i,
                       t2i_clip=clip_t2i, i2t_queries=q_i2t, i2t=new_i2t, i2t_clip=clip_i2t)
    atomic_io.write_json(os.path.join(out_dir, "metrics.json"), {
        "dataset": data.name, "num_images": data.num_images, "num_captions": data.num_captions,
        "t2i_queries": len(q_t2i), "i2t_queries": len(q_i2t), "top_k": k, "scores": score_dir,
        **metrics}, indent=2)
  return metrics


def format_table(metrics: dict[str, float]) -> str:
  rows = ["            R@1    R@5    R@10"]
  for prefix, label in (("clip_", "CLIP"), ("", "RetLLM")):
    for d in ("t2i", "i2t"):
      vals = "  ".join(f"{metrics[f'{prefix}{d}_r{k}']:5.1f}" for k in RECALL_KS)
      rows.append(f"{label:6s} {d}  {vals}")
  return "\n".join(rows)


def scorer_identity(parts: Sequence) -> str:
  return json.dumps(list(parts), sort_keys=True, default=str)
