"""Places-LT (Liu et al. 2019): TFDS `places365_small` filtered with the OLTR lists.

Train (62,500) and val (7,300) are picked from Places365 train, test (36,500) is the whole
Places365 validation set. Records are matched to list entries by file name, from one scan of
each TFDS split whose result is cached (see tfds_source). Labels use the lists' (OLTR)
numbering, which differs from Places365's for five classes.
"""

from __future__ import annotations

import hashlib

import numpy as np

from retformer_jax.data import base
from retformer_jax.data import lt_lists
from retformer_jax.data import tfds_source

TFDS_NAME = "places365_small"
PREPARE = ("tfds build places365_small --file_format=array_record [--data_dir=DIR]"
           "   # downloads the 256x256 Places365 archives (~30 GB)")
# Our split -> the TFDS split its list entries come from.
_TFDS_SPLIT = {"train": "train", "val": "train", "test": "validation"}
NUM_CLASSES = 365


def class_names(class_dirs: list[str]) -> list[str]:
  """Readable names (from places365_classnames.txt) in Places-LT label order."""
  readable = dict(lt_lists.read_classnames("places365_classnames.txt"))
  unknown = [d for d in class_dirs if d not in readable]
  if unknown:
    raise ValueError(f"Places-LT classes {unknown[:3]} are not in places365_classnames.txt")
  return [lt_lists.readable(readable[d]) for d in class_dirs]


def load(data_config) -> base.LabelledSplits:
  dataset = tfds_source.open_prepared(TFDS_NAME, data_config.tfds_data_dir, PREPARE)
  lists = {s: lt_lists.read_list(f, data_config.lt_splits_dir)
           for s, f in lt_lists.PLACES_LT_LISTS.items()}
  dirs = lt_lists.class_dirs(lists["train"], NUM_CLASSES)
  for split in ("val", "test"):
    if lt_lists.class_dirs(lists[split], NUM_CLASSES) != dirs:
      raise ValueError(f"{lists[split].name} numbers the classes differently from the train list")
  # Places-LT label -> places365_small label (the two numberings differ for a few classes).
  tfds_names = dataset.class_names()
  position = {n: i for i, n in enumerate(tfds_names)}
  to_tfds = np.asarray([position[d.replace("-", "/")] for d in dirs], np.int64)
  scans: dict[str, tuple[list[str], np.ndarray]] = {}

  def scanned(tfds_split):
    if tfds_split not in scans:
      cols = dataset.scan(tfds_split, ["filename", "label"], data_config.num_workers)
      scans[tfds_split] = ([lt_lists.places_key_from_tfds(f) for f in cols["filename"]],
                           np.asarray(cols["label"], np.int64))
    return scans[tfds_split]

  def resolve(split):
    keys, labels = scanned(_TFDS_SPLIT[split])
    wanted = [lt_lists.places_key_from_list(p) for p in lists[split].paths]
    rows = lt_lists.match_keys(wanted, keys, lists[split].name)
    bad = np.flatnonzero(labels[rows] != to_tfds[lists[split].labels])
    if len(bad):
      raise ValueError(f"{len(bad)} {lists[split].name} entries have another class in "
                       f"{TFDS_NAME} (e.g. {lists[split].paths[bad[0]]}).")
    return rows

  splits = {}
  for split, lst in lists.items():
    digest = hashlib.sha1("\n".join(lst.paths).encode()).hexdigest()[:12]
    rows = dataset.cached(data_config, f"places_lt_{split}_{digest}", _TFDS_SPLIT[split],
                          lambda split=split: resolve(split))
    splits[split] = tfds_source.TfdsSplit(dataset, _TFDS_SPLIT[split], rows=rows,
                                          labels=lst.labels)
  counts = np.bincount(lists["train"].labels, minlength=NUM_CLASSES).astype(np.int64)
  return base.LabelledSplits(name="places_lt", class_names=class_names(dirs), train_counts=counts,
                             splits=splits)
