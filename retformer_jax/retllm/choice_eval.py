"""SugarCrepe with RetLLM: does the MLLM prefer an image's caption over its hard negative?

Two scorings, each an accuracy per subset (in %) and their mean:
- pointwise: P("True") of each caption with the image (the match question, as an image->text
  pair is scored); the higher wins, the lower entropy breaks a tie; a full tie is a miss.
- listwise: the reference's SugarCrepe driver (main_eval.py): the MLLM is shown the image and
  the captions [negative, positive] and names one (retllm.listwise, template "compare"); an
  answer that names no caption counts as the negative, as there.
The CLIP row: cosine(image, positive) > cosine(image, negative), strictly (main_eval.py's
text_retrieval).

Metrics (OUT_DIR/metrics.json): `<scoring>_acc_<subset>` and `<scoring>_acc_mean` for each
scoring run, `acc_<subset>` / `acc_mean` = the listwise ones when run (the reference's
scoring), else the pointwise ones, and `clip_acc_<subset>` / `clip_acc_mean`. Rows are scored
in resumable chunks split across processes (retllm.chunks); process 0 writes the metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Sequence

import numpy as np

from retformer_jax import atomic_io
from retformer_jax.parallel import hosts
from retformer_jax.retllm import chunks, item_embed, item_scoring, pipeline
from retformer_jax.retllm.benchmarks.items import Item, PairChoiceSet

SCORINGS = ("pointwise", "listwise", "both")


def _pointwise(scorer, data: PairChoiceSet, rows: np.ndarray) -> dict[str, np.ndarray]:
  queries = [data.image(int(r)) for r in rows]
  cands = [c for r in rows for c in data.choices(int(r))]  # positive, negative per row
  pairs = [(q, 2 * q + j) for q in range(len(rows)) for j in range(2)]
  p, e = item_scoring.score(scorer, queries, cands, pairs)
  return {"p_true": p.reshape(-1, 2), "entropy": e.reshape(-1, 2)}


def _listwise(chooser, data: PairChoiceSet, rows: np.ndarray) -> dict[str, np.ndarray]:
  load = item_scoring.ImageLoader()
  images = [load(data.image(int(r))) for r in rows]
  lists = [[data.negatives[int(r)], data.positives[int(r)]] for r in rows]
  index, probs, parsed = pipeline.choose(chooser, images, lists)
  return {"index": index, "probs": probs, "parsed": parsed}


def pointwise_correct(p: np.ndarray, e: np.ndarray) -> np.ndarray:
  """Row-wise: positive (column 0) beats negative by score, then by lower entropy."""
  return (p[:, 0] > p[:, 1]) | ((p[:, 0] == p[:, 1]) & (e[:, 0] < e[:, 1]))


def run(subsets: Sequence[PairChoiceSet], encoder, make_scorer: Callable[[], object],
        make_chooser: Callable[[object], object] | None, out_dir: str,
        settings: pipeline.Settings, *, scoring: str = "both", embed_batch_size: int = 64,
        process: tuple[int, int] | None = None,
        barrier: Callable[[str], None] = hosts.barrier) -> dict[str, float] | None:
  if scoring not in SCORINGS:
    raise ValueError(f"retllm.choice_scoring {scoring!r}: use one of {', '.join(SCORINGS)}.")
  modes = ("pointwise", "listwise") if scoring == "both" else (scoring,)
  if "listwise" in modes and make_chooser is None:
    raise ValueError("listwise SugarCrepe scoring needs make_chooser.")
  process = hosts.process() if process is None else process
  box: dict[str, object] = {}

  def get(name):
    if "scorer" not in box:
      box["scorer"] = make_scorer()
    if name == "chooser" and "chooser" not in box:
      box["chooser"] = make_chooser(box["scorer"])
    return box[name]

  metrics: dict[str, float] = {}
  clip_dir = os.path.join(out_dir, "clip")
  first = 0  # chunk numbers run on across subsets and scorings (c mod P over the whole run)
  for data in subsets:
    n = len(data) if settings.num_queries <= 0 else min(settings.num_queries, len(data))
    rows = np.arange(n)
    digest = np.asarray([chunks.text_digest(data.ids[r], data.image_paths[r],
                                            data.positives[r], data.negatives[r])
                         for r in rows], np.int64)[:, None]
    tag = f"sugarcrepe_{data.subset}_{n}"
    if process[0] == 0:
      img = item_embed.embed(encoder, [data.image(r) for r in rows], (1.0, 0.0),
                             cache_dir=clip_dir, tag=tag + "_image",
                             batch_size=embed_batch_size)
      pos = item_embed.embed(encoder, [Item(text=data.positives[r]) for r in rows], (0.0, 1.0),
                             cache_dir=clip_dir, tag=tag + "_positive",
                             batch_size=embed_batch_size)
      neg = item_embed.embed(encoder, [Item(text=data.negatives[r]) for r in rows], (0.0, 1.0),
                             cache_dir=clip_dir, tag=tag + "_negative",
                             batch_size=embed_batch_size)
      clip = (img * pos).sum(1) > (img * neg).sum(1)
      metrics[f"clip_acc_{data.subset}"] = float(100 * clip.mean())
    key = hashlib.sha256(json.dumps([settings.scorer_identity, data.subset,
                                     digest[:, 0].tolist()]).encode()).hexdigest()[:16]
    for mode in modes:
      folder = os.path.join(out_dir, "scores", key, mode)
      if mode == "pointwise":
        score = lambda q, d=data: _pointwise(get("scorer"), d, q)  # noqa: E731
      else:
        score = lambda q, d=data: _listwise(get("chooser"), d, q)  # noqa: E731
      got = chunks.run(f"sugarcrepe-{data.subset}-{mode}", rows, digest, score, folder,
                       settings.chunk_size, process, barrier, pairs_per_query=2, first=first)
      first += chunks.count(n, settings.chunk_size)
      if got is None:
        continue
      correct = (pointwise_correct(got["p_true"], got["entropy"]) if mode == "pointwise"
                 else got["index"] == 1)
      metrics[f"{mode}_acc_{data.subset}"] = float(100 * correct.mean())
  if process[0] != 0:
    return None
  names = [d.subset for d in subsets]
  for prefix in ("clip_",) + tuple(f"{m}_" for m in modes):
    metrics[f"{prefix}acc_mean"] = float(np.mean([metrics[f"{prefix}acc_{s}"] for s in names]))
  main = "listwise" if "listwise" in modes else "pointwise"
  for s in names + ["mean"]:
    metrics[f"acc_{s}"] = metrics[f"{main}_acc_{s}"]
  atomic_io.write_json(os.path.join(out_dir, "metrics.json"), {
      "dataset": "sugarcrepe", "subsets": names, "scoring": list(modes), "main_scoring": main,
      **metrics}, indent=2)
  return metrics


def format_table(metrics: dict[str, float]) -> str:
  subsets = sorted(k[len("clip_acc_"):] for k in metrics
                   if k.startswith("clip_acc_") and not k.endswith("_mean"))
  rows = [f"{'':10s}" + "".join(f"{s:>12s}" for s in subsets + ["mean"])]
  for prefix, label in (("clip_", "CLIP"), ("pointwise_", "pointwise"), ("listwise_", "listwise")):
    if f"{prefix}acc_mean" in metrics:
      rows.append(f"{label:10s}" + "".join(f"{metrics[f'{prefix}acc_{s}']:12.1f}"
                                          for s in subsets + ["mean"]))
  return "\n".join(rows)
