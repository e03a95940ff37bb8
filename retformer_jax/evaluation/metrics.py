"""Top-1 overall / Many / Medium / Few (and top-5) from top-k predictions."""

from __future__ import annotations

import numpy as np

from retformer_jax.data import base

BUCKETS = ("many", "medium", "few")


def _mean(x: np.ndarray) -> float | None:
  return float(np.mean(x)) if x.size else None


def per_class_accuracy(top1: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Top-1 accuracy per class (NaN for a class with no evaluation example)."""
  correct = np.bincount(labels, weights=(top1 == labels).astype(np.float64), minlength=num_classes)
  total = np.bincount(labels, minlength=num_classes).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def accuracy_report(top_nk: np.ndarray, labels: np.ndarray, train_counts: np.ndarray, *,
                    many_above: int, few_below: int, with_top5: bool) -> dict:
  """Accuracy over the examples with a known label; a bucket with no class is None.

  Many/Medium/Few are the top-1 accuracies over the test examples whose class falls in the
  bucket (classes with > many_above, in between, < few_below training images).
  """
  labels = np.asarray(labels)
  keep = labels >= 0
  top_nk, labels = np.asarray(top_nk)[keep], labels[keep]
  if top_nk.shape[0] and labels.max() >= len(train_counts):
    raise ValueError(f"Label {labels.max()} is outside the {len(train_counts)} training classes.")
  correct1 = top_nk[:, 0] == labels
  bucket = base.shot_buckets(train_counts, many_above, few_below)[labels]
  report = {"top1": _mean(correct1)}
  for b, name in enumerate(BUCKETS):
    report[name] = _mean(correct1[bucket == b])
  report["top5"] = _mean(np.any(top_nk[:, :5] == labels[:, None], axis=1)) if with_top5 else None
  report["num_examples"] = int(labels.size)
  return report
