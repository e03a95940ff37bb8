"""WebVision 1.0 for noisy-label training: train (noisy labels + web text), val (WebVision's
human-labelled 50,000) and imagenet_val (the ILSVRC-2012 validation set, TFDS `imagenet2012`).

The training split's text is the image's web text (title + description), which the knowledge
base stores as its caption; the evaluation splits have none (a class prompt is used).
"""

from __future__ import annotations

import numpy as np

from retformer_jax.data import base
from retformer_jax.data import imagenet_lt
from retformer_jax.data import tfds_source

TFDS_NAME = "webvision"
PREPARE = ("python -m retformer_jax.data.webvision_builder --manual_dir=MANUAL_DIR "
           "--data_dir=DIR   # needs no TensorFlow; MANUAL_DIR: the extracted WebVision 1.0 "
           "download (layout in retformer_jax/data/webvision_builder.py)")
IMAGENET_NAME = "imagenet2012"
IMAGENET_PREPARE = ("tfds build imagenet2012 --manual_dir=DIR --file_format=array_record "
                    "[--data_dir=DIR]   # DIR holds ILSVRC2012_img_train.tar and "
                    "ILSVRC2012_img_val.tar")


def _imagenet_val(data_config) -> tfds_source.TfdsSplit:
  imnet = tfds_source.open_prepared(IMAGENET_NAME, data_config.tfds_data_dir, IMAGENET_PREPARE)
  imagenet_lt.imagenet_class_names(imnet.class_names())  # same label order as WebVision
  return tfds_source.TfdsSplit(imnet, "validation",
                               labels=imnet.labels("validation", data_config))


class _LazySplit:
  """A split opened on first use, so that WebVision trains without ImageNet being prepared."""

  def __init__(self, open_split):
    self._open, self._split = open_split, None

  def _get(self):
    if self._split is None:
      self._split = self._open()
    return self._split

  def __len__(self) -> int:
    return len(self._get())

  def __getitem__(self, index: int) -> dict:
    return self._get()[index]

  @property
  def labels(self):
    return self._get().labels


def load(data_config) -> base.LabelledSplits:
  web = tfds_source.open_prepared(TFDS_NAME, data_config.tfds_data_dir, PREPARE,
                                 needs_tensorflow=False)
  names = imagenet_lt.imagenet_class_names(web.class_names())
  train = tfds_source.TfdsSplit(web, "train", labels=web.labels("train", data_config),
                                text_field="text")
  splits = {"train": train,
            "val": tfds_source.TfdsSplit(web, "val", labels=web.labels("val", data_config))}
  splits["imagenet_val"] = _LazySplit(lambda: _imagenet_val(data_config))
  counts = np.bincount(train.labels, minlength=len(names)).astype(np.int64)
  return base.LabelledSplits(name="webvision", class_names=names, train_counts=counts,
                             splits=splits)
