"""CIFAR-100-LT (Cao et al. 2019): an exponentially imbalanced subset of TFDS `cifar100` train.

Class c keeps int(500 * (1/imbalance)^(c/99)) images (imbalance = data.lt_imbalance), chosen
by a seed-0 shuffle within the class; imbalance 100 gives 10,847 images, Many/Medium/Few =
35/35/30. Test is the balanced CIFAR-100 test set.
"""

from __future__ import annotations

import numpy as np

from retformer_jax.data import base
from retformer_jax.data import lt_lists
from retformer_jax.data import tfds_source

TFDS_NAME = "cifar100"
PREPARE = "tfds build cifar100 --file_format=array_record [--data_dir=DIR]"


def lt_counts(num_classes: int = 100, max_per_class: int = 500,
              imbalance: float = 100.0) -> np.ndarray:
  """Images kept per class: int(max * (1/imbalance)^(c/(C-1)))."""
  return np.asarray([int(max_per_class * (1.0 / imbalance) ** (c / (num_classes - 1)))
                     for c in range(num_classes)], np.int64)


def lt_indices(labels: np.ndarray, counts: np.ndarray, seed: int = 0) -> np.ndarray:
  """Rows of `labels` to keep: per class in class order, the first counts[c] of a shuffle.

  One RandomState(seed) shuffles each class's rows in turn (the reference recipe), so the
  subset is a pure function of the label array.
  """
  labels = np.asarray(labels)
  rng = np.random.RandomState(seed)
  keep = []
  for c, n in enumerate(np.asarray(counts)):
    rows = np.flatnonzero(labels == c)
    if len(rows) < n:
      raise ValueError(f"class {c} has {len(rows)} images, fewer than the {n} the profile keeps")
    rng.shuffle(rows)
    keep.append(rows[:n])
  return np.concatenate(keep).astype(np.int64)


def load(data_config) -> base.LabelledSplits:
  dataset = tfds_source.open_prepared(TFDS_NAME, data_config.tfds_data_dir, PREPARE)
  names = [lt_lists.readable(n) for n in dataset.class_names()]
  full_labels = dataset.labels("train", data_config)
  # 500 for CIFAR-100: every class has that many training images.
  per_class = int(np.bincount(full_labels, minlength=len(names)).min())
  counts = lt_counts(len(names), per_class, data_config.lt_imbalance)
  rows = lt_indices(full_labels, counts, seed=0)
  train = tfds_source.TfdsSplit(dataset, "train", rows=rows, labels=full_labels[rows])
  test = tfds_source.TfdsSplit(dataset, "test", labels=dataset.labels("test", data_config))
  return base.LabelledSplits(name="cifar100_lt", class_names=names, train_counts=counts,
                             splits={"train": train, "test": test})
