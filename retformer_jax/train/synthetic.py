"""A small generated retrieval problem (query vectors, KB vectors, neighbours) for tests and the
benchmark: long-tailed classes with prototype image and text directions, neighbours found by
exact inner product, so retrieval carries real signal.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retformer_jax.train import input_pipeline, loop


@dataclasses.dataclass(frozen=True)
class Synthetic:
  train: input_pipeline.QuerySet
  val: input_pipeline.QuerySet  # held out: for an `evaluate` callback
  train_counts: np.ndarray

  @property
  def num_classes(self) -> int:
    return len(self.train_counts)

  def training(self) -> loop.TrainData:
    return loop.TrainData(train=self.train, train_counts=self.train_counts)


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make(num_classes: int = 10, dim: int = 16, k: int = 4, max_per_class: int = 40,
         imbalance: float = 10.0, kb_per_class: int = 8, val_per_class: int = 4,
         noise: float = 1.0, seed: int = 0) -> Synthetic:
  rng = np.random.default_rng(seed)
  proto_i = _unit(rng.normal(size=(num_classes, dim)))
  proto_t = _unit(proto_i + 0.5 * rng.normal(size=(num_classes, dim)))
  c = np.arange(num_classes)
  counts = np.maximum((max_per_class * imbalance ** (-c / max(num_classes - 1, 1))).astype(int), 1)
  kb_labels = np.repeat(c, kb_per_class)
  kb = input_pipeline.ArrayKB(
      _unit(proto_i[kb_labels] + noise * rng.normal(size=(len(kb_labels), dim)) / np.sqrt(dim)),
      _unit(proto_t[kb_labels] + 0.3 * rng.normal(size=(len(kb_labels), dim))))

  def split(labels):
    z = _unit(proto_i[labels] + noise * rng.normal(size=(len(labels), dim)) / np.sqrt(dim))
    rows = np.argsort(-(z @ kb._image.T), axis=1)[:, :k].astype(np.int64)
    return input_pipeline.QuerySet(image=z, labels=labels.astype(np.int64), neighbor_rows=rows,
                                   kb=kb)

  train = split(np.repeat(c, counts))
  val = split(np.repeat(c, val_per_class))
  return Synthetic(train=train, val=val, train_counts=counts.astype(np.int64))
