"""Writes tiny prepared TFDS data sets (array_record, no TensorFlow) for reader tests."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds


def png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def image(seed: int, size: int = 6, grey: bool = False) -> bytes:
  rng = np.random.default_rng([abs(seed), seed < 0])
  shape = (size, size + 1) if grey else (size, size + 1, 3)
  return png(rng.integers(0, 256, shape, dtype=np.uint8))


def write(data_dir, name: str, version: str, features: dict,
          splits: dict[str, list[dict]]) -> str:
  """Prepares data set `name` at data_dir/name/version with the given records per split."""

  def info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def split_generators(self, dl_manager):
    return {s: self._generate_examples(s) for s in splits}

  def generate(self, split):
    for i, rec in enumerate(splits[split]):
      yield f"{split}-{i}", rec

  with tfds.core.registered.skip_registration():
    cls = type("FakeBuilder", (tfds.core.GeneratorBasedBuilder,), {
        "name": name, "VERSION": tfds.core.Version(version), "_info": info,
        "_split_generators": split_generators, "_generate_examples": generate,
        "__module__": __name__})
  builder = cls(data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return os.path.join(os.fspath(data_dir), name, version)
