"""A reader of one's own, written here, registered with `registry.register`, trains and evaluates
through main as the README's "Your own data" shows."""

from __future__ import annotations

import json

import numpy as np
import pytest

import main_in_process
from retformer_jax.data import base, registry

CLASSES = ["circle", "square"]


class ColourSplit:
  """Random access over generated images: class 0 reddish, class 1 bluish."""

  def __init__(self, labels, seed):
    self.labels = np.asarray(labels, np.int64)
    self._seed = seed

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    label = int(self.labels[index])
    rng = np.random.default_rng([self._seed, index])
    image = rng.integers(0, 60, (12, 12, 3), dtype=np.uint8)
    image[..., 0 if label == 0 else 2] += 180
    return {"image": image, "label": label, "text": f"a drawn {CLASSES[label]}", "id": index}


def load_colours(data_config) -> base.LabelledSplits:
  """The reader: what `--config.data.name=colours` reads."""
  train = ColourSplit([0] * 8 + [1] * 3, seed=0)
  return base.LabelledSplits(
      name="colours", class_names=CLASSES,
      train_counts=np.bincount(train.labels, minlength=2).astype(np.int64),
      splits={"train": train, "test": ColourSplit([0, 1, 0, 1], seed=1)})


@pytest.fixture
def registered(monkeypatch):
  monkeypatch.setattr(registry, "READERS", dict(registry.READERS))  # undone after the test
  registry.register("colours", load_colours)


def test_registered_reader_trains_and_evaluates_through_main(registered, tmp_path, monkeypatch,
                                                             capsys):
  clip = main_in_process.tiny_clip(tmp_path / "clip", CLASSES + ["a drawn circle",
                                                                 "a drawn square"])
  workdir = tmp_path / "work"
  code, out, err = main_in_process.run(
      monkeypatch, capsys, "--config=configs/image_folder.py:runlocal", f"--workdir={workdir}",
      "--config.data.name=colours", f"--config.clip.path={clip}", *main_in_process.FAST)
  assert code == 0, err
  metrics = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  assert metrics["num_examples"] == 4
  assert "[eval colours:test]" in out
  store = json.loads((workdir / "store" / "colours:train" / "manifest.json").read_text())
  assert store["count"] == 11


def test_register_checks_its_arguments(registered):
  with pytest.raises(ValueError, match="name"):
    registry.register("a:b", load_colours)
  with pytest.raises(TypeError, match="load"):
    registry.register("x", 3)
  registry.register("by_path", "test_custom_reader:load_colours")  # "module:function"
  cfg = _data_config("by_path")
  assert registry.load(cfg).class_names == CLASSES


def test_a_reader_must_return_labelled_splits(registered):
  registry.register("bad", lambda data_config: {"train": []})
  with pytest.raises(TypeError, match="LabelledSplits"):
    registry.load(_data_config("bad"))


def _data_config(name):
  from configs import common

  c = common.get_config().data
  c.name = name
  return c
