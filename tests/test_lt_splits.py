"""Split logic on the real OLTR lists (tests/fixtures/lt_splits and the package's copies) and CIFAR-100-LT."""

import numpy as np
import pytest

from retformer_jax.data import base
from retformer_jax.data import cifar100_lt
from retformer_jax.data import lt_lists
from retformer_jax.data import places_lt


def _buckets(counts):
  b = base.shot_buckets(counts, many_above=100, few_below=20)
  return [int((b == i).sum()) for i in range(3)]


def test_places_lt_train_profile(lt_splits_dir):
  train = lt_lists.read_list("Places_LT_train.txt", str(lt_splits_dir))
  counts = np.bincount(train.labels, minlength=365)
  assert len(train) == 62_500 and len(counts) == 365
  assert counts.max() == 4_980 and counts.min() == 5
  assert _buckets(counts) == [131, 163, 71]


def test_places_lt_val_test_sizes(lt_splits_dir):
  val = lt_lists.read_list("Places_LT_val.txt", str(lt_splits_dir))
  test = lt_lists.read_list("Places_LT_test.txt", str(lt_splits_dir))
  assert len(val) == 7_300 and set(np.bincount(val.labels, minlength=365)) == {20}
  assert len(test) == 36_500 and set(np.bincount(test.labels, minlength=365)) == {100}


def test_places_lists_shipped_with_the_package_equal_the_real_ones(lt_splits_dir):
  for filename in lt_lists.PLACES_LT_LISTS.values():
    shipped = lt_lists.read_list(filename)
    real = lt_lists.read_list(filename, str(lt_splits_dir))
    assert shipped.paths == real.paths
    np.testing.assert_array_equal(shipped.labels, real.labels)


def test_places_lt_numbering_is_consistent_and_named(lt_splits_dir):
  lists = [lt_lists.read_list(f, str(lt_splits_dir)) for f in lt_lists.PLACES_LT_LISTS.values()]
  dirs = lt_lists.class_dirs(lists[0], 365)
  assert all(lt_lists.class_dirs(lst, 365) == dirs for lst in lists[1:])
  keys = [k for k, _ in lt_lists.read_classnames("places365_classnames.txt")]
  assert sorted(dirs) == sorted(keys)
  # OLTR's numbering differs from Places365's for five classes (the reader maps between them)
  assert sum(a != b for a, b in zip(dirs, keys)) == 5
  assert dirs[116] == "desert_road" and keys[116] == "desert-sand"
  names = places_lt.class_names(dirs)
  assert names[8] == "apartment building outdoor" and names[116] == "desert road"


def test_places_keys_match_tfds_file_names(lt_splits_dir):
  train = lt_lists.read_list("Places_LT_train.txt", str(lt_splits_dir))
  test = lt_lists.read_list("Places_LT_test.txt", str(lt_splits_dir))
  train_keys = [lt_lists.places_key_from_list(p) for p in train.paths]
  assert len(set(train_keys)) == len(train_keys)
  assert lt_lists.places_key_from_list("train/apartment_building-outdoor/00000794.jpg") == \
      lt_lists.places_key_from_tfds("data_256/a/apartment_building/outdoor/00000794.jpg")
  assert lt_lists.places_key_from_list(test.paths[0]) == lt_lists.places_key_from_tfds(
      "val_256/" + test.paths[0].split("/")[-1])
  with pytest.raises(ValueError, match="Places-LT list path"):
    lt_lists.places_key_from_list("airfield/00000001.jpg")


def test_imagenet_lt_val_test_sizes(lt_splits_dir):
  val = lt_lists.read_list("ImageNet_LT_val.txt", str(lt_splits_dir))
  test = lt_lists.read_list("ImageNet_LT_test.txt", str(lt_splits_dir))
  assert len(val) == 20_000 and set(np.bincount(val.labels, minlength=1000)) == {20}
  assert len(test) == 50_000 and set(np.bincount(test.labels, minlength=1000)) == {50}
  wnids = [k for k, _ in lt_lists.read_classnames("imagenet_classnames.txt")]
  assert all(wnids[label] == p.split("/")[1] for label, p in zip(test.labels, test.paths))


