"""CIFAR-100-LT (Cao et al. 2019): an exponentially imbalanced subset of TFDS `cifar100` train.

Class c keeps int(max * (1/imbalance)^(c/99)) images (imbalance = data.lt_imbalance, max = the
images per class of the full train split, 500), chosen as the reference (LDAM / LIFT) code does:
`np.random.seed(0)`, then for c = 0..99 in turn the class's indices in the original CIFAR
train-file order, `np.random.shuffle`, keep the first n_c. TFDS stores the records in a
shuffled order; its `id` feature (`train_NNNNN`) is the original index, so the selection is
made in that order and mapped back to record rows. Imbalance 100 gives 10,847 images,
Many/Medium/Few = 35/35/30. Test is the balanced CIFAR-100 test set.
"""

from __future__ import annotations

import re

import numpy as np

from retformer_jax.data import base
from retformer_jax.data import lt_lists
from retformer_jax.data import tfds_source

TFDS_NAME = "cifar100"
PREPARE = "tfds build cifar100 --file_format=array_record [--data_dir=DIR]"
_ID_RE = re.compile(r"^train_(\d+)$")


def lt_counts(num_classes: int = 100, max_per_class: int = 500,
              imbalance: float = 100.0) -> np.ndarray:
  """Images kept per class: int(max * (1/imbalance)^(c/(C-1)))."""
  return np.asarray([int(max_per_class * (1.0 / imbalance) ** (c / (num_classes - 1)))
                     for c in range(num_classes)], np.int64)


def original_indices(ids) -> np.ndarray:
  """`train_NNNNN` ids (TFDS `cifar100` train) -> int64 original train-file indices."""
  out = np.empty(len(ids), np.int64)
  for row, record_id in enumerate(ids):
    m = _ID_RE.match(str(record_id))
    if m is None:
      raise ValueError(f"cifar100 train record {row} has id {record_id!r}, expected "
                       "'train_NNNNN' (the original index); prepare the TFDS set again with "
                       f"`{PREPARE}`.")
    out[row] = int(m.group(1))
  return out


def class_size(labels: np.ndarray, num_classes: int, class_names=None) -> int:
  """The images per class of the full train split; classes of unequal size are an error.

  The reference takes max = len(train) / num_classes, which is only the count of class 0 (the
  class kept whole) when every class is complete; a short class means a partial data set.
  """
  sizes = np.bincount(np.asarray(labels), minlength=num_classes)
  if len(sizes) > num_classes:
    raise ValueError(f"cifar100 train has label {len(sizes) - 1} but only {num_classes} "
                     "classes; the prepared data set is inconsistent, prepare it again with "
                     f"`{PREPARE}`.")
  full = int(sizes.max())
  short = np.flatnonzero(sizes < full)
  if len(short):
    c = int(short[np.argmin(sizes[short])])
    name = f" ({class_names[c]!r})" if class_names is not None else ""
    raise ValueError(
        f"cifar100 train is incomplete: class {c}{name} has {int(sizes[c])} images while "
        f"others have {full} ({len(short)} classes short); CIFAR-100-LT needs the full train "
        f"split, prepare it again with `{PREPARE}`.")
  return full


def lt_indices(labels: np.ndarray, original_index: np.ndarray, counts: np.ndarray,
               seed: int = 0) -> np.ndarray:
  """Rows of `labels` to keep, in the reference order: class by class, shuffled within each.

  `original_index[r]` is row r's position in the original CIFAR train file. One
  RandomState(seed) (the legacy generator `np.random.seed` sets) shuffles each class's rows,
  taken in original order, in turn; the first counts[c] are kept. The subset depends only on
  (label, original index) pairs, not on the order the rows are stored in.
  """
  labels = np.asarray(labels)
  original_index = np.asarray(original_index, np.int64)
  if original_index.shape != labels.shape:
    raise ValueError(f"{len(original_index)} original indices for {len(labels)} labels")
  if not np.array_equal(np.sort(original_index), np.arange(len(labels))):
    raise ValueError("the original indices of the train records are not 0..N-1, each once; "
                     f"the prepared cifar100 is not the full train split, run `{PREPARE}`.")
  by_original = np.argsort(original_index)  # row of original index i
  labels_in_original_order = labels[by_original]
  rng = np.random.RandomState(seed)
  keep = []
  for c, n in enumerate(np.asarray(counts)):
    rows = by_original[np.flatnonzero(labels_in_original_order == c)]
    if len(rows) < n:
      raise ValueError(f"class {c} has {len(rows)} images, fewer than the {n} the profile keeps")
    rng.shuffle(rows)
    keep.append(rows[:n])
  return np.concatenate(keep).astype(np.int64)


def load(data_config) -> base.LabelledSplits:
  dataset = tfds_source.open_prepared(TFDS_NAME, data_config.tfds_data_dir, PREPARE)
  names = [lt_lists.readable(n) for n in dataset.class_names()]
  columns = dataset.columns("train", data_config, {
      "label": ("label", lambda values: np.asarray(values, np.int64)),
      "original_index": ("id", original_indices)})
  full_labels, original = columns["label"], columns["original_index"]
  counts = lt_counts(len(names), class_size(full_labels, len(names), names),
                     data_config.lt_imbalance)
  rows = lt_indices(full_labels, original, counts, seed=0)
  train = tfds_source.TfdsSplit(dataset, "train", rows=rows, labels=full_labels[rows])
  test = tfds_source.TfdsSplit(dataset, "test", labels=dataset.labels("test", data_config))
  return base.LabelledSplits(name="cifar100_lt", class_names=names, train_counts=counts,
                             splits={"train": train, "test": test})
