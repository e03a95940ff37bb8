"""Zero-shot classification sets: from our labelled data sets and from the reference list layout."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench_fixtures import dump, image
from retformer_jax.demo import dataset as demo_dataset, retllm_sets
from retformer_jax.retllm import benchmarks
from retformer_jax.retllm.benchmarks import BenchmarkLayoutError, classification


def test_from_labelled_splits_with_buckets():
  spec = demo_dataset.DemoSpec(num_classes=6, max_per_class=150, imbalance=30, test_per_class=2)
  data = demo_dataset.load(_config(spec))
  cs = classification.from_splits(data, split="test", many_above=100, few_below=20)
  assert len(cs) == 12 and cs.num_classes == 6
  np.testing.assert_array_equal(cs.labels, np.repeat(np.arange(6), 2))
  counts = demo_dataset.train_counts(spec)
  expect = np.where(counts > 100, 0, np.where(counts < 20, 2, 1))
  np.testing.assert_array_equal(cs.buckets, expect)
  assert set(cs.buckets.tolist()) == {0, 1, 2}
  assert cs.prompts[0] == f"a photo of a {demo_dataset.class_names(spec)[0]}."
  assert [c.text for c in cs.candidates()] == demo_dataset.class_names(spec)
  np.testing.assert_array_equal(cs.images[3].load_image(), data.splits["test"][3]["image"])
  ref = classification.from_splits(data, prompt="reference", max_images=5)
  assert len(ref) == 5 and ref.prompts[1] == f"a photo of {demo_dataset.class_names(spec)[1]}"
  with pytest.raises(BenchmarkLayoutError, match="has no split 'dev'"):
    classification.from_splits(data, split="dev")
  with pytest.raises(BenchmarkLayoutError, match="no '{name}' placeholder"):
    classification.from_splits(data, prompt="a photo")


def _config(spec):
  import dataclasses

  import ml_collections

  return ml_collections.ConfigDict(dataclasses.asdict(spec))


def _write(root):
  dump(os.path.join(root, "label_idx.json"), {"1": "sea_lion", "0": "tench"})
  entries = []
  for i, label in enumerate(["tench", "sea_lion", "sea_lion"]):
    rel = f"imgs/{i}.jpg"
    image(os.path.join(root, rel), 30 + i)
    entries.append({"file_path": rel, "label": label})
  dump(os.path.join(root, "dataset_list.json"), entries)


def test_reference_list_layout(tmp_path):
  _write(str(tmp_path))
  cs = benchmarks.load("classification", str(tmp_path), prompt="reference")
  assert list(cs.class_names) == ["tench", "sea lion"]
  np.testing.assert_array_equal(cs.labels, [0, 1, 1])
  assert cs.buckets is None and cs.prompts == ["a photo of tench", "a photo of sea lion"]
  assert int(cs.images[2].load_image()[0, 0, 0]) == 32


def test_reference_list_layout_errors(tmp_path):
  with pytest.raises(BenchmarkLayoutError, match="Classification folder"):
    classification.read_folder(str(tmp_path / "none"))
  _write(str(tmp_path))
  os.remove(tmp_path / "imgs" / "1.jpg")
  with pytest.raises(BenchmarkLayoutError, match="1 of 3 images are missing"):
    classification.read_folder(str(tmp_path))
  dump(str(tmp_path / "dataset_list.json"), [{"file_path": "imgs/0.jpg", "label": "carp"}])
  with pytest.raises(BenchmarkLayoutError, match="label 'carp', which label_idx.json"):
    classification.read_folder(str(tmp_path))
  os.remove(tmp_path / "label_idx.json")
  with pytest.raises(BenchmarkLayoutError, match="class index .*label_idx.json. not found"):
    classification.read_folder(str(tmp_path))


def test_demo_set_reads_back(tmp_path):
  spec = demo_dataset.DemoSpec(num_classes=4, test_per_class=3)
  folder = retllm_sets.write("classification", str(tmp_path / "cls"), spec, count=8)
  cs = benchmarks.load("classification", folder)
  split = demo_dataset.DemoSplit(spec, "test")
  assert list(cs.class_names) == demo_dataset.class_names(spec)
  assert len(cs) == 8 and cs.labels[0] == split[0]["true_label"]
  assert np.abs(cs.images[0].load_image().astype(int) - split[0]["image"]).mean() < 8
