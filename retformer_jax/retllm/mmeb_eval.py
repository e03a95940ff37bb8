"""MMEB with RetLLM: each query re-ranks its own candidate list; hit@1 = the positive (the
list's first entry) ranks first.

Coarse: queries and candidates, any of text / image / both, embedded by retllm.item_embed
(image + text mixed as the reference's MMEB driver mixes them); each query's exact cosine top
K within its own list. Fine: P("True") of each (query, candidate) pair with
the prompt retllm.prompts builds from the parts that exist; the K reranked by (score desc,
entropy asc, CLIP rank asc) as in the caption pipeline.

Metrics (%): `hit1_<subset>`, `hit1_<meta_task>` (mean of its subsets present), `hit1_mean`
(mean over subsets), and the CLIP-only `clip_` twins of each.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Sequence

import numpy as np

from retformer_jax import atomic_io
from retformer_jax.parallel import hosts
from retformer_jax.retllm import chunks, item_embed, item_scoring, pipeline, ranking
from retformer_jax.retllm.benchmarks import mmeb
from retformer_jax.retllm.benchmarks.items import MMEBTask


def _flatten(lists) -> tuple[list, list[np.ndarray]]:
  """Distinct candidate items over all lists, and each list as rows of that table."""
  table, row, out = [], {}, []
  for items in lists:
    ids = []
    for it in items:
      key = item_embed.item_key(it)
      if key not in row:
        row[key] = len(table)
        table.append(it)
      ids.append(row[key])
    out.append(np.asarray(ids, np.int64))
  return table, out


def _coarse(encoder, queries, table, lists, k, cache_dir, tag, batch_size) -> np.ndarray:
  """Each query's CLIP top-k positions within its own list, int64 [Q, k] (-1 past its end)."""
  q = item_embed.embed(encoder, queries, item_embed.QUERY_WEIGHTS, cache_dir=cache_dir,
                       tag=tag + "_queries", batch_size=batch_size)
  c = item_embed.embed(encoder, table, item_embed.CANDIDATE_WEIGHTS, cache_dir=cache_dir,
                       tag=tag + "_candidates", batch_size=batch_size)
  return item_embed.top_k_within(q, c, lists, k)


def _score(scorer, queries, lists, table, top, rows) -> dict[str, np.ndarray]:
  pairs, where = [], []
  for r, q in enumerate(rows):
    for j, pos in enumerate(top[q]):
      if pos >= 0:
        pairs.append((r, int(lists[q][pos])))
        where.append((r, j))
  p, e = item_scoring.score(scorer, [queries[q] for q in rows], table, pairs)
  k = top.shape[1]
  P, E = np.full((len(rows), k), -1.0, np.float32), np.zeros((len(rows), k), np.float32)
  for (r, j), pv, ev in zip(where, p, e):
    P[r, j], E[r, j] = pv, ev
  return {"p_true": P, "entropy": E}


def run(tasks: Sequence[MMEBTask], encoder, make_scorer: Callable[[], object], out_dir: str,
        settings: pipeline.Settings, *, embed_batch_size: int = 64,
        process: tuple[int, int] | None = None,
        barrier: Callable[[str], None] = hosts.barrier) -> dict[str, float] | None:
  process = hosts.process() if process is None else process
  k = settings.top_k
  if k < 1:
    raise ValueError(f"retllm.top_k must be >= 1, got {k}.")
  box: list = []

  def get_scorer():
    if not box:
      box.append(make_scorer())
    return box[0]

  metrics: dict[str, float] = {}
  clip_dir = os.path.join(out_dir, "clip")
  first = 0  # chunk numbers run on across subsets (c mod P over the whole run)
  for task in tasks:
    n = len(task) if settings.num_queries <= 0 else min(settings.num_queries, len(task))
    queries = [task.queries[i] for i in range(n)]
    table, lists = _flatten(task.candidates[i] for i in range(n))
    tag = f"mmeb_{task.name}_{n}"
    if process[0] == 0:  # CLIP once; the others read its cached vectors
      _coarse(encoder, queries, table, lists, k, clip_dir, tag, embed_batch_size)
    barrier(f"retllm-mmeb-{task.name}-clip")
    top = _coarse(encoder, queries, table, lists, k, clip_dir, tag, embed_batch_size)
    inputs = np.stack([np.where(t >= 0, lists[i][np.maximum(t, 0)], -1)
                       for i, t in enumerate(top)]) if n else np.zeros((0, k), np.int64)
    key = hashlib.sha256(json.dumps(
        [settings.scorer_identity, encoder.identity, task.name, k,
         [item_embed.item_key(q) for q in queries],
         [item_embed.item_key(c) for c in table]]).encode()).hexdigest()[:16]
    got = chunks.run(f"mmeb-{task.name}", np.arange(n), inputs,
                     lambda rows: _score(get_scorer(), queries, lists, table, top, rows),
                     os.path.join(out_dir, "scores", key), settings.chunk_size, process,
                     barrier, pairs_per_query=k, first=first)
    first += chunks.count(n, settings.chunk_size)
    if got is None:
      continue
    clip_order = np.where(top >= 0, top, np.iinfo(np.int64).max)
    reranked = ranking.rerank(clip_order, got["p_true"], got["entropy"])
    metrics[f"hit1_{task.name}"] = float(100 * (reranked[:, 0] == task.POSITIVE).mean())
    metrics[f"clip_hit1_{task.name}"] = float(100 * (top[:, 0] == task.POSITIVE).mean())
  if process[0] != 0:
    return None
  names = [t.name for t in tasks]
  for prefix in ("", "clip_"):
    for meta in mmeb.META_TASKS:
      own = [metrics[f"{prefix}hit1_{t.name}"] for t in tasks if t.meta_task == meta]
      if own:
        metrics[f"{prefix}hit1_{meta}"] = float(np.mean(own))
    metrics[f"{prefix}hit1_mean"] = float(np.mean([metrics[f"{prefix}hit1_{s}"]
                                                   for s in names]))
  atomic_io.write_json(os.path.join(out_dir, "metrics.json"), {
      "dataset": "mmeb", "subsets": names, "top_k": k, **metrics}, indent=2)
  return metrics


def format_table(metrics: dict[str, float]) -> str:
  keys = [k[len("clip_hit1_"):] for k in metrics if k.startswith("clip_hit1_")]
  rows = [f"{'hit@1':24s}{'CLIP':>8s}{'RetLLM':>8s}"]
  rows += [f"{k:24s}{metrics[f'clip_hit1_{k}']:8.1f}{metrics[f'hit1_{k}']:8.1f}" for k in keys]
  return "\n".join(rows)
