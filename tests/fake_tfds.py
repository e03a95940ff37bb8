"""Writes tiny prepared TFDS data sets (array_record, no TensorFlow) for reader tests."""

from __future__ import annotations

import io
import os
import shutil

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
          splits: dict[str, list[dict]], config: str = "") -> str:
  """Prepares data set `name` at data_dir/name/version (data_dir/name/config/version when a
  builder config is named, as TFDS lays configs out) with the given records per split."""

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
  build_dir = os.path.join(os.fspath(data_dir), ".build", config) if config else data_dir
  builder = cls(data_dir=os.fspath(build_dir), file_format="array_record")
  builder.download_and_prepare()
  if not config:
    return os.path.join(os.fspath(data_dir), name, version)
  target = os.path.join(os.fspath(data_dir), name, config, version)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.move(os.path.join(build_dir, name, version), target)
  return target


def cifar100(data_dir, train_labels, test_labels, names: list[str],
             version: str = "3.0.2") -> str:
  """A `cifar100`-shaped set: records given in original file order, each with the `id`
  (`train_NNNNN` / `test_NNNNN`) and `coarse_label` features of TFDS's builder; the image of
  train record i is image(i), of test record i image(-1 - i). TFDS stores them shuffled."""
  features = {"id": tfds.features.Text(), "image": tfds.features.Image(shape=(None, None, 3)),
              "label": tfds.features.ClassLabel(names=names),
              "coarse_label": tfds.features.ClassLabel(num_classes=20)}

  def records(labels, prefix, seed):
    return [{"id": f"{prefix}_{i:05d}", "image": image(seed(i)), "label": int(label),
             "coarse_label": int(label) % 20} for i, label in enumerate(labels)]

  return write(data_dir, "cifar100", version, features,
               {"train": records(train_labels, "train", lambda i: i),
                "test": records(test_labels, "test", lambda i: -1 - i)})


def coco_captions(data_dir, captions: list[list[str]], split: str = "test",
                  version: str = "1.1.0", config: str = "2014") -> str:
  """A `coco_captions/2014`-shaped set (features as TFDS's builder: `image`, `image/filename`,
  `image/id`, `captions` = Sequence({'id', 'text'}), `objects`); record i has the image
  image(i), COCO id 1000 + i and the captions captions[i] in that order (may be empty)."""
  features = {
      "image": tfds.features.Image(shape=(None, None, 3)),
      "image/filename": tfds.features.Text(),
      "image/id": np.int64,
      "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
      "objects": tfds.features.Sequence({"id": np.int64, "bbox": tfds.features.BBoxFeature(),
                                         "label": tfds.features.ClassLabel(num_classes=80)}),
  }
  records = [{"image": image(i), "image/filename": f"COCO_val2014_{1000 + i:012d}.jpg",
              "image/id": 1000 + i,
              "captions": [{"text": t, "id": 10 * i + j} for j, t in enumerate(texts)],
              "objects": [{"id": i, "bbox": np.array([0.1, 0.1, 0.5, 0.5], np.float32),
                           "label": i % 80}]}
             for i, texts in enumerate(captions)]
  return write(data_dir, "coco_captions", version, features, {split: records}, config=config)
