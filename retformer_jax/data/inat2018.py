"""iNaturalist 2018 from TFDS `i_naturalist2018`: 8,142 species, 437,513 train images; the
24,426 validation images serve as the test set (the competition's test labels are private)."""

from __future__ import annotations

from retformer_jax.data import base
from retformer_jax.data import tfds_source

TFDS_NAME = "i_naturalist2018"
PREPARE = ("tfds build i_naturalist2018 --file_format=array_record [--data_dir=DIR]"
           "   # downloads the 2018 competition archives (~120 GB)")
_SPLITS = {"train": "train", "test": "validation"}


def load(data_config) -> base.LabelledSplits:
  dataset = tfds_source.open_prepared(TFDS_NAME, data_config.tfds_data_dir, PREPARE)
  return tfds_source.labelled_splits("inat2018", dataset, _SPLITS, dataset.class_names(),
                                     data_config)
