"""Karpathy-layout demo sets (Flickr30k, COCO) read back; demo writes are idempotent."""

from __future__ import annotations

import os

import numpy as np
import pytest

from retformer_jax.demo import dataset as demo_dataset, retllm_sets
from retformer_jax.retllm import benchmarks
from retformer_jax.retllm.benchmarks import BenchmarkLayoutError

SPEC = demo_dataset.DemoSpec(num_classes=4, test_per_class=3)


@pytest.mark.parametrize("name,images", [("flickr30k", "flickr30k-images"),
                                          ("coco", "val2014")])
def test_karpathy_demo_sets(tmp_path, name, images):
  folder = retllm_sets.write(name, str(tmp_path / name), SPEC, count=6)
  assert os.path.isdir(os.path.join(folder, images))
  data = benchmarks.load(name, folder)
  assert data.num_images == 6 and data.num_captions == 30
  split = demo_dataset.DemoSplit(SPEC, "test")
  assert data.captions[0] == split[0]["text"]
  assert [list(p) for p in data.positives("i2t")][:2] == [list(range(5)), list(range(5, 10))]
  assert data.candidates("t2i")[1].image == data.image_paths[1]
  assert np.abs(data.image(0).astype(int) - split[0]["image"]).mean() < 8
  with pytest.raises(BenchmarkLayoutError, match=r"dataset_\w+\.json not found"):
    benchmarks.load(name, str(tmp_path))


def test_demo_write_is_idempotent_and_replaces_other_inputs(tmp_path):
  folder = str(tmp_path / "u")
  retllm_sets.write("urban1k", folder, SPEC, count=4)
  marker = os.path.join(folder, "caption", "1.txt")
  mtime = os.stat(marker).st_mtime_ns
  retllm_sets.write("urban1k", folder, SPEC, count=4)
  assert os.stat(marker).st_mtime_ns == mtime  # reused, not rewritten
  retllm_sets.write("urban1k", folder, SPEC, count=5)
  assert len(os.listdir(os.path.join(folder, "caption"))) == 5
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
  with pytest.raises(ValueError, match="No demo set for benchmark 'flickr'"):
    retllm_sets.write("flickr", folder, SPEC)


def test_unknown_benchmark_is_one_line(tmp_path):
  with pytest.raises(BenchmarkLayoutError, match="Unknown benchmark 'imagenet'"):
    benchmarks.load("imagenet", str(tmp_path))
