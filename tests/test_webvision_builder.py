"""WebVision builder: parsing of the manual download (pure) and a full build + read (no TF)."""

import io
import json

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import fake_tfds
from configs import common
from retformer_jax.data import lt_lists
from retformer_jax.data import registry
from retformer_jax.data import webvision_builder as wb

WNIDS = [k for k, _ in lt_lists.read_classnames("imagenet_classnames.txt")]


def _jpeg(seed, mode="RGB"):
  rng = np.random.default_rng(seed)
  array = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(array).convert(mode).save(out, format="JPEG")
  return out.getvalue()


def _manual_dir(root):
  """A WebVision 1.0 layout with 4 Google + 3 Flickr training images and 2 val images."""
  files = {
      "info/train_filelist_google.txt": "google/q0001/000000.jpg 0\ngoogle/q0001/000001.jpg 0\n"
                                        "google/q0002/000000.jpg 5\ngoogle/q0002/000001.jpg 5\n",
      "info/train_meta_list_google.txt": "google/q0001.json 1\ngoogle/q0001.json 2\n"
                                         "google/q0002.json 2\ngoogle/q0002.json 1\n",
      "info/train_filelist_flickr.txt": "flickr/q0003/000000.jpg 999\nflickr/q0003/000001.jpg 999\n"
                                        "flickr/q0003/000002.jpg 7\n",
      "info/train_meta_list_flickr.txt": "flickr/q0003.json 1\nflickr/q0003.json 2\n"
                                         "flickr/q0003.json 3\n",
      "info/val_filelist.txt": "val000001.jpg 3\nval000002.jpg 999\n",
  }
  meta = {
      "google/q0001.json": [{"title": "A <b>tench</b> caught", "description": "big\n fish  today",
                             "tags": ["x"]},
                            {"title": "second", "description": ""}],
      "google/q0002.json": [{"title": "same", "description": "same"}, {"description": "only d"}],
      "flickr/q0003.json": [{"title": "", "description": None, "tags": ["a"]},
                            {"title": "grey"}, {"title": "broken"}],
  }
  images = {"google/q0001/000000.jpg": _jpeg(1), "google/q0001/000001.jpg": _jpeg(2),
            "google/q0002/000000.jpg": _jpeg(3), "google/q0002/000001.jpg": _jpeg(4),
            "flickr/q0003/000000.jpg": fake_tfds.image(5),  # a PNG named .jpg
            "flickr/q0003/000001.jpg": _jpeg(6, "L"),
            "flickr/q0003/000002.jpg": b"not an image",
            "val_images_256/val000001.jpg": _jpeg(7), "val_images_256/val000002.jpg": _jpeg(8)}
  for rel, text in files.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
  for rel, entries in meta.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(json.dumps(entries))
  for rel, data in images.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
  return root


def test_web_text_joins_title_and_description():
  assert wb.web_text({"title": "A <b>tench</b>", "description": "big\n fish "}) == \
      "A tench. big fish"
  assert wb.web_text({"title": "same", "description": "same"}) == "same"
  assert wb.web_text({"description": None, "tags": ["a"]}) == ""
  assert len(wb.web_text({"title": "w " * 2000})) == wb.MAX_TEXT_CHARS


def test_lists_parse_and_bad_lines_fail():
  assert wb.parse_filelist("google/q0001/000000.jpg 3\n", "f") == [("google/q0001/000000.jpg", 3)]
  assert wb.parse_meta_list("google/q0001.json 2\n", "m") == [("google/q0001.json", 1)]
  with pytest.raises(ValueError, match="start at 1"):
    wb.parse_meta_list("google/q0001.json 0\n", "m")
  assert wb.parse_synsets("n01440764 tench, Tinca tinca\nn01443537 goldfish\n") == [
      "n01440764", "n01443537"]


def test_records_of_a_manual_download(tmp_path):
  root = _manual_dir(tmp_path)
  train = list(wb.train_records(str(root), WNIDS))
  assert [k for k, _ in train][:2] == ["google/q0001/000000.jpg", "google/q0001/000001.jpg"]
  texts = {k: r["text"] for k, r in train}
  assert texts["google/q0001/000000.jpg"] == "A tench caught. big fish today"
  assert texts["google/q0002/000000.jpg"] == "only d"  # entry 2 of q0002.json
  assert texts["google/q0002/000001.jpg"] == "same"
  assert [r["label"] for _, r in train] == [0, 0, 5, 5, 999, 999, 7]
  assert [r["source"] for _, r in train] == ["google"] * 4 + ["flickr"] * 3
  val = list(wb.val_records(str(root), WNIDS))
  assert [(k, r["label"], r["text"]) for k, r in val] == [("val000001.jpg", 3, ""),
                                                         ("val000002.jpg", 999, "")]
  assert val[0][1]["path"] == str(root / "val_images_256" / "val000001.jpg")


