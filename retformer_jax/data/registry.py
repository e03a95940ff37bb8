"""`load(config.data)`: the labelled data set a config names, as base.LabelledSplits.

Readers are named by module path (`module` with a `load(data_config)`, or `module:function`)
and imported on use: most of them import `tensorflow_datasets` (slow to import, and not needed
by a run on the demo set), and the demo's reader (`retformer_jax.demo.dataset`) builds on
data/base.py, so importing it here would make `data` and `demo` import each other.

A reader of your own: a function `load(data_config) -> base.LabelledSplits` registered with
`register("my_set", load)` before `main` runs; then `--config.data.name=my_set` selects it.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Union

import numpy as np

from retformer_jax.data import base

Loader = Callable[..., base.LabelledSplits]  # load(data_config) -> LabelledSplits

# data.name -> module with `load(data_config)`, "module:function", or a registered function.
READERS: dict[str, Union[str, Loader]] = {
    "demo": "retformer_jax.demo.dataset",
    "cifar100_lt": "retformer_jax.data.cifar100_lt",
    "imagenet_lt": "retformer_jax.data.imagenet_lt",
    "places_lt": "retformer_jax.data.places_lt",
    "inat2018": "retformer_jax.data.inat2018",
    "webvision": "retformer_jax.data.webvision",
    "image_folder": "retformer_jax.data.image_folder",
    "tfds": "retformer_jax.data.tfds_source:load_by_name",
}


def register(name: str, loader: Union[str, Loader]) -> None:
  """Makes `--config.data.name=<name>` read a data set with `loader(data_config)`.

  `loader` returns a base.LabelledSplits whose splits include data.train_split and
  data.eval_splits (each a random-access base.Source), or is a "module[:function]" path to one.
  Registering a name again replaces its reader.
  """
  if not isinstance(name, str) or not name or ":" in name or "/" in name:
    raise ValueError(f"A reader name must be a non-empty string without ':' or '/'; got {name!r}.")
  if not (callable(loader) or isinstance(loader, str)):
    raise TypeError(f"register({name!r}, ...) takes a function load(data_config) or a "
                    f"'module[:function]' path; got {type(loader).__name__}.")
  READERS[name] = loader


def _loader(name: str) -> Loader:
  reader = READERS[name]
  if callable(reader):
    return reader
  module_name, _, function = reader.partition(":")
  return getattr(importlib.import_module(module_name), function or "load")


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


def _shrink(data: base.LabelledSplits, count: int, train_split: str) -> base.LabelledSplits:
  splits = {k: Subset(v, count) for k, v in data.splits.items()}
  labels = splits[train_split].labels
  counts = np.bincount(labels[labels >= 0], minlength=data.num_classes).astype(np.int64)
  return dataclasses.replace(data, splits=splits, train_counts=counts)


def load(data_config) -> base.LabelledSplits:
  name = data_config.name
  if name not in READERS:
    raise ValueError(f"Unknown data set --config.data.name={name!r}; choose one of "
                     f"{sorted(READERS)}, or register a reader of your own "
                     "(retformer_jax.data.registry.register).")
  load_fn = _loader(name)
  data = load_fn(data_config.demo) if name == "demo" else load_fn(data_config)
  if not isinstance(data, base.LabelledSplits):
    raise TypeError(f"The reader of data set {name!r} returned {type(data).__name__}; a reader "
                    "returns retformer_jax.data.base.LabelledSplits.")
  if data_config.max_examples > 0:
    train = data_config.train_split if data_config.train_split in data.splits else "train"
    data = _shrink(data, data_config.max_examples, train)
  return data
