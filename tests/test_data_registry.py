"""Data readers end to end on tiny prepared TFDS data sets (array_record, written without TF)."""

import concurrent.futures
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import fake_tfds
from configs import common
from retformer_jax.data import image_decode
from retformer_jax.data import lt_lists
from retformer_jax.data import registry
from retformer_jax.data import tfds_source
from retformer_jax.data.tfds_source import PreparedDataset
from retformer_jax.demo import dataset as demo
from test_cifar100_lt_subset import reference_subset


def _data_config(tmp_path, name, **overrides):
  c = common.get_config()
  c.data.name = name
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  c.data.cache_dir = str(tmp_path / "cache")
  c.data.num_workers = 2
  for k, v in overrides.items():
    c.data[k] = v
  return c.data


def _decoded(data: bytes) -> bytes:
  return image_decode.decode_image(data).tobytes()


def _check_schema(source, index):
  ex = source[index]
  assert set(ex) == {"image", "label", "text", "id"}
  assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3 and ex["image"].shape[2] == 3
  assert ex["id"] == index and ex["label"] == source.labels[index]
  return ex


def test_unknown_data_set_lists_the_choices(tmp_path):
  with pytest.raises(ValueError, match="places_lt"):
    registry.load(_data_config(tmp_path, "places-lt"))


def test_demo_through_the_registry(tmp_path):
  data = registry.load(_data_config(tmp_path, "demo"))
  ref = demo.load(common.get_config().data.demo)
  assert data.class_names == ref.class_names
  np.testing.assert_array_equal(data.train_counts, ref.train_counts)
  np.testing.assert_array_equal(data.splits["test"][3]["image"], ref.splits["test"][3]["image"])


def test_missing_prepared_data_names_the_command(tmp_path):
  with pytest.raises(tfds_source.DataNotPreparedError) as e:
    registry.load(_data_config(tmp_path, "places_lt"))
  msg = str(e.value)
  assert "tfds build places365_small --file_format=array_record" in msg
  assert "retformer_jax[prep]" in msg and str(tmp_path / "tfds") in msg


CIFAR_NAMES = ["apple", "aquarium_fish", "baby", "bear"]


def _write_cifar(tmp_path, per_class=20, test_per_class=3, drop=()):
  """A 4-class cifar100 whose original train order interleaves the classes; `drop` removes
  original train records. Returns (original train labels, decoded image -> original index)."""
  rng = np.random.default_rng(5)
  train = np.delete(rng.permutation(np.repeat(np.arange(4), per_class)), list(drop))
  test = np.repeat(np.arange(4), test_per_class)
  fake_tfds.cifar100(tmp_path / "tfds", train, test, CIFAR_NAMES)
  return train, {_decoded(fake_tfds.image(i)): i for i in range(len(train))}


def test_cifar100_lt_end_to_end(tmp_path, monkeypatch):
  original_labels, original_of = _write_cifar(tmp_path)
  cfg = _data_config(tmp_path, "cifar100_lt", lt_imbalance=4.0)
  scans = []
  real_scan = PreparedDataset.scan
  monkeypatch.setattr(PreparedDataset, "scan",
                      lambda self, split, fields, n: scans.append((split, sorted(fields))) or
                      real_scan(self, split, fields, n))
  data = registry.load(cfg)
  assert scans == [("train", ["id", "label"]), ("test", ["label"])]  # one pass per split
  assert data.class_names == ["apple", "aquarium fish", "baby", "bear"]
  expected = [int(20 * 0.25 ** (c / 3)) for c in range(4)]  # [20, 12, 7, 5]
  np.testing.assert_array_equal(data.train_counts, expected)
  train, test = data.splits["train"], data.splits["test"]
  assert len(train) == sum(expected) and len(test) == 12
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=4), expected)
  picked = []
  for i in range(len(train)):
    ex = _check_schema(train, i)
    index = original_of[ex["image"].tobytes()]
    assert ex["text"] == "" and original_labels[index] == ex["label"]
    picked.append(index)
  # The reference recipe on the original file order: the same images, in the same order.
  np.testing.assert_array_equal(picked, reference_subset(original_labels, expected))
  stored = tfds_source.open_prepared("cifar100", cfg.tfds_data_dir, "").scan("train", ["id"], 1)
  assert stored["id"] != sorted(stored["id"])  # TFDS did store the records shuffled
  fresh = registry.load(cfg).splits["train"]  # read concurrently, as the decoding threads do
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    parallel = list(pool.map(lambda i: fresh[i]["image"].tobytes(), range(len(fresh))))
  assert parallel == [train[i]["image"].tobytes() for i in range(len(train))]
  test_images = {_decoded(fake_tfds.image(-1 - i)): c for i, c in enumerate(np.repeat(range(4), 3))}
  assert all(test_images[_check_schema(test, i)["image"].tobytes()] == test.labels[i]
             for i in range(len(test)))
  # The label and id scans are cached: a second load reads no record.
  monkeypatch.setattr(PreparedDataset, "scan", lambda *a, **k: pytest.fail("rescanned"))
  again = registry.load(cfg)
  np.testing.assert_array_equal(again.splits["train"].labels, train.labels)
  assert sorted(again.splits) == ["test", "train"]


