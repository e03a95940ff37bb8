"""`--config.data.name=tfds --config.data.tfds_name=NAME[/CONFIG][:VERSION]`: any prepared TFDS
image-classification set is a data set (label names from its features, long-tail counts from
its training split), and trains and evaluates end to end through main."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import fake_tfds
import main_in_process
from configs import common
from retformer_jax.data import registry, tfds_source

NAMES = ["red_rose", "white_lily", "sun_flower"]
TRAIN = [0] * 6 + [1] * 3 + [2] * 1
TEST = [0, 0, 1, 1, 2, 2]


def _prepare(data_dir, name="flowers_mini", version="1.2.0", config="", extra_split=False):
  features = {"image": tfds.features.Image(shape=(None, None, 3)),
              "label": tfds.features.ClassLabel(names=NAMES)}
  records = lambda labels, off: [{"image": fake_tfds.image(off + i, size=10), "label": l}  # noqa
                                 for i, l in enumerate(labels)]
  splits = {"train": records(TRAIN, 0), "test": records(TEST, 100)}
  if extra_split:
    splits["validation"] = records([2, 1], 200)
  return fake_tfds.write(data_dir, name, version, features, splits, config=config)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  _prepare(d, extra_split=True)
  _prepare(d, version="1.0.0")
  _prepare(d, name="petals", config="small")
  return d


def _data_config(data_dir, tmp_path, **kw) -> ml_collections.ConfigDict:
  c = common.get_config().data
  c.name, c.tfds_data_dir, c.cache_dir = "tfds", str(data_dir), str(tmp_path / "cache")
  for k, v in kw.items():
    c[k] = v
  return c


def test_label_names_counts_and_splits(data_dir, tmp_path):
  data = registry.load(_data_config(data_dir, tmp_path, tfds_name="flowers_mini"))
  assert data.class_names == ["red rose", "white lily", "sun flower"]
  np.testing.assert_array_equal(data.train_counts, [6, 3, 1])
  assert sorted(data.splits) == ["test", "train"]
  np.testing.assert_array_equal(np.sort(data.splits["test"].labels), sorted(TEST))
  ex = data.splits["test"][0]
  assert ex["image"].shape == (10, 11, 3) and ex["text"] == ""
  assert data.splits["train"].dataset.version == "1.2.0"  # the newest prepared


def test_version_config_and_other_splits(data_dir, tmp_path):
  old = registry.load(_data_config(data_dir, tmp_path, tfds_name="flowers_mini:1.0.0"))
  assert old.splits["train"].dataset.version == "1.0.0"
  small = registry.load(_data_config(data_dir, tmp_path, tfds_name="petals/small"))
  assert small.num_classes == 3
  val = registry.load(_data_config(data_dir, tmp_path, tfds_name="flowers_mini",
                                   train_split="test", eval_splits=("validation",)))
  np.testing.assert_array_equal(val.train_counts, [2, 2, 2])  # from the training split named
  assert sorted(val.splits) == ["test", "validation"]


@pytest.mark.parametrize("kw, error, message", [
    ({"tfds_name": ""}, tfds_source.TfdsNameError, "needs --config.data.tfds_name"),
    ({"tfds_name": "flowers_mini:1.0"}, tfds_source.TfdsNameError, "NAME"),
    ({"tfds_name": "nope"}, tfds_source.DataNotPreparedError, "tfds build nope"),
    ({"tfds_name": "flowers_mini", "eval_splits": ("val",)}, tfds_source.DataNotPreparedError,
     "no split"),
])
def test_mistakes_name_the_fix(data_dir, tmp_path, kw, error, message):
  with pytest.raises(error, match=message):
    registry.load(_data_config(data_dir, tmp_path, **kw))


def test_a_set_without_class_labels_is_refused(tmp_path):
  fake_tfds.coco_captions(tmp_path / "d", [["a cat"], ["a dog"]])
  with pytest.raises(tfds_source.TfdsNameError, match="image-classification"):
    registry.load(_data_config(tmp_path / "d", tmp_path, tfds_name="coco_captions/2014",
                               train_split="test", eval_splits=("test",)))


def test_trains_and_evaluates_end_to_end_through_main(data_dir, tmp_path, monkeypatch, capsys):
  clip = main_in_process.tiny_clip(tmp_path / "clip", ["red rose", "white lily", "sun flower"])
  workdir = tmp_path / "work"
  code, out, err = main_in_process.run(
      monkeypatch, capsys, "--config=configs/image_folder.py:runlocal", f"--workdir={workdir}",
      "--config.data.name=tfds", "--config.data.tfds_name=flowers_mini:1.2.0",
      f"--config.data.tfds_data_dir={data_dir}", f"--config.data.cache_dir={tmp_path / 'c'}",
      f"--config.clip.path={clip}", *main_in_process.FAST)
  assert code == 0, err
  metrics = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  assert metrics["num_examples"] == len(TEST) and metrics["step"] > 0
  assert all(metrics[b] is not None for b in ("many", "medium", "few"))
  assert "[eval tfds:test]" in out
  store = json.loads((workdir / "store" / "tfds:train" / "manifest.json").read_text())
  assert store["count"] == len(TRAIN)