def test_inat2018_val_size(lt_splits_dir):
  val = lt_lists.read_list("iNaturalist18_val.txt", str(lt_splits_dir))
  assert len(val) == 24_426
  assert len(np.unique(val.labels)) == 8_142 and val.labels.min() == 0
  assert val.labels.max() == 8_141


def test_lists_not_shipped_need_the_lists_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="lt_splits_dir"):
    lt_lists.read_list("ImageNet_LT_test.txt")
  with pytest.raises(FileNotFoundError, match="Places_LT_train.txt"):
    lt_lists.read_list("Places_LT_train.txt", str(tmp_path))


def test_malformed_list_line_is_named():
  with pytest.raises(ValueError, match=r"bad.txt:2"):
    lt_lists.parse_list("a/b.jpg 1\na/c.jpg x\n", "bad.txt")


def test_cifar100_lt_profile():
  counts = cifar100_lt.lt_counts()
  assert counts[0] == 500 and counts[-1] == 5 and counts.sum() == 10_847
  assert _buckets(counts) == [35, 35, 30]


def test_cifar100_lt_subset_from_a_label_array():
  rng = np.random.default_rng(1)
  labels = rng.permutation(np.repeat(np.arange(100), 500))
  original = np.arange(len(labels))
  counts = cifar100_lt.lt_counts()
  rows = cifar100_lt.lt_indices(labels, original, counts, seed=0)
  assert len(rows) == 10_847 and len(np.unique(rows)) == 10_847
  np.testing.assert_array_equal(np.bincount(labels[rows], minlength=100), counts)
  assert _buckets(np.bincount(labels[rows], minlength=100)) == [35, 35, 30]
  np.testing.assert_array_equal(rows, cifar100_lt.lt_indices(labels, original, counts, seed=0))
  assert not np.array_equal(rows, cifar100_lt.lt_indices(labels, original, counts, seed=1))
  # seed-0 shuffle: not simply the first images of each class
  first = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(counts)])
  assert not np.array_equal(np.sort(rows), np.sort(first))


def test_cifar100_lt_too_few_images_is_an_error():
  with pytest.raises(ValueError, match="class 1 has 3 images"):
    cifar100_lt.lt_indices(np.array([0] * 10 + [1] * 3), np.arange(13), np.array([5, 4]))


def test_readable_class_names():
  cases = {
      "apartment_building-outdoor": "apartment building outdoor",  # Places-LT list directory
      "apartment_building/outdoor": "apartment building outdoor",  # TFDS places365_small
      "/a/apartment_building/outdoor": "apartment building outdoor",  # Places365 category file
      "aquarium_fish": "aquarium fish",  # CIFAR-100
      "n01440764": "tench",  # ImageNet wnid -> its shipped name
      "n01688243": "frilled-necked lizard",
      "Mercedes-Benz C-Class Sedan 2012": "Mercedes-Benz C-Class Sedan 2012",  # already text
      "Hermodice carunculata": "Hermodice carunculata",
      "  sea   _lion ": "sea lion",
  }
  assert {k: lt_lists.readable(k) for k in cases} == cases
  for text in cases.values():
    assert lt_lists.readable(text) == text  # idempotent on what it produces
  with pytest.raises(ValueError, match="'n99999999' is a WordNet id"):
    lt_lists.readable("n99999999")
  with pytest.raises(ValueError, match="'_/_' has no words"):
    lt_lists.readable("_/_")


def test_readable_wnids_are_the_imagenet_readers_names():
  from retformer_jax.data import imagenet_lt

  wnids = [w for w, _ in lt_lists.read_classnames("imagenet_classnames.txt")]
  assert [lt_lists.readable(w) for w in wnids] == imagenet_lt.imagenet_class_names(wnids)