def test_cifar100_lt_with_a_short_class_is_an_error(tmp_path):
  original_labels, _ = _write_cifar(tmp_path)
  bear = np.flatnonzero(original_labels == 3)[:2]
  _write_cifar(tmp_path / "short", drop=bear)
  with pytest.raises(ValueError, match=r"class 3 \('bear'\) has 18 images while others have 20"):
    registry.load(_data_config(tmp_path / "short", "cifar100_lt", lt_imbalance=4.0))


def _places_tfds_names():
  return [k.replace("-", "/") for k, _ in lt_lists.read_classnames("places365_classnames.txt")]


def test_places_lt_end_to_end(tmp_path, lt_splits_dir):
  dirs = lt_lists.class_dirs(lt_lists.read_list("Places_LT_train.txt", str(lt_splits_dir)), 365)
  tfds_label = {n: i for i, n in enumerate(_places_tfds_names())}
  lists_dir = tmp_path / "lists"
  lists_dir.mkdir()
  lines = {"train": [], "val": [], "test": []}
  tfds_train, tfds_val, expected = [], [], {}
  for c, d in enumerate(dirs):
    for i in range(3 if d == "desert_road" else 1):
      for split, number in (("train", 10 * i), ("val", 10 * i + 5)):
        if split == "val" and i:
          continue
        lines[split].append(f"train/{d}/{number:08d}.jpg {c}")
        data = fake_tfds.image(100 * c + number)
        expected[(split, len(lines[split]) - 1)] = _decoded(data)
        path = d.replace("-", "/")
        tfds_train.append({"image": data, "label": tfds_label[path],
                           "filename": f"data_256/{d[0]}/{path}/{number:08d}.jpg"})
    name = f"Places365_val_{c + 1:08d}.jpg"
    lines["test"].append(f"val/{d}/{name} {c}")
    data = fake_tfds.image(-1 - c)
    expected[("test", len(lines["test"]) - 1)] = _decoded(data)
    tfds_val.append({"image": data, "label": tfds_label[d.replace("-", "/")],
                     "filename": f"val_256/{name}"})
  # records no list names
  tfds_train.append({"image": fake_tfds.image(7), "label": 0,
                     "filename": "data_256/a/airfield/99999999.jpg"})
  tfds_val.append({"image": fake_tfds.image(8), "label": 3,
                   "filename": "val_256/Places365_val_99999999.jpg"})
  for split, split_lines in lines.items():
    (lists_dir / f"Places_LT_{split}.txt").write_text("\n".join(split_lines) + "\n")
  features = {"image": tfds.features.Image(shape=(None, None, 3)),
              "label": tfds.features.ClassLabel(names=_places_tfds_names()),
              "filename": tfds.features.Text()}
  fake_tfds.write(tmp_path / "tfds", "places365_small", "2.1.0", features,
                  {"train": tfds_train, "validation": tfds_val})

  data = registry.load(_data_config(tmp_path, "places_lt", lt_splits_dir=str(lists_dir),
                                    eval_splits=("val", "test")))
  assert len(data.class_names) == 365 and data.class_names[116] == "desert road"
  assert data.train_counts[116] == 3 and data.train_counts.sum() == 367
  assert [len(data.splits[s]) for s in ("train", "val", "test")] == [367, 365, 365]
  for (split, i), image in expected.items():
    ex = _check_schema(data.splits[split], i)
    assert ex["image"].tobytes() == image, (split, i)
    assert ex["label"] == int(lines[split][i].split()[1])

  (lists_dir / "Places_LT_test.txt").write_text(
      "\n".join(lines["test"] + ["val/airfield/Places365_val_77777777.jpg 0"]) + "\n")
  with pytest.raises(ValueError, match="1 of 366 Places_LT_test.txt entries are not in"):
    registry.load(_data_config(tmp_path, "places_lt", lt_splits_dir=str(lists_dir),
                               cache_dir=str(tmp_path / "cache2")))


