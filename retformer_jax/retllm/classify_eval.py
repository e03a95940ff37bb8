"""Zero-shot classification with RetLLM (the reference's main_classification_v2.py): CLIP's
top K classes of each image, re-scored by the MLLM, the best one predicted.

Coarse: cosine between the image and each class prompt (`ClassificationSet.prompts`: the
template filled with the readable class name, "a photo of a {name}." by default). Fine: the
image against each of its K class names with the match question ("Does the image match the
caption: <{name}>? ..."), reranked by (score desc, entropy asc, CLIP rank asc).

Metrics (%): `top1` and `clip_top1`; for sets with training counts (our long-tailed readers)
also `many`, `medium`, `few` (top-1 over the test images of each bucket's classes) and their
`clip_` twins.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import numpy as np

from retformer_jax import atomic_io
from retformer_jax.parallel import hosts
from retformer_jax.retllm import chunks, item_embed, item_scoring, pipeline, ranking
from retformer_jax.retllm.benchmarks.items import ClassificationSet, Item

BUCKETS = ("many", "medium", "few")


def run(data: ClassificationSet, encoder, make_scorer: Callable[[], object], out_dir: str,
        settings: pipeline.Settings, *, embed_batch_size: int = 64,
        process: tuple[int, int] | None = None,
        barrier: Callable[[str], None] = hosts.barrier) -> dict[str, float] | None:
  process = hosts.process() if process is None else process
  k = min(settings.top_k, data.num_classes)
  if k < 1:
    raise ValueError(f"retllm.top_k must be >= 1, got {settings.top_k}.")
  n = len(data) if settings.num_queries <= 0 else min(settings.num_queries, len(data))
  images = [data.images[i] for i in range(n)]
  clip_dir = os.path.join(out_dir, "clip")
  tag = f"classification_{data.name}_{n}"

  def coarse() -> np.ndarray:
    img = item_embed.embed(encoder, images, (1.0, 0.0), cache_dir=clip_dir, tag=tag + "_images",
                           batch_size=embed_batch_size)
    cls = item_embed.embed(encoder, [Item(text=p) for p in data.prompts], (0.0, 1.0),
                           cache_dir=clip_dir, tag=tag + "_prompts", batch_size=embed_batch_size)
    return item_embed.top_k(img, cls, k)

  if process[0] == 0:
    coarse()
  barrier("retllm-classification-clip")
  top = coarse()
  box: list = []

  def score(rows: np.ndarray) -> dict[str, np.ndarray]:
    if not box:
      box.append(make_scorer())
    names = data.candidates()
    pairs = [(r, int(c)) for r, q in enumerate(rows) for c in top[q]]
    p, e = item_scoring.score(box[0], [images[q] for q in rows], names, pairs)
    return {"p_true": p.reshape(len(rows), k), "entropy": e.reshape(len(rows), k)}

  key = hashlib.sha256(json.dumps(
      [settings.scorer_identity, encoder.identity, data.name, k, list(data.class_names),
       data.template, [item_embed.item_key(it) for it in images]]).encode()).hexdigest()[:16]
  got = chunks.run("classification", np.arange(n), top, score,
                   os.path.join(out_dir, "scores", key), settings.chunk_size, process, barrier,
                   pairs_per_query=k)
  if got is None:
    return None
  labels = np.asarray(data.labels)[:n]
  pred = ranking.rerank(top, got["p_true"], got["entropy"])[:, 0]
  metrics = {}
  for prefix, guess in (("", pred), ("clip_", top[:, 0])):
    hit = guess == labels
    metrics[f"{prefix}top1"] = float(100 * hit.mean())
    if data.buckets is not None:
      bucket = np.asarray(data.buckets)[labels]
      for b, name in enumerate(BUCKETS):
        if (bucket == b).any():
          metrics[f"{prefix}{name}"] = float(100 * hit[bucket == b].mean())
  atomic_io.write_json(os.path.join(out_dir, "metrics.json"), {
      "dataset": data.name, "num_images": n, "num_classes": data.num_classes, "top_k": k,
      "template": data.template, **metrics}, indent=2)
  return metrics


def format_table(metrics: dict[str, float]) -> str:
  cols = [c for c in ("top1",) + BUCKETS if c in metrics]
  rows = [f"{'':8s}" + "".join(f"{c:>8s}" for c in cols)]
  for prefix, label in (("clip_", "CLIP"), ("", "RetLLM")):
    rows.append(f"{label:8s}" + "".join(f"{metrics[prefix + c]:8.1f}" for c in cols))
  return "\n".join(rows)
