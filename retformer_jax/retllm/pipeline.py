"""RetLLM end to end: CLIP candidates -> MLLM scores of the top K -> reranked lists -> Recall@k.

Fine scores are written per chunk of queries (one .npz per chunk, atomically) in a folder keyed
by everything that determines them; a rerun skips finished chunks, so a killed run resumes
and ends with the same metrics as an uninterrupted one. The scorer is built lazily through
`make_scorer`, so a rerun whose chunks are all done never loads the MLLM, and tests pass in
any object with the scorer's two methods.

Across processes (hosts), chunk c is scored by process c mod P into the shared folder; after a
barrier, process 0 alone reads every chunk, computes the metrics and writes them (retllm.chunks,
the runner every benchmark family shares). Text->image is chunked by (caption, candidate slot)
PAIR, in `pair_order` (by candidate image, then caption): an image's pairs sit in one chunk (two
at a chunk edge), so its prompt prefix is computed about once at any gallery size and a cache
of a few prefixes is enough. Image->text stays chunked by query (a query's K pairs share its
image already) and may instead be listwise: the MLLM names
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
  chunk_size: int = 32  # queries per result file (text->image: chunk_size * top_k pairs)
  num_queries: int = 0  # first N queries per direction (0 = all)
  scorer_identity: str = ""  # everything the scores depend on (model, injection, flooring...)
  i2t_scoring: str = "pointwise"  # pointwise P('True') per caption | listwise (pick the index)


def pair_order(cands: np.ndarray, queries: np.ndarray) -> np.ndarray:
  """The text->image pair ids q * K + slot of `queries` against cands [num_queries, K], sorted
  by candidate image, then query, then slot.

  Chunks cut from this order hold each image's pairs together, so each image's prompt prefix
  is computed once per run (twice when its pairs straddle a chunk edge).
  """
  cands = np.asarray(cands)
  if cands.ndim != 2:
    raise ValueError(f"pair_order expects candidate lists [queries, k], got shape {cands.shape}.")
  k = cands.shape[1]
  queries = np.asarray(queries, np.int64)
  ids = (queries[:, None] * k + np.arange(k)).reshape(-1)
  images = cands[queries].reshape(-1)
  return ids[np.lexsort((ids, images))]


def pair_inputs(cands: np.ndarray, ids: np.ndarray) -> np.ndarray:
  """[n, 2] (candidate image, query) of pair ids: what each pair's scores depend on."""
  k = cands.shape[1]
  q = np.asarray(ids, np.int64) // k
  return np.stack([cands[q, np.asarray(ids) % k], q], axis=1).astype(np.int64)


def _score_pair_chunk(scorer: Scorer, data: caption_sets.CaptionSet, ids: np.ndarray,
                      cands: np.ndarray) -> dict[str, np.ndarray]:
  """p_true and entropy [n] of text->image pairs `ids` (q * K + slot) against cands [Q, K].

  One score_pairs call for the chunk (it groups the pairs by image); a scorer without it gets
  one score_text_to_image call per caption with that caption's pairs of the chunk."""
  image_q = pair_inputs(cands, ids)
  n = len(ids)
  if hasattr(scorer, "score_pairs"):
    images, img_inv = np.unique(image_q[:, 0], return_inverse=True)
    queries, q_inv = np.unique(image_q[:, 1], return_inverse=True)
    res = scorer.score_pairs([data.image(i) for i in images],
                             [data.captions[q] for q in queries],
                             list(zip(img_inv.reshape(-1).tolist(), q_inv.reshape(-1).tolist())))
    return {"p_true": np.asarray(res.p_true, np.float32).reshape(n),
            "entropy": np.asarray(res.entropy, np.float32).reshape(n)}
  p = np.zeros(n, np.float32)
  e = np.zeros(n, np.float32)
  for q in np.unique(image_q[:, 1]):
    rows = np.flatnonzero(image_q[:, 1] == q)
    rows = rows[np.argsort(ids[rows], kind="stable")]  # the caption's slots in CLIP order
    res = scorer.score_text_to_image(data.captions[q], [data.image(i) for i in image_q[rows, 0]])
    p[rows], e[rows] = np.asarray(res.p_true), np.asarray(res.entropy)
  return {"p_true": p, "entropy": e}


def _score_chunk(scorer: Scorer, data: caption_sets.CaptionSet, queries: np.ndarray,
                 cands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Image->text p_true and entropy [n, k] of image queries against caption cands [n, k].

  A scorer with `score_pairs` gets the whole chunk at once (each query's K pairs share its
  image, so its prompt prefix is computed once)."""
  n, k = cands.shape
  if hasattr(scorer, "score_pairs"):
    uniq, inv = np.unique(cands, return_inverse=True)
    inv = inv.reshape(n, k)
    res = scorer.score_pairs([data.image(q) for q in queries], [data.captions[i] for i in uniq],
                             [(r, int(inv[r, c])) for r in range(n) for c in range(k)])
    return (np.asarray(res.p_true, np.float32).reshape(n, k),
            np.asarray(res.entropy, np.float32).reshape(n, k))
  p = np.zeros((n, k), np.float32)
  e = np.zeros((n, k), np.float32)
  for row, q in enumerate(queries):
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

  def score_i2t(ch: chunks.Chunk) -> dict[str, np.ndarray]:
    cand = cands.i2t[ch.queries, :k]
    if listwise:
      if not chooser_box:
        chooser_box.append(make_chooser(get_scorer()))
      return _choose_chunk(chooser_box[0], data, ch.queries, cand)
    p, e = _score_chunk(get_scorer(), data, ch.queries, cand)
    return {"p_true": p, "entropy": e}

  plans, inputs_of = {}, {}
  t2i_cands, i2t_cands = cands.t2i[:, :k], cands.i2t[:, :k]
  folder = os.path.join(score_dir, "t2i")
  os.makedirs(folder, exist_ok=True)
  k_t2i = t2i_cands.shape[1]  # top_k, or the whole gallery when it is smaller
  plans["t2i"] = chunks.plan(pair_order(t2i_cands, q_t2i), settings.chunk_size * k_t2i, folder)
  inputs_of["t2i"] = lambda ch: pair_inputs(t2i_cands, ch.queries)
  chunks.score_own("t2i", plans["t2i"], inputs_of["t2i"],
                   lambda ch: _score_pair_chunk(get_scorer(), data, ch.queries, t2i_cands),
                   (index, count))
  folder = os.path.join(score_dir, "i2t_listwise" if listwise else "i2t")
  os.makedirs(folder, exist_ok=True)
  plans["i2t"] = chunks.plan(q_i2t, settings.chunk_size, folder)
  inputs_of["i2t"] = lambda ch: i2t_cands[ch.queries]
  chunks.score_own("i2t", plans["i2t"], inputs_of["i2t"], score_i2t, (index, count),
                   pairs_per_query=k)
  barrier("retllm-scores")
  if index != 0:
    return None

  results = {}
  for direction, cand, queries in (("t2i", cands.t2i, q_t2i), ("i2t", cands.i2t, q_i2t)):
    width = min(k, cand.shape[1])
    rows = queries if direction == "i2t" else (queries[:, None] * width +
                                                np.arange(width)).reshape(-1)
    got = chunks.read_all(plans[direction], inputs_of[direction], rows)
    if len(queries):
      p, e = (got[name].reshape(len(queries), width) for name in ("p_true", "entropy"))
    else:
      p = e = np.zeros((0, width), np.float32)
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
