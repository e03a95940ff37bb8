"""The generated demo set: deterministic, random access, long-tailed, learnable, noisy on demand."""

import numpy as np
import pytest

from configs import common
from retformer_jax.data import base
from retformer_jax.demo import dataset as demo


def _spec(**kw):
  return demo.DemoSpec(**kw)


def test_counts_follow_exponential_profile():
  spec = _spec(num_classes=20, max_per_class=200, imbalance=50.0)
  counts = demo.train_counts(spec)
  assert counts[0] == 200 and counts[-1] == 4
  assert np.all(np.diff(counts) <= 0)
  ds = demo.load(common.get_config().data.demo)
  assert len(ds.splits["train"]) == counts.sum()
  np.testing.assert_array_equal(np.bincount(ds.splits["train"].labels), ds.train_counts)
  assert len(ds.splits["test"]) == 20 * 30


def test_random_access_is_deterministic_and_independent():
  a, b = demo.DemoSplit(_spec(), "train"), demo.DemoSplit(_spec(), "train")
  for i in (0, 7, len(a) - 1):
    x, y = a[i], b[i]
    np.testing.assert_array_equal(x["image"], y["image"])
    assert (x["text"], x["label"], x["id"]) == (y["text"], y["label"], i)
  assert not np.array_equal(a[0]["image"], a[1]["image"])
  assert not np.array_equal(a[0]["image"], demo.DemoSplit(_spec(seed=1), "train")[0]["image"])
  with pytest.raises(IndexError):
    a[len(a)]
  with pytest.raises(ValueError, match="choose one of"):
    demo.DemoSplit(_spec(), "dev")


def test_examples_follow_schema_and_captions_name_the_class():
  split = demo.DemoSplit(_spec(image_size=24), "test")
  names = demo.class_names(_spec())
  ex = split[45]
  assert ex["image"].shape == (24, 24, 3) and ex["image"].dtype == np.uint8
  assert names[ex["label"]] in ex["text"]
  assert len(set(names)) == len(names)


def test_label_noise_flips_the_requested_fraction_and_keeps_text_truthful():
  split = demo.DemoSplit(_spec(label_noise=0.3), "train")
  flipped = split.labels != split.true_labels
  assert 0.25 < flipped.mean() < 0.35
  i = int(np.flatnonzero(flipped)[0])
  names = demo.class_names(_spec())
  assert names[split.true_labels[i]] in split[i]["text"]
  clean = demo.DemoSplit(_spec(), "test")
  assert np.array_equal(clean.labels, clean.true_labels)


def test_images_carry_learnable_class_structure():
  """A nearest-class-mean classifier on raw pixels beats chance by far, but is not perfect."""
  spec = _spec(num_classes=10)
  train, test = demo.DemoSplit(spec, "val"), demo.DemoSplit(spec, "test")
  feats = lambda s: np.stack([s[i]["image"].reshape(-1) / 255.0 for i in range(len(s))])
  xtr, xte = feats(train), feats(test)
  means = np.stack([xtr[train.labels == c].mean(0) for c in range(10)])
  pred = np.argmin(((xte[:, None] - means[None]) ** 2).sum(-1), 1)
  acc = (pred == test.labels).mean()
  assert 0.3 < acc, acc


def test_bad_spec_is_a_clear_error():
  with pytest.raises(ValueError, match="label_noise"):
    _spec(label_noise=1.5)
  with pytest.raises(ValueError, match="num_classes"):
    _spec(num_classes=1)


def test_shot_buckets():
  np.testing.assert_array_equal(base.shot_buckets(np.array([101, 100, 20, 19, 5]), 100, 20),
                                [0, 1, 1, 2, 2])
