"""`load(config.data)`: the labelled data set a config names, as base.LabelledSplits.

Readers are named by module path and imported on use: most of them import
`tensorflow_datasets` (slow to import, and not needed by a run on the demo set), and the
demo's reader (`retformer_jax.demo.dataset`) builds on data/base.py, so importing it here would
make `data` and `demo` import each other.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np

from retformer_jax.data import base

# data.name -> module with `load(data_config)`.
READERS = {
    "demo": "retformer_jax.demo.dataset",
    "cifar100_lt": "retformer_jax.data.cifar100_lt",
    "imagenet_lt": "retformer_jax.data.imagenet_lt",
    "places_lt": "retformer_jax.data.places_lt",
    "inat2018": "retformer_jax.data.inat2018",
    "webvision": "retformer_jax.data.webvision",
}


class Subset:
  """At most `count` evenly spaced examples of a source (ids renumbered 0..n-1).

  Rows are chosen on first use, so a lazily opened split stays unopened until read.
  """

  def __init__(self, source, count: int):
    self._source, self._count, self._chosen = source, count, None

  @property
  def _rows(self) -> np.ndarray:
    if self._chosen is None:
      n = len(self._source)
      self._chosen = np.unique(np.linspace(0, n - 1, min(n, self._count)).astype(np.int64))
    return self._chosen

  @property
  def labels(self) -> np.ndarray:
    return np.asarray(self._source.labels)[self._rows]

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for a subset of {len(self)} examples")
    return dict(self._source[int(self._rows[index])], id=int(index))


def _shrink(data: base.LabelledSplits, count: int) -> base.LabelledSplits:
  splits = {k: Subset(v, count) for k, v in data.splits.items()}
  labels = splits["train"].labels
  counts = np.bincount(labels[labels >= 0], minlength=data.num_classes).astype(np.int64)
  return dataclasses.replace(data, splits=splits, train_counts=counts)


def load(data_config) -> base.LabelledSplits:
  name = data_config.name
  if name not in READERS:
    raise ValueError(f"Unknown data set --config.data.name={name!r}; choose one of "
                     f"{sorted(READERS)}.")
  module = importlib.import_module(READERS[name])
  data = module.load(data_config.demo) if name == "demo" else module.load(data_config)
  if data_config.max_examples > 0:
    data = _shrink(data, data_config.max_examples)
  return data
