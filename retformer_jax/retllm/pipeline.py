"""RetLLM end to end: CLIP candidates -> MLLM scores of the top K -> reranked lists -> Recall@k.

Fine scores are written per chunk of queries (one .npz per chunk, atomically) in a folder keyed
by everything that determines them; a rerun skips finished chunks, so a killed run resumes
and ends with the same metrics as an uninterrupted one. The scorer is built lazily through
`make_scorer`, so a rerun whose chunks are all done never loads the MLLM, and tests pass in
any object with the scorer's two methods.

Across processes (hosts), chunk c is scored by process c mod P into the shared folder; after a
barrier, process 0 alone reads every chunk, computes the metrics and writes them (retllm.chunks,
the runner every benchmark family shares). Caption queries are scored in `cache_order`, so the
queries of a chunk share candidate images. Image->text may instead be listwise: the MLLM names
one of the K captions (retllm.listwise), which ranks first, the rest keeping CLIP's order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Protocol, Sequence

import numpy as np

from retformer_jax import atomic_io
from retformer_jax.parallel import hosts
from retformer_jax.retllm import caption_sets
from retformer_jax.retllm import chunks
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
  cache_order: bool = True  # caption queries grouped by candidate images (see cache_order)
  i2t_scoring: str = "pointwise"  # pointwise P('True') per caption | listwise (pick the index)


def cache_order(cands: np.ndarray) -> np.ndarray:
  """A permutation of the query rows of cands [Q, k] that puts queries with the same candidate
  images next to each other: sorted by top-1 candidate, then the rest of the list, then row.

  Chunks cut from this order hold few distinct images, so each image's prompt prefix is
  computed once per chunk, and a scorer keeping prefixes across calls finds them again.
  """
  cands = np.asarray(cands)
  if cands.ndim != 2:
    raise ValueError(f"cache_order expects candidate lists [queries, k], got shape {cands.shape}.")
  keys = [np.arange(len(cands))] + [cands[:, j] for j in reversed(range(cands.shape[1]))]
  return np.lexsort(keys)


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


def _choose_chunk(chooser, data: caption_sets.CaptionSet, queries: np.ndarray,
                  cands: np.ndarray) -> dict[str, np.ndarray]:
  """Listwise image->text (retllm.listwise): the MLLM names the matching caption among each
  query's K. Scores are 1 for the named one and 0 for the others, so the reranked list is the
  named caption, then the others in CLIP order (listwise.listwise_order); `probs` keeps the
  index-token probabilities."""
  index, probs, parsed = choose(chooser, [data.image(q) for q in queries],
                                [[data.captions[i] for i in row] for row in cands])
  onehot = np.zeros(cands.shape, np.float32)
  onehot[np.arange(len(queries)), index] = 1.0
  return {"p_true": onehot, "entropy": np.zeros(cands.shape, np.float32), "probs": probs,
          "parsed": parsed}


def choose(chooser, images, caption_lists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(index [n], probs [n, K], parsed [n]) of a ListwiseScorer's choices, K equal per query."""
  res = chooser.choose_many(images, caption_lists)
  n, k = len(images), len(caption_lists[0])
  return (np.asarray(res.index, np.int64).reshape(n),
          np.asarray(res.probs, np.float32).reshape(n, -1)[:, :k],
          np.asarray(res.parsed, bool).reshape(n))


def run(data: caption_sets.CaptionSet, encoder: coarse.Encoder,
        make_scorer: Callable[[], Scorer], out_dir: str, settings: Settings,
        *, embed_batch_size: int = 64, process: tuple[int, int] | None = None,
        barrier: Callable[[str], None] = hosts.barrier,
        make_chooser: Callable[[Scorer], object] | None = None) -> dict[str, float] | None:
  """Scores this process's chunks of both directions; process 0 then writes
  OUT_DIR/metrics.json and returns the metrics (other processes return None).

  process: (index, count), default this JAX process's; barrier: waits for all processes.
  settings.i2t_scoring == "listwise": image->text lists are reranked by
  make_chooser(scorer).choose (retllm.listwise), in their own chunk folder (i2t_listwise).
  """
  index, count = hosts.process() if process is None else process
  k = settings.top_k
  if k < 1:
    raise ValueError(f"retllm.top_k must be >= 1, got {k}.")
  length = max(k, max(RECALL_KS))
  clip_dir = os.path.join(out_dir, "clip")
  if index == 0:  # CLIP once; the others load its cached embeddings
    coarse.embed(encoder, data, clip_dir, batch_size=embed_batch_size)
  barrier("retllm-clip-embeddings")
  img, txt = coarse.embed(encoder, data, clip_dir, batch_size=embed_batch_size)
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
  listwise = settings.i2t_scoring == "listwise"
  if settings.i2t_scoring not in ("pointwise", "listwise"):
    raise ValueError(f"retllm.i2t_scoring {settings.i2t_scoring!r}: use pointwise or listwise.")
  if listwise and make_chooser is None:
    raise ValueError("listwise image->text scoring needs make_chooser.")
  chooser_box: list = []

  def score_fn(direction, cand):
    def score(ch: chunks.Chunk) -> dict[str, np.ndarray]:
      if direction == "i2t" and listwise:
        if not chooser_box:
          chooser_box.append(make_chooser(get_scorer()))
        return _choose_chunk(chooser_box[0], data, ch.queries, cand[ch.queries])
      p, e = _score_chunk(get_scorer(), direction, data, ch.queries, cand[ch.queries])
      return {"p_true": p, "entropy": e}
    return score

  plans = {}
  for direction, cand, queries in (("t2i", cands.t2i, q_t2i), ("i2t", cands.i2t, q_i2t)):
    order = queries
    if direction == "t2i" and settings.cache_order:
      order = queries[cache_order(cand[queries, :k])]
    folder = os.path.join(score_dir, direction + ("_listwise" if direction == "i2t" and
                                                  listwise else ""))
    os.makedirs(folder, exist_ok=True)
    plans[direction] = chunks.plan(order, settings.chunk_size, folder)
    chunks.score_own(direction, plans[direction], lambda ch, c=cand[:, :k]: c[ch.queries],
                     score_fn(direction, cand[:, :k]), (index, count), pairs_per_query=k)
  barrier("retllm-scores")
  if index != 0:
    return None

  results = {}
  for direction, cand, queries in (("t2i", cands.t2i, q_t2i), ("i2t", cands.i2t, q_i2t)):
    got = chunks.read_all(plans[direction], lambda ch, c=cand[:, :k]: c[ch.queries], queries)
    if len(queries):
      p, e = got["p_true"], got["entropy"]
    else:
      p = e = np.zeros((0, cand[:, :k].shape[1]), np.float32)
    clip_order = cand[queries]
    results[direction] = (clip_order, ranking.rerank(clip_order, p, e))

  ci = data.caption_image
  (clip_t2i, new_t2i), (clip_i2t, new_i2t) = results["t2i"], results["i2t"]
  metrics = ranking.metrics_dict(
      t2i=ranking.text_to_image_recall(new_t2i, q_t2i, ci, RECALL_KS),
      i2t=ranking.image_to_text_recall(new_i2t, q_i2t, ci, RECALL_KS),
      clip_t2i=ranking.text_to_image_recall(clip_t2i, q_t2i, ci, RECALL_KS),
      clip_i2t=ranking.image_to_text_recall(clip_i2t, q_i2t, ci, RECALL_KS))
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