def _imagenet_features():
  wnids = [k for k, _ in lt_lists.read_classnames("imagenet_classnames.txt")]
  return {"image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=wnids), "file_name": tfds.features.Text()}


def _records(labels, seed):
  return [{"image": fake_tfds.image(seed + i, grey=i == 0), "label": int(l),
           "file_name": f"f{seed + i}.JPEG"} for i, l in enumerate(labels)]


def test_imagenet_lt_end_to_end(tmp_path):
  fake_tfds.write(tmp_path / "tfds", "imagenet_lt", "1.0.0", _imagenet_features(),
                  {"train": _records([0, 0, 0, 5, 999], 0), "validation": _records([1, 2], 100),
                   "test": _records([3, 4, 5], 200)})
  data = registry.load(_data_config(tmp_path, "imagenet_lt", eval_splits=("val", "test")))
  assert len(data.class_names) == 1000 and data.class_names[0] == "tench"
  assert data.train_counts[[0, 5, 999]].tolist() == [3, 1, 1] and data.train_counts.sum() == 5
  assert sorted(data.splits["val"].labels.tolist()) == [1, 2]
  assert sorted(data.splits["test"].labels.tolist()) == [3, 4, 5]
  for split in ("train", "val", "test"):
    for i in range(len(data.splits[split])):
      _check_schema(data.splits[split], i)  # includes a greyscale PNG, decoded to RGB


def test_imagenet_lt_in_another_class_order_is_an_error(tmp_path):
  features = _imagenet_features()
  features["label"] = tfds.features.ClassLabel(names=list(reversed(features["label"].names)))
  fake_tfds.write(tmp_path / "tfds", "imagenet_lt", "1.0.0", features,
                  {"train": _records([0], 0), "validation": _records([1], 9),
                   "test": _records([2], 19)})
  with pytest.raises(ValueError, match="sorted wnid"):
    registry.load(_data_config(tmp_path, "imagenet_lt"))


def test_inat2018_uses_validation_as_test(tmp_path):
  names = ["Hermodice carunculata", "Phragmatopoma californica", "Eudistylia vancouveri"]
  features = {"id": tfds.features.Text(), "image": tfds.features.Image(shape=(None, None, 3)),
              "label": tfds.features.ClassLabel(names=names),
              "supercategory": tfds.features.ClassLabel(names=["Annelida"])}
  rec = lambda i, l: {"id": f"k{i}", "image": fake_tfds.image(i), "label": l, "supercategory": 0}
  fake_tfds.write(tmp_path / "tfds", "i_naturalist2018", "1.0.0", features,
                  {"train": [rec(i, i % 3) for i in range(7)],
                   "validation": [rec(50 + i, 2) for i in range(2)]})
  data = registry.load(_data_config(tmp_path, "inat2018"))
  assert data.class_names == names and data.train_counts.tolist() == [3, 2, 2]
  assert sorted(data.splits) == ["test", "train"] and data.splits["test"].labels.tolist() == [2, 2]
  _check_schema(data.splits["test"], 1)


def test_data_prepared_as_tfrecord_is_explained(tmp_path):
  path = fake_tfds.write(tmp_path / "tfds", "i_naturalist2018", "1.0.0",
                         {"label": tfds.features.ClassLabel(names=["a"])},
                         {"train": [{"label": 0}]})
  info_path = os.path.join(path, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  info["fileFormat"] = "tfrecord"
  info.pop("alternativeFileFormats", None)
  with open(info_path, "w") as f:
    json.dump(info, f)
  with pytest.raises(tfds_source.DataNotPreparedError, match="convert_format"):
    registry.load(_data_config(tmp_path, "inat2018"))


def test_max_examples_keeps_an_evenly_spaced_subset(tmp_path):
  full = registry.load(_data_config(tmp_path, "demo"))
  small = registry.load(_data_config(tmp_path, "demo", max_examples=40))
  train = small.splits["train"]
  assert [len(small.splits[s]) for s in ("train", "val", "test")] == [40, 40, 40]
  assert [train[i]["id"] for i in range(40)] == list(range(40))
  assert all(train[i]["label"] == train.labels[i] for i in range(40))
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=20), small.train_counts)
  assert train.labels[0] == 0 and train.labels[-1] == 19  # spans the whole split
  last = full.splits["train"][len(full.splits["train"]) - 1]
  np.testing.assert_array_equal(train[39]["image"], last["image"])
