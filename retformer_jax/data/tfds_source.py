"""Prepared TFDS data sets read without TensorFlow: array_record files, random access, PIL decoding.

`open_prepared` finds `<tfds_data_dir>/<name>/<version>/` and opens it from its
`dataset_info.json` alone (no builder code runs, so no TensorFlow), failing with the command
that prepares it when it is missing. `TfdsSplit` wraps one split (optionally a subset of its
records) into the example schema of data/base.py; `caption_path` finds where an image-caption
set (e.g. coco_captions) keeps its captions, and `TfdsSplit` can take each record's first one
as its text. What needs a scan of a whole split (its labels and other per-record columns; the
rows that match a split list) is cached as .npy files under `data.cache_dir` (a local path),
keyed by the data set's version and shard layout, since a scan reads every record.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import threading
from typing import Callable, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from retformer_jax import atomic_io, errors
from retformer_jax.data import base, image_decode, lt_lists

_SCAN_CHUNK = 2048


class DataNotPreparedError(errors.UserError, FileNotFoundError):
  """The TFDS data set a config names has not been prepared in the data dir."""


def default_data_dir(data_dir: str) -> str:
  return data_dir or tfds.core.constants.get_default_data_dir()


def default_cache_dir(cache_dir: str) -> str:
  return cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "retformer_jax")


def _version_key(name: str) -> tuple:
  return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


def open_prepared(name: str, data_dir: str, prepare: str, needs_tensorflow: bool = True,
                  version: str = "") -> "PreparedDataset":
  """Opens prepared TFDS data set `name` (`<name>` or `<name>/<config>`): version `version`,
  or the newest prepared one when ""; `prepare` is the command to run when it is missing
  (shown in the error, with the `prep` extra when it needs TF)."""
  root = epath.Path(default_data_dir(data_dir))
  base_dir = root / name
  versions = []
  if base_dir.exists():
    versions = sorted((p for p in base_dir.iterdir() if (p / "dataset_info.json").exists()),
                      key=lambda p: _version_key(p.name))
  if not versions:
    prep = ("  pip install 'retformer_jax[prep]'   # (-e '.[prep]' in a checkout) TensorFlow, only to "
            "prepare\n"
            if needs_tensorflow else "")
    configs = sorted(p.name for p in base_dir.iterdir() if p.is_dir() and any(
        (v / "dataset_info.json").exists() for v in p.iterdir())) if base_dir.exists() else []
    hint = (f"It has builder configs {configs}: name one as '{name}/<config>'.\n"
            if configs else "")
    raise DataNotPreparedError(
        f"TFDS data set {name!r} is not prepared under {root}. {hint}Prepare it once with\n"
        f"{prep}  {prepare}\n"
        f"then point --config.data.tfds_data_dir (or TFDS_DATA_DIR) at that data dir.")
  if version:
    chosen = [p for p in versions if p.name == version]
    if not chosen:
      raise DataNotPreparedError(
          f"TFDS data set {name!r} has no prepared version {version!r} under {root}; it has "
          f"{[p.name for p in versions]}. Prepare it with `{prepare}` (as {name}:{version}) "
          "or name a prepared version.")
    versions = chosen
  builder = tfds.builder_from_directory(os.fspath(versions[-1]))
  formats = {str(f.value) for f in builder.info.available_file_formats()} or {
      str(builder.info.file_format.value)}
  if "array_record" not in formats:
    raise DataNotPreparedError(
        f"{versions[-1]} holds {sorted(formats)} files; reading without TensorFlow needs "
        f"array_record. Convert it once with\n  tfds convert_format "
        f"--dataset_dir={versions[-1]} --out_file_format=array_record\n"
        f"or prepare it again with --file_format=array_record.")
  return PreparedDataset(name, builder)


class PreparedDataset:
  """One prepared TFDS data set: its splits as random-access sources, its class names."""

  def __init__(self, name: str, builder):
    self.name = name
    self.builder = builder
    self.version = str(builder.info.version)
    self._sources: dict[str, object] = {}
    self._lock = threading.Lock()
    self._image_fields = [k for k, f in builder.info.features.items()
                          if isinstance(f, tfds.features.Image)]

  def splits(self) -> list[str]:
    return list(self.builder.info.splits.keys())

  def num_examples(self, split: str) -> int:
    return int(self.builder.info.splits[split].num_examples)

  def class_names(self, field: str = "label") -> list[str]:
    return list(self.builder.info.features[field].names)

  def source(self, split: str):
    """The split's records with images left as encoded bytes (we decode them with PIL)."""
    with self._lock:  # decoding threads may all ask for the split at once
      if split not in self._sources:
        if split not in self.builder.info.splits:
          raise ValueError(f"TFDS data set {self.name!r} has no split {split!r}; "
                           f"it has {self.splits()}")
        decoders = {k: tfds.decode.SkipDecoding() for k in self._image_fields}
        self._sources[split] = self.builder.as_data_source(
            split=split, decoders=decoders, file_format="array_record")
      return self._sources[split]

  def scan(self, split: str, fields: Sequence[str], num_workers: int) -> dict[str, list]:
    """Every record's `fields`, in record order (reads the whole split once)."""
    src = self.source(split)
    n = len(src)
    chunks = [range(s, min(s + _SCAN_CHUNK, n)) for s in range(0, n, _SCAN_CHUNK)]

    def read(chunk):
      return [[rec[f] for f in fields] for rec in src.__getitems__(list(chunk))]

    out = {f: [] for f in fields}
    logging.info("Scanning %s:%s (%d records) for %s", self.name, split, n, list(fields))
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
      for rows in pool.map(read, chunks):
        for row in rows:
          for f, v in zip(fields, row):
            out[f].append(v.decode("utf-8") if isinstance(v, bytes) else v)
    return out

  def cache_key(self, split: str) -> str:
    """Identifies the prepared split's content (name, version, shard layout)."""
    info = self.builder.info.splits[split]
    blob = json.dumps([self.builder.info.full_name, split, int(info.num_examples),
                       [int(x) for x in info.shard_lengths]])
    return hashlib.sha1(blob.encode()).hexdigest()[:12]

  def cache_path(self, data_config, what: str, split: str) -> str:
    """cache_dir/<name>/<version>/<split>.<what>.<key>.npy (a `/` in a config name nests)."""
    folder = os.path.join(default_cache_dir(data_config.cache_dir), self.name, self.version)
    return os.path.join(folder, f"{split}.{what}.{self.cache_key(split)}.npy")

  def cached(self, data_config, what: str, split: str,
             compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()`'s array, cached at `cache_path(data_config, what, split)`."""
    path = self.cache_path(data_config, what, split)
    if os.path.exists(path):
      return np.load(path)
    array = np.asarray(compute())
    atomic_io.save_npy(path, array)  # unique temporary name, even across hosts
    return array

  def columns(self, split: str, data_config,
              wanted: dict[str, tuple[str, Callable[[list], np.ndarray]]]) -> dict[str, np.ndarray]:
    """Per-record arrays of `split`, each cached: {what: convert(values of field)} for
    wanted = {what: (field, convert)}; the fields not cached yet are read in one scan."""
    out = {}
    for what in wanted:
      path = self.cache_path(data_config, what, split)
      if os.path.exists(path):
        out[what] = np.load(path)
    todo = [what for what in wanted if what not in out]
    if todo:
      fields = sorted({wanted[what][0] for what in todo})
      values = self.scan(split, fields, data_config.num_workers)
      for what in todo:
        field, convert = wanted[what]
        out[what] = np.asarray(convert(values[field]))
        atomic_io.save_npy(self.cache_path(data_config, what, split), out[what])
    return out

  def labels(self, split: str, data_config, field: str = "label") -> np.ndarray:
    """int64 label of every record of `split` (cached)."""
    return self.columns(split, data_config,
                        {field: (field, lambda values: np.asarray(values, np.int64))})[field]


CAPTION_NAMES = ("captions", "caption")  # features that may hold an image's captions


def _is_string(feature) -> bool:
  """A scalar string feature: a Text, or a string Tensor (coco_captions' `captions/text`)."""
  return (isinstance(feature, tfds.features.Tensor) and tuple(feature.shape) == ()
          and np.dtype(feature.np_dtype).kind in "OSU")


def caption_path(features) -> tuple[str, ...] | None:
  """Where a set's features keep an image's captions, as keys into a record: (name, "text") for
  a Sequence of dicts with a string `text` (coco_captions: `captions`), (name,) for a string
  feature or a Sequence of strings; `name` is "captions" or "caption". None when there is none;
  an error when both names hold captions (which one is meant would be a guess)."""
  features, found = dict(features.items()), []
  for name in CAPTION_NAMES:
    feature = features.get(name)
    if _is_string(feature):
      found.append((name,))
    elif isinstance(feature, tfds.features.Sequence):
      inner = feature.feature
      if _is_string(inner):
        found.append((name,))
      elif (isinstance(inner, tfds.features.FeaturesDict)
            and _is_string(dict(inner.items()).get("text"))):
        found.append((name, "text"))
  if len(found) > 1:
    raise ValueError(f"both {['/'.join(p) for p in found]} hold captions; which one is meant "
                     "is ambiguous")
  return found[0] if found else None


def record_captions(record, path: Sequence[str]) -> list[str]:
  """All captions of a record at `path` (see caption_path), decoded, in stored order."""
  value = record
  for key in path:
    value = value[key]
  values = [value] if isinstance(value, (bytes, str)) else list(value)
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class TfdsSplit:
  """A split (or a subset of its records) as a source of {image, label, text, id} examples.

  `rows` picks and orders records (default: all); `labels` overrides the stored labels (e.g.
  when a list carries them); `text_field` names a Text feature holding the example's text
  (default: "", the class prompt is used downstream). `first_caption` (a `caption_path`) makes
  the text the record's first caption, stripped, and adds `num_captions`; a record without
  captions gets text "" and num_captions 0, for the caller to skip or refuse. The id is the
  position in this split.
  """

  def __init__(self, dataset: PreparedDataset, split: str, *, labels: np.ndarray,
               rows: np.ndarray | None = None, text_field: str | None = None,
               image_field: str = "image", first_caption: Sequence[str] | None = None):
    if text_field and first_caption:
      raise ValueError("TfdsSplit takes a text_field or first_caption, not both")
    self.dataset, self.split = dataset, split
    self._rows = None if rows is None else np.asarray(rows, np.int64)
    n = dataset.num_examples(split) if self._rows is None else len(self._rows)
    self._labels = np.asarray(labels, np.int64)
    if len(self._labels) != n:
      raise ValueError(f"{dataset.name}:{split}: {len(self._labels)} labels for {n} examples")
    self._text_field, self._image_field = text_field, image_field
    self._first_caption = tuple(first_caption) if first_caption else None

  def __len__(self) -> int:
    return len(self._labels)

  @property
  def labels(self) -> np.ndarray:
    return self._labels

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {self.dataset.name}:{self.split} "
                       f"of {len(self)} examples")
    record_index = index if self._rows is None else int(self._rows[index])
    record = self.dataset.source(self.split)[record_index]
    text, extra = "", {}
    if self._text_field:
      text = record[self._text_field]
      text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    elif self._first_caption:
      captions = record_captions(record, self._first_caption)
      text = captions[0].strip() if captions else ""
      extra["num_captions"] = len(captions)
    return {"image": image_decode.decode_image(record[self._image_field]),
            "label": int(self._labels[index]), "text": text, "id": index, **extra}


def labelled_splits(name: str, dataset: PreparedDataset, split_map: dict[str, str],
                    class_names: Sequence[str], data_config,
                    train_split: str = "train") -> base.LabelledSplits:
  """Our splits (keys of `split_map`) over the TFDS splits it names, with training counts
  from our split `train_split`."""
  splits = {ours: TfdsSplit(dataset, theirs, labels=dataset.labels(theirs, data_config))
            for ours, theirs in split_map.items()}
  counts = np.bincount(splits[train_split].labels,
                       minlength=len(class_names)).astype(np.int64)
  return base.LabelledSplits(name=name, class_names=list(class_names), train_counts=counts,
                             splits=splits)


# ------------------------------------------------- any prepared classification set, by name

TFDS_NAME_FORMAT = "NAME[/CONFIG][:X.Y.Z] (e.g. food101, cifar10_corrupted/fog_5:1.0.0)"


class TfdsNameError(errors.UserError, ValueError):
  """data.tfds_name is malformed, or names a set that is not image classification."""


def parse_tfds_name(text: str) -> tuple[str, str]:
  """`NAME[/CONFIG][:VERSION]` -> (name or name/config, version or "")."""
  name, _, version = str(text).strip().partition(":")
  parts = name.split("/")
  ok = (name and len(parts) <= 2 and all(parts) and parts[0][:1].isalpha()
        and (not version or all(p.isdigit() for p in version.split(".")) and
             version.count(".") == 2))
  if not ok:
    raise TfdsNameError(
        f"--config.data.tfds_name={text!r} is not a TFDS data set name; write it as "
        f"{TFDS_NAME_FORMAT}.")
  return name, version


def load_by_name(data_config) -> base.LabelledSplits:
  """`--config.data.name=tfds --config.data.tfds_name=NAME[/CONFIG][:VERSION]`: any prepared
  TFDS image-classification set (an Image `image` and a ClassLabel `label`). Its splits
  data.train_split and data.eval_splits are ours under the same names; class names come from
  the label feature (cleaned up for prompts as our other readers do), training counts from the
  training split's labels (scanned once, cached in data.cache_dir)."""
  if not data_config.tfds_name:
    raise TfdsNameError("--config.data.name=tfds needs --config.data.tfds_name="
                               f"{TFDS_NAME_FORMAT}.")
  name, version = parse_tfds_name(data_config.tfds_name)
  full = name + (f":{version}" if version else "")
  ds = open_prepared(name, data_config.tfds_data_dir, version=version,
                     prepare=f"tfds build {full} --file_format=array_record")
  features = dict(ds.builder.info.features.items())
  if not (isinstance(features.get("image"), tfds.features.Image)
          and isinstance(features.get("label"), tfds.features.ClassLabel)):
    raise TfdsNameError(
        f"TFDS data set {name!r} has features {sorted(features)}; --config.data.name=tfds "
        "reads image-classification sets (an Image 'image' and a ClassLabel 'label').")
  wanted = list(dict.fromkeys([data_config.train_split, *data_config.eval_splits]))
  missing = [s for s in wanted if s not in ds.splits()]
  if missing:
    raise DataNotPreparedError(
        f"TFDS data set {name!r} has no split(s) {missing}; it has {ds.splits()}. Set "
        "--config.data.train_split / --config.data.eval_splits to some of those.")
  try:
    names = [lt_lists.readable(n) for n in ds.class_names()]
  except ValueError as e:
    raise TfdsNameError(f"TFDS data set {name!r}: {e}") from e
  return labelled_splits(f"tfds:{name}", ds, {s: s for s in wanted}, names, data_config,
                         train_split=data_config.train_split)
