"""What every data source yields, and the interface the pipeline reads it through.

An example is a dict:
  image  uint8 [H, W, 3]   (decoded RGB; sizes may differ between examples)
  label  int               (-1 when unknown, e.g. web image-text pairs)
  text   str               (caption / web text; "" when none, then a class prompt is used)
  id     int               (stable, unique within the source; survives resharding)
Sources are random access (len + getitem), so any process can read any slice, which is what
makes embedding resumable and shardable over hosts.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np


class Source(Protocol):
  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict: ...


@dataclasses.dataclass(frozen=True)
class LabelledSplits:
  """A labelled data set: its class names, per-class training counts and named splits."""

  name: str
  class_names: Sequence[str]
  train_counts: np.ndarray  # int64 [num_classes], images per class in the training split
  splits: dict[str, Source]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def shot_buckets(train_counts: np.ndarray, many_above: int, few_below: int) -> np.ndarray:
  """Per class: 0 = Many (> many_above), 1 = Medium, 2 = Few (< few_below)."""
  counts = np.asarray(train_counts)
  return np.where(counts > many_above, 0, np.where(counts < few_below, 2, 1)).astype(np.int32)
