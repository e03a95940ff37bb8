"""PNG figures of an evaluation: per-class accuracy vs training frequency, and an explanation
sheet (query image, its neighbours' captions, labels, similarities and attention weights).
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from retformer_jax import atomic_io

_BUCKET_COLOURS = ("tab:blue", "tab:orange", "tab:red")
_BUCKET_NAMES = ("Many", "Medium", "Few")


def _pyplot():
  # matplotlib costs ~1 s to import and must be switched to Agg first: only when drawing.
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _save(fig, path: str) -> None:
  with atomic_io.replacing(path) as f:
    fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def per_class_accuracy(path: str, accuracy_c: np.ndarray, train_counts: np.ndarray,
                       buckets_c: np.ndarray, title: str) -> None:
  """Scatter of per-class top-1 against training images (log x), coloured by bucket."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.2))
  counts = np.maximum(np.asarray(train_counts), 1)
  for b, (colour, name) in enumerate(zip(_BUCKET_COLOURS, _BUCKET_NAMES)):
    sel = (buckets_c == b) & np.isfinite(accuracy_c)
    if sel.any():
      ax.scatter(counts[sel], accuracy_c[sel], s=14, c=colour, alpha=0.75,
                 label=f"{name} ({sel.sum()} classes, mean {np.mean(accuracy_c[sel]):.3f})")
  ax.set_xscale("log")
  ax.set_ylim(-0.03, 1.03)
  ax.set_xlabel("training images of the class")
  ax.set_ylabel("top-1 accuracy")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  _save(fig, path)
  plt.close(fig)


def explanation_sheet(path: str, examples: Sequence[dict], title: str) -> None:
  """One row per example: the query image, then a bar chart of attention over its neighbours.

  Each example: image uint8 HWC (or None), true, predicted (class names), attention [1 + k]
  (query slot first), and per neighbour: caption, label name, similarity.
  """
  plt = _pyplot()
  n = len(examples)
  if n == 0:
    raise ValueError("No examples to explain (config.eval.num_explained = 0).")
  show = min(8, max(len(e["captions"]) for e in examples))
  fig, axes = plt.subplots(n, 2, figsize=(13, 1.2 + 0.32 * show * n),
                           gridspec_kw={"width_ratios": [1, 4]}, squeeze=False)
  for row, ex in zip(axes, examples):
    ax_img, ax_bar = row
    if ex["image"] is not None:
      ax_img.imshow(ex["image"])
    ax_img.set_axis_off()
    ok = ex["true"] == ex["predicted"]
    ax_img.set_title(f"true: {ex['true']}\npred: {ex['predicted']}", fontsize=8,
                     color="darkgreen" if ok else "darkred")
    att = np.asarray(ex["attention"])[1:show + 1]
    labels = [f"{textwrap.shorten(c, 48)}  [{l}, sim {s:.2f}]"
              for c, l, s in zip(ex["captions"][:show], ex["neighbor_labels"][:show],
                                 ex["sims"][:show])]
    colours = ["tab:green" if l == ex["true"] else "tab:gray"
               for l in ex["neighbor_labels"][:show]]
    y = np.arange(len(att))[::-1]
    ax_bar.barh(y, att, color=colours)
    ax_bar.set_yticks(y)
    ax_bar.set_yticklabels(labels, fontsize=7)
    ax_bar.set_xlabel(f"attention of the query (self: {float(ex['attention'][0]):.3f})",
                      fontsize=7)
    ax_bar.tick_params(axis="x", labelsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
