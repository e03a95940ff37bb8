"""Zero-shot classification as retrieval: labelled images are the queries, classes the candidates.

Two sources:
  from_splits(data)   any of our labelled data sets (retformer_jax.data.registry: CIFAR-100-LT,
                      ImageNet-LT, Places-LT, iNaturalist 2018, WebVision, the demo), with
                      Many/Medium/Few buckets from its training counts;
  read_folder(dir)    the reference's list layout (main_classification_v2.py):
                        label_idx.json      {"0": "class name", "1": ...}
                        dataset_list.json   [{"file_path": "...", "label": "class name"}, ...]
                      file_path absolute or relative to dir; no buckets (no training counts).

Prompt templates (the CLIP coarse stage embeds one prompt per class; the MLLM stage is shown
the readable class name itself, as the reference's re-ranker is):
  "clip"       "a photo of a {name}."   the project's zero-shot prompt (stage `zeroshot`)
  "reference"  "a photo of {name}"      what main_classification_v2.py embeds
"""

from __future__ import annotations

import json
import os

import numpy as np

from retformer_jax.data import base, lt_lists
from retformer_jax.retllm.benchmarks import items

TEMPLATES = {"clip": "a photo of a {name}.", "reference": "a photo of {name}"}
LABEL_INDEX, DATASET_LIST = "label_idx.json", "dataset_list.json"


def template(name_or_template: str) -> str:
  """A template key of TEMPLATES, or a template string holding '{name}'."""
  return TEMPLATES.get(name_or_template, name_or_template)


def _record_image(source, index: int):
  return lambda: source[index]["image"]


def from_splits(data: base.LabelledSplits, *, split: str = "test", prompt: str = "clip",
                many_above: int = 100, few_below: int = 20,
                max_images: int = 0) -> items.ClassificationSet:
  """The `split` of a labelled data set; buckets Many (> many_above) / Few (< few_below)."""
  if split not in data.splits:
    raise items.BenchmarkLayoutError(f"{data.name} has no split {split!r} (splits: "
                                     f"{', '.join(sorted(data.splits))}).")
  source = data.splits[split]
  labels = np.asarray(source.labels, np.int64)
  count = len(labels) if max_images <= 0 else min(max_images, len(labels))
  images = [items.Item(image=_record_image(source, i)) for i in range(count)]
  counts = np.asarray(data.train_counts)
  buckets = base.shot_buckets(counts, many_above, few_below) if counts.size else None
  return items.ClassificationSet(
      name=data.name, images=images, labels=labels[:count],
      class_names=[lt_lists.readable(n) for n in data.class_names], template=template(prompt),
      buckets=buckets)


def read_folder(data_dir: str, *, prompt: str = "clip",
                name: str = "classification") -> items.ClassificationSet:
  fix = (f"point data_dir at the folder holding {LABEL_INDEX} ({{index: class name}}) and "
         f"{DATASET_LIST} ([{{file_path, label}}]).")
  items.require_dir(data_dir, "Classification", fix)
  index_path = items.require_file(os.path.join(data_dir, LABEL_INDEX), "class index", fix)
  list_path = items.require_file(os.path.join(data_dir, DATASET_LIST), "image list", fix)
  with open(index_path, encoding="utf8") as f:
    index = json.load(f)
  with open(list_path, encoding="utf8") as f:
    entries = json.load(f)
  if not isinstance(index, dict) or not index:
    raise items.BenchmarkLayoutError(f"{index_path} is not a non-empty {{index: name}} object.")
  try:
    order = sorted(index, key=int)
  except ValueError:
    raise items.BenchmarkLayoutError(f"{index_path}: keys must be class indices 0..C-1.") from None
  if [int(k) for k in order] != list(range(len(order))):
    raise items.BenchmarkLayoutError(f"{index_path}: keys must be class indices 0..C-1.")
  names = [str(index[k]) for k in order]
  label_of = {n: i for i, n in enumerate(names)}
  paths, labels = [], []
  for i, entry in enumerate(entries if isinstance(entries, list) else []):
    if not isinstance(entry, dict) or "file_path" not in entry or "label" not in entry:
      raise items.BenchmarkLayoutError(f"{list_path}: entry {i} lacks 'file_path' or 'label'.")
    if entry["label"] not in label_of:
      raise items.BenchmarkLayoutError(f"{list_path}: entry {i} has label {entry['label']!r}, "
                                       f"which {LABEL_INDEX} does not name.")
    paths.append(os.path.join(data_dir, entry["file_path"]))
    labels.append(label_of[entry["label"]])
  if not paths:
    raise items.BenchmarkLayoutError(f"{list_path} is not a non-empty list of entries.")
  items.require_images(paths, f"{name} ({DATASET_LIST})", fix)
  return items.ClassificationSet(
      name=name, images=[items.Item(image=p) for p in paths],
      labels=np.asarray(labels, np.int64), class_names=[lt_lists.readable(n) for n in names],
      template=template(prompt))