def test_synsets_file_reorders_labels(tmp_path):
  root = _manual_dir(tmp_path)
  theirs = list(reversed(WNIDS))
  (root / "info" / "synsets.txt").write_text("".join(f"{w} name\n" for w in theirs))
  val = list(wb.val_records(str(root), WNIDS))
  assert [r["label"] for _, r in val] == [WNIDS.index(theirs[3]), WNIDS.index(theirs[999])]


def test_inconsistent_download_is_explained(tmp_path):
  root = _manual_dir(tmp_path)
  (root / "info" / "train_meta_list_flickr.txt").write_text("flickr/q0003.json 1\n")
  with pytest.raises(ValueError, match="has 3 lines but .* has 1"):
    list(wb.train_records(str(root), WNIDS, sources=("flickr",)))
  (root / "info" / "train_meta_list_flickr.txt").write_text(
      "flickr/q0003.json 1\nflickr/q0003.json 2\nflickr/q0003.json 9\n")
  with pytest.raises(ValueError, match="has 3 entries"):
    list(wb.train_records(str(root), WNIDS, sources=("flickr",)))
  (root / "info" / "val_filelist.txt").unlink()
  with pytest.raises(FileNotFoundError, match="val_filelist.txt"):
    list(wb.val_records(str(root), WNIDS))


def test_jpeg_bytes(tmp_path):
  root = _manual_dir(tmp_path)
  original = (root / "google/q0001/000000.jpg").read_bytes()
  assert wb.jpeg_bytes(str(root / "google/q0001/000000.jpg")) == original
  for rel in ("flickr/q0003/000000.jpg", "flickr/q0003/000001.jpg"):  # PNG, greyscale JPEG
    with Image.open(io.BytesIO(wb.jpeg_bytes(str(root / rel)))) as img:
      assert img.format == "JPEG" and img.mode == "RGB"
  assert wb.jpeg_bytes(str(root / "flickr/q0003/000002.jpg")) is None
  assert wb.jpeg_bytes(str(root / "missing.jpg")) is None


def test_build_then_read_through_the_registry(tmp_path):
  root = _manual_dir(tmp_path / "manual")
  data_dir = tmp_path / "tfds"
  builder = wb.Webvision(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  assert builder.info.splits["train"].num_examples == 6  # the corrupt image is skipped
  wnids_features = {"image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=WNIDS),
                    "file_name": tfds.features.Text()}
  fake_tfds.write(data_dir, "imagenet2012", "5.1.0", wnids_features, {"validation": [
      {"image": fake_tfds.image(i), "label": 10 * i, "file_name": f"v{i}.JPEG"}
      for i in range(3)]})

  c = common.get_config()
  c.data.name = "webvision"
  c.data.tfds_data_dir = str(data_dir)
  c.data.cache_dir = str(tmp_path / "cache")
  c.data.eval_splits = ("val", "imagenet_val")
  data = registry.load(c.data)
  assert len(data.class_names) == 1000 and data.class_names[0] == "tench"
  assert data.train_counts[[0, 5, 999]].tolist() == [2, 2, 2] and data.train_counts.sum() == 6
  train = data.splits["train"]
  got = {}
  for i in range(len(train)):
    ex = train[i]
    assert ex["id"] == i and ex["image"].dtype == np.uint8
    assert ex["image"].shape in {(9, 11, 3), (6, 7, 3)}  # JPEGs, and the PNG named .jpg
    got[ex["text"]] = ex["label"]
  assert got == {"A tench caught. big fish today": 0, "second": 0, "only d": 5, "same": 5,
                 "": 999, "grey": 999}
  assert sorted(data.splits["val"].labels.tolist()) == [3, 999]
  assert data.splits["val"][0]["text"] == ""
  assert sorted(data.splits["imagenet_val"].labels.tolist()) == [0, 10, 20]



def test_imagenet_val_is_opened_on_first_use(tmp_path):
  root = _manual_dir(tmp_path / "manual")
  wb.main([f"--manual_dir={root}", f"--data_dir={tmp_path / 'tfds'}"])
  c = common.get_config()
  c.data.name = "webvision"
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  c.data.cache_dir = str(tmp_path / "cache")
  data = registry.load(c.data)  # trains without ImageNet prepared
  assert len(data.splits["val"]) == 2
  with pytest.raises(FileNotFoundError, match="tfds build imagenet2012 --manual_dir="):
    len(data.splits["imagenet_val"])
  c.data.max_examples = 4  # a smoke run's subset does not open it either
  small = registry.load(c.data)
  assert len(small.splits["train"]) == 4 and small.train_counts.sum() == 4


def test_missing_webvision_names_the_tf_free_command(tmp_path):
  c = common.get_config()
  c.data.name = "webvision"
  c.data.tfds_data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError) as e:
    registry.load(c.data)
  assert "python -m retformer_jax.data.webvision_builder --manual_dir=" in str(e.value)
  assert "[prep]" not in str(e.value)


def test_command_line_prepares_the_data_set(tmp_path):
  root = _manual_dir(tmp_path / "manual")
  wb.main([f"--manual_dir={root}", f"--data_dir={tmp_path / 'tfds'}"])
  assert (tmp_path / "tfds" / "webvision" / "1.0.0" / "dataset_info.json").exists()
