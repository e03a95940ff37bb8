"""CIFAR-100-LT picks the reference (LDAM / LIFT) subset, whatever order TFDS stores records in."""

import numpy as np
import pytest

from retformer_jax.data import cifar100_lt


def reference_subset(original_labels, counts, seed=0):
  """The reference recipe on the original train file: IMBALANCECIFAR100.gen_imbalanced_data."""
  state = np.random.get_state()
  try:
    np.random.seed(seed)
    targets = np.array(original_labels, dtype=np.int64)
    selected = []
    for the_class, the_img_num in zip(np.unique(targets), counts):
      idx = np.where(targets == the_class)[0]
      np.random.shuffle(idx)
      selected.append(idx[:the_img_num])
    return np.concatenate(selected)
  finally:
    np.random.set_state(state)


def original_cifar_labels(seed=1):
  """50,000 labels, 500 per class, in a fixed (random) file order."""
  return np.random.default_rng(seed).permutation(np.repeat(np.arange(100), 500))


def as_tfds_stores_them(original_labels, seed):
  """(labels, ids) of the records in a shuffled storage order, ids as TFDS writes them."""
  order = np.random.default_rng(seed).permutation(len(original_labels))  # record -> original
  return original_labels[order], np.asarray([f"train_{i:05d}" for i in order])


def test_subset_is_the_reference_selection_on_the_original_order():
  original = original_cifar_labels()
  counts = cifar100_lt.lt_counts()
  want = reference_subset(original, counts)
  assert len(want) == 10_847
  labels, ids = as_tfds_stores_them(original, seed=7)
  index = cifar100_lt.original_indices(ids)
  rows = cifar100_lt.lt_indices(labels, index, counts, seed=0)
  np.testing.assert_array_equal(index[rows], want)  # same images, same order
  np.testing.assert_array_equal(labels[rows], np.repeat(np.arange(100), counts))
  # Drawing in storage order instead picks other images for most classes.
  stored_order = np.arange(len(labels))
  naive = cifar100_lt.lt_indices(labels, stored_order, counts, seed=0)
  assert len(np.intersect1d(index[naive], want)) < 0.75 * len(want)


def test_subset_does_not_depend_on_the_storage_order():
  original = original_cifar_labels(seed=3)
  counts = cifar100_lt.lt_counts()
  picked = []
  for seed in (11, 12):
    labels, ids = as_tfds_stores_them(original, seed)
    index = cifar100_lt.original_indices(ids)
    picked.append(index[cifar100_lt.lt_indices(labels, index, counts)])
  np.testing.assert_array_equal(picked[0], picked[1])


def test_ids_must_be_original_train_indices():
  with pytest.raises(ValueError, match=r"record 1 has id 'tr0_1', expected 'train_NNNNN'"):
    cifar100_lt.original_indices(["train_00000", "tr0_1"])
  labels = np.array([0, 0, 1, 1])
  with pytest.raises(ValueError, match="not 0..N-1, each once"):
    cifar100_lt.lt_indices(labels, np.array([0, 1, 1, 3]), np.array([2, 1]))
  with pytest.raises(ValueError, match="4 original indices for 3 labels"):
    cifar100_lt.lt_indices(labels[:3], np.arange(4), np.array([2, 1]))


def test_a_short_class_is_an_error_naming_it():
  labels = np.repeat(np.arange(4), 20)
  assert cifar100_lt.class_size(labels, 4) == 20
  short = np.delete(labels, [45, 46, 47, 70])  # class 2 loses 3 images, class 3 one
  with pytest.raises(ValueError, match=r"class 2 \('baby'\) has 17 images while others have 20 "
                     r"\(2 classes short\)"):
    cifar100_lt.class_size(short, 4, ["apple", "aquarium fish", "baby", "bear"])
  with pytest.raises(ValueError, match="has label 4 but only 4 classes"):
    cifar100_lt.class_size(np.append(labels, 4), 4)
