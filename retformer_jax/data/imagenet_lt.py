"""ImageNet-LT (Liu et al. 2019) from TFDS `imagenet_lt`, which carries the OLTR splits itself.

train 115,846 (from ILSVRC-2012 train), val 20,000 (from ILSVRC-2012 train), test 50,000 (the
ILSVRC-2012 validation set). TFDS prepares it from a manual download of the ILSVRC tars.
"""

from __future__ import annotations

from retformer_jax.data import base
from retformer_jax.data import lt_lists
from retformer_jax.data import tfds_source

TFDS_NAME = "imagenet_lt"
PREPARE = ("tfds build imagenet_lt --manual_dir=DIR --file_format=array_record [--data_dir=DIR]"
           "   # DIR holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar")
_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def imagenet_class_names(wnids: list[str] | None = None) -> list[str]:
  """Readable ImageNet-1k names in label order; checks the data set's wnid order when given."""
  rows = lt_lists.read_classnames("imagenet_classnames.txt")
  if wnids is not None and list(wnids) != [k for k, _ in rows]:
    raise ValueError("The prepared data set's ImageNet classes are not in the standard (sorted "
                     "wnid) order that retformer_jax/data/classnames/imagenet_classnames.txt has.")
  return [name for _, name in rows]


def load(data_config) -> base.LabelledSplits:
  dataset = tfds_source.open_prepared(TFDS_NAME, data_config.tfds_data_dir, PREPARE)
  names = imagenet_class_names(dataset.class_names())
  return tfds_source.labelled_splits("imagenet_lt", dataset, _SPLITS, names, data_config)
