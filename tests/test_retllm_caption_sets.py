"""Readers of the RetLLM test sets, on tiny Karpathy fixtures written here."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from retformer_jax.retllm import caption_sets


def _write_karpathy(root, *, with_filepath: bool, n_test=3, n_train=2, sentences=5):
  images = []
  for i in range(n_test + n_train):
    split = "test" if i < n_test else "train"
    sub = "val2014" if with_filepath else ""
    name = f"img_{i}.png"
    os.makedirs(os.path.join(root, "imgs", sub), exist_ok=True)
    arr = np.full((6 + i, 9, 3), 20 * i, np.uint8)
    Image.fromarray(arr).save(os.path.join(root, "imgs", sub, name))
    entry = {"filename": name, "split": split, "imgid": i,
             "sentences": [{"raw": f" cap {i}.{j} "} for j in range(sentences + (i == 1))]}
    if with_filepath:
      entry["filepath"] = sub
    images.append(entry)
  path = os.path.join(root, "dataset.json")
  with open(path, "w") as f:
    json.dump({"images": images, "dataset": "x"}, f)
  return path, os.path.join(root, "imgs")


@pytest.mark.parametrize("with_filepath", [False, True])
def test_karpathy_test_split(tmp_path, with_filepath):
  js, imgs = _write_karpathy(str(tmp_path), with_filepath=with_filepath)
  data = caption_sets.karpathy(js, imgs, split="test", name="flickr30k")
  assert data.num_images == 3 and data.num_captions == 15
  # image 1 has 6 sentences: only the first 5 are kept.
  assert data.captions[5:10] == [f"cap 1.{j}" for j in range(5)]
  np.testing.assert_array_equal(data.caption_image, np.repeat(np.arange(3), 5))
  img = data.image(2)
  assert img.dtype == np.uint8 and img.shape == (8, 9, 3) and int(img[0, 0, 0]) == 40
  assert [list(c) for c in data.image_captions()] == [list(range(5 * i, 5 * i + 5))
                                                       for i in range(3)]
  with pytest.raises(IndexError):
    data.image(3)


def test_karpathy_errors_name_the_fix(tmp_path):
  js, imgs = _write_karpathy(str(tmp_path), with_filepath=False)
  with pytest.raises(caption_sets.CaptionSetError, match="karpathy_json"):
    caption_sets.karpathy(str(tmp_path / "nope.json"), imgs)
  with pytest.raises(caption_sets.CaptionSetError, match="data_dir"):
    caption_sets.karpathy(js, str(tmp_path / "no_images"))
  with pytest.raises(caption_sets.CaptionSetError, match="splits present"):
    caption_sets.karpathy(js, imgs, split="val")
  os.remove(os.path.join(imgs, "img_0.png"))
  with pytest.raises(caption_sets.CaptionSetError, match="1 of 3 images .* missing"):
    caption_sets.karpathy(js, imgs)
  with pytest.raises(caption_sets.CaptionSetError, match="fewer than 7"):
    caption_sets.karpathy(js, imgs, captions_per_image=7)


def test_tfds_style_records_and_subset():
  records = [{"image": np.full((4, 5, 3), i, np.uint8),
              "captions": {"text": np.array([f"c{i}{j}".encode() for j in range(6)], object),
                           "id": np.arange(6)}} for i in range(4)]
  data = caption_sets.from_caption_records(records, name="coco_captions")
  assert data.num_captions == 20 and data.captions[5] == "c10"
  assert int(data.image(3)[0, 0, 0]) == 3
  small = caption_sets.subset(data, 2)
  assert small.num_images == 2 and small.num_captions == 10
  np.testing.assert_array_equal(small.caption_image, np.repeat([0, 1], 5))
  assert caption_sets.subset(data, 0) is data


def test_coco_tfds_reads_a_prepared_array_record_build(tmp_path):
  import shutil

  import tensorflow_datasets as tfds

  import fake_tfds

  recs = [{"image": fake_tfds.image(i), "image/filename": f"COCO_val2014_{i}.jpg",
           "captions": {"text": [f"cap {i} {j}" for j in range(5 + (i == 0))],
                        "id": list(range(5 + (i == 0)))}} for i in range(3)]
  feats = {"image": tfds.features.Image(), "image/filename": tfds.features.Text(),
           "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64})}
  built = fake_tfds.write(tmp_path / "build", "coco_captions", "1.1.0", feats,
                          {"test": recs, "val": recs[:1]})
  # TFDS lays a builder config out as NAME/CONFIG/VERSION.
  os.makedirs(tmp_path / "tfds" / "coco_captions" / "2014")
  shutil.move(built, tmp_path / "tfds" / "coco_captions" / "2014" / "1.1.0")
  data = caption_sets.coco_tfds(str(tmp_path / "tfds"), split="test")
  assert data.num_images == 3 and data.num_captions == 15
  for i in range(3):
    caps = [data.captions[j] for j in np.flatnonzero(data.caption_image == i)]
    owner = int(caps[0].split()[1])
    assert caps == [f"cap {owner} {j}" for j in range(5)]
    img = data.image(i)
    assert img.dtype == np.uint8 and img.shape == (6, 7, 3)
    with Image.open(io.BytesIO(fake_tfds.image(owner))) as expected:
      np.testing.assert_array_equal(img, np.asarray(expected.convert("RGB")))
  with pytest.raises(FileNotFoundError, match="tfds build coco_captions/2014"):
    caption_sets.coco_tfds(str(tmp_path / "empty"))


def test_demo_set_pairs_each_image_with_its_caption():
  import ml_collections

  from configs import common

  demo_cfg = common.get_config().data.demo
  data = caption_sets.demo(demo_cfg)
  assert data.num_images == demo_cfg.num_classes * demo_cfg.test_per_class
  assert data.num_captions == data.num_images
  assert isinstance(data.captions[0], str) and data.image(0).dtype == np.uint8
  assert isinstance(demo_cfg, ml_collections.ConfigDict)
