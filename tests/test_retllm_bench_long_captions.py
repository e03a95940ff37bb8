"""ShareGPT4V-1k and Urban1k readers, on hand-written folders and on the demo generator's."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench_fixtures import dump, image
from retformer_jax.demo import dataset as demo_dataset, retllm_sets
from retformer_jax.retllm import benchmarks
from retformer_jax.retllm.benchmarks import BenchmarkLayoutError, long_captions

JSON = "share-captioner_coco_lcs_sam_1246k_1107.json"


def _sharegpt4v(root, n=4):
  entries = []
  for i in range(n):
    rel = f"coco/train2017/{i:012d}.jpg" if i % 2 else f"sam/images/sa_{i}.jpg"
    image(os.path.join(root, rel), 10 * i)
    entries.append({"id": str(i), "image": rel, "conversations": [
        {"from": "human", "value": "<image>\nDescribe."},
        {"from": "gpt", "value": f"line one {i}\nline two {i}"}]})
  dump(os.path.join(root, JSON), entries)


def test_sharegpt4v_reads_first_entries_with_newlines_as_spaces(tmp_path):
  _sharegpt4v(str(tmp_path))
  data = long_captions.sharegpt4v(str(tmp_path), count=3)
  assert data.name == "sharegpt4v" and data.num_images == 3 and data.num_captions == 3
  assert data.captions == [f"line one {i} line two {i}" for i in range(3)]
  np.testing.assert_array_equal(data.caption_image, np.arange(3))
  assert int(data.image(1)[0, 0, 0]) == 10
  assert data.image_paths[1] == os.path.join(str(tmp_path), "coco/train2017/000000000001.jpg")
  # Both directions as items.
  assert data.queries("t2i")[2].text == "line one 2 line two 2"
  assert data.candidates("t2i")[2].load_image()[0, 0, 0] == 20
  assert [list(p) for p in data.positives("i2t")] == [[0], [1], [2]]
  assert benchmarks.load("sharegpt4v", str(tmp_path)).num_images == 4  # default: first 1,000


def test_sharegpt4v_layout_errors(tmp_path):
  with pytest.raises(BenchmarkLayoutError, match="folder .* not found"):
    long_captions.sharegpt4v(str(tmp_path / "nope"))
  with pytest.raises(BenchmarkLayoutError, match=JSON.replace(".", r"\.") + ".* not found"):
    long_captions.sharegpt4v(str(tmp_path))
  _sharegpt4v(str(tmp_path))
  os.remove(tmp_path / "coco/train2017/000000000001.jpg")
  with pytest.raises(BenchmarkLayoutError, match="1 of 4 images are missing"):
    long_captions.sharegpt4v(str(tmp_path))
  dump(str(tmp_path / JSON), [{"image": "x.jpg", "conversations": [{"value": "q"}]}])
  with pytest.raises(BenchmarkLayoutError, match=r"conversations\[1\]\.value"):
    long_captions.sharegpt4v(str(tmp_path))


def _urban1k(root, n=11):
  for i in range(1, n + 1):
    image(os.path.join(root, "image", f"{i}.jpg"), i)
    os.makedirs(os.path.join(root, "caption"), exist_ok=True)
    with open(os.path.join(root, "caption", f"{i}.txt"), "w") as f:
      f.write(f"  caption {i}  \nsecond line\n")


def test_urban1k_pairs_in_numeric_order(tmp_path):
  _urban1k(str(tmp_path))
  data = benchmarks.load("urban1k", str(tmp_path))
  assert data.num_images == 11
  assert data.captions[:3] == ["caption 1", "caption 2", "caption 3"]
  assert data.captions[9] == "caption 10"  # numeric, not lexicographic, order
  assert [int(data.image(i)[0, 0, 0]) for i in (0, 9, 10)] == [1, 10, 11]


def test_urban1k_layout_errors(tmp_path):
  _urban1k(str(tmp_path), n=2)
  os.remove(tmp_path / "image" / "2.jpg")
  with pytest.raises(BenchmarkLayoutError, match="1 of 2 images are missing"):
    long_captions.urban1k(str(tmp_path))
  os.rename(tmp_path / "caption", tmp_path / "captions")
  with pytest.raises(BenchmarkLayoutError, match="Urban1k caption/ folder"):
    long_captions.urban1k(str(tmp_path))


@pytest.mark.parametrize("name", ["sharegpt4v", "urban1k"])
def test_demo_sets_read_back(tmp_path, name):
  spec = demo_dataset.DemoSpec(num_classes=4, test_per_class=3)
  folder = retllm_sets.write(name, str(tmp_path / name), spec, count=6)
  data = benchmarks.load(name, folder)
  assert data.num_images == data.num_captions == 6
  split = demo_dataset.DemoSplit(spec, "test")
  first = split[0]
  assert data.captions[0].startswith(first["text"]) and "\n" not in data.captions[0]
  assert len(data.captions[0].split()) > 20  # long captions
  img = data.image(0)
  assert img.shape == first["image"].shape
  assert np.abs(img.astype(int) - first["image"]).mean() < 12  # JPEG of the demo image
