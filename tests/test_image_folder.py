"""`--config.data.name=image_folder`: a folder of class folders is a data set; unreadable files
are left out and listed; it trains and evaluates end to end through main."""

from __future__ import annotations

import json
import logging
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

import main_in_process
from configs import common
from retformer_jax.data import base, image_folder, registry

# Per split, images per class (train is long-tailed: Many / Medium / Few at thresholds 4 / 2).
LAYOUT = {"train": {"red_fox": 6, "grey_owl": 3, "blue_jay": 1}, "test": {"red_fox": 2,
                                                                         "grey_owl": 2,
                                                                         "blue_jay": 2}}
COLOURS = {"red_fox": (200, 40, 30), "grey_owl": (120, 120, 120), "blue_jay": (30, 60, 210)}


def _write_png(path, colour, seed):
  rng = np.random.default_rng(seed)
  pixels = np.clip(np.asarray(colour) + rng.integers(-20, 20, (14, 12, 3)), 0, 255)
  Image.fromarray(pixels.astype(np.uint8)).save(path)


def make_folder(root, layout=LAYOUT, broken=True, captions=True) -> str:
  """The LAYOUT as PNGs; with `broken`, train/red_fox/notes.jpg is not an image and
  train/grey_owl/cut.png is a PNG cut short (its header opens, its pixels do not)."""
  seed = 0
  for split, classes in layout.items():
    for name, count in classes.items():
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in range(count):
        seed += 1
        _write_png(os.path.join(root, split, name, f"{i:02d}.png"), COLOURS[name], seed)
  if broken:
    with open(os.path.join(root, "train", "red_fox", "notes.jpg"), "wb") as f:
      f.write(b"not an image at all")
    whole = os.path.join(root, "train", "grey_owl", "00.png")
    with open(whole, "rb") as f:
      data = f.read()
    with open(os.path.join(root, "train", "grey_owl", "cut.png"), "wb") as f:
      f.write(data[:len(data) // 2])
  if captions:
    with open(os.path.join(root, "captions.jsonl"), "w") as f:
      f.write(json.dumps({"path": "train/red_fox/00.png", "caption": "a red fox at dawn"}) + "\n")
      f.write("\n")
      f.write(json.dumps({"path": os.path.join(root, "train/blue_jay/00.png"),
                          "caption": "a blue jay on a branch"}) + "\n")
  return os.fspath(root)


def _data_config(root, **kw) -> ml_collections.ConfigDict:
  c = common.get_config().data
  c.name, c.root = "image_folder", os.fspath(root)
  for k, v in kw.items():
    c[k] = v
  return c


def test_reader_classes_counts_captions_and_unreadable_files(tmp_path, caplog):
  root = make_folder(tmp_path / "images")
  with caplog.at_level(logging.WARNING):
    data = registry.load(_data_config(root))
  assert data.class_names == ["blue jay", "grey owl", "red fox"]  # folder order, readable
  # notes.jpg is left out of the counts; cut.png opens (its header is whole) and is counted,
  # to be skipped by the embed stage when its pixels fail to decode.
  np.testing.assert_array_equal(data.train_counts, [1, 4, 6])
  assert sorted(data.splits) == ["test", "train"]
  assert "train/red_fox/notes.jpg" in caplog.text and "1 files" in caplog.text
  train = data.splits["train"]
  texts = dict(zip(train.paths, train.texts))
  assert train[train.paths.index("train/red_fox/00.png")]["text"] == "a red fox at dawn"
  assert texts["train/red_fox/00.png"] == "a red fox at dawn"
  assert texts["train/blue_jay/00.png"] == "a blue jay on a branch"  # absolute path in the file
  assert texts["train/red_fox/01.png"] == ""  # no caption: the class prompt is used
  ex = data.splits["test"][0]
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (14, 12, 3)
  assert ex["label"] == 0 and ex["id"] == 0
  np.testing.assert_array_equal(data.splits["test"].labels, [0, 0, 1, 1, 2, 2])
  with pytest.raises(ValueError, match="cut.png"):
    train[train.paths.index("train/grey_owl/cut.png")]
  buckets = base.shot_buckets(data.train_counts, many_above=4, few_below=2)
  np.testing.assert_array_equal(buckets, [2, 1, 0])  # Few, Medium, Many


def test_optional_val_split_and_max_examples(tmp_path):
  layout = dict(LAYOUT, val={"red_fox": 1, "blue_jay": 1})
  root = make_folder(tmp_path / "images", layout, broken=False, captions=False)
  data = registry.load(_data_config(root, max_examples=2))
  assert sorted(data.splits) == ["test", "train", "val"]
  assert len(data.splits["val"]) == 2 and data.train_counts.sum() == 2


@pytest.mark.parametrize("change, message", [
    ("no_root", "is not a folder"),
    ("unknown_test_class", "that"),
    ("no_test", "no split folder"),
    ("bad_caption", "line 1"),
    ("empty_class", "hold no readable image"),
])
def test_layout_mistakes_are_one_line_errors(tmp_path, change, message):
  root = make_folder(tmp_path / "images", broken=False, captions=False)
  cfg = _data_config(root)
  if change == "no_root":
    cfg.root = os.fspath(tmp_path / "nope")
  elif change == "unknown_test_class":
    os.makedirs(os.path.join(root, "test", "zebra"))
  elif change == "no_test":
    cfg.eval_splits = ("test", "holdout")
  elif change == "bad_caption":
    with open(os.path.join(root, "captions.jsonl"), "w") as f:
      f.write('{"path": "train/red_fox/00.png"}\n')
  elif change == "empty_class":
    os.makedirs(os.path.join(root, "train", "zebra"))
  with pytest.raises(image_folder.ImageFolderError, match=message) as e:
    registry.load(cfg)
  assert "\n" not in str(e.value)


def test_trains_and_evaluates_end_to_end_through_main(tmp_path, monkeypatch, capsys):
  root = make_folder(tmp_path / "images")
  clip = main_in_process.tiny_clip(tmp_path / "clip", ["red fox", "grey owl", "blue jay",
                                                       "a red fox at dawn",
                                                       "a blue jay on a branch"])
  workdir = tmp_path / "work"
  code, out, err = main_in_process.run(
      monkeypatch, capsys, "--config=configs/image_folder.py:runlocal", f"--workdir={workdir}",
      f"--config.data.root={root}", f"--config.clip.path={clip}", *main_in_process.FAST)
  assert code == 0, err
  metrics = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  assert metrics["num_examples"] == 6
  assert all(metrics[b] is not None for b in ("many", "medium", "few"))
  assert "[eval image_folder:test]" in out
  manifest = json.loads((workdir / "store" / "image_folder:train" / "manifest.json").read_text())
  assert manifest["count"] == 11 - 1  # 10 readable-looking training files, cut.png skipped
  assert [s["reason"] for s in manifest["skipped"]] == ["unreadable"]
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["root"] == root and config["data"]["name"] == "image_folder"
