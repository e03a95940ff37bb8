"""Source layouts read from small fixtures: webdataset tars, clip-retrieval embeddings, demo."""

import io
import json
import os
import tarfile

import numpy as np
import pytest

from configs import common
from retformer_jax.data import lt_lists, tfds_source
from retformer_jax.kb import source_spec, sources


def _png(rgb, size=(12, 10)):
  from PIL import Image

  buf = io.BytesIO()
  Image.new("RGB", size, rgb).save(buf, format="PNG")
  return buf.getvalue()


def write_wds(folder, shards, corrupt_key=None):
  """shards: list of lists of (key, rgb, caption, use_json); caption None = no caption file."""
  os.makedirs(folder, exist_ok=True)
  for si, items in enumerate(shards):
    with tarfile.open(os.path.join(folder, f"{si:05d}.tar"), "w") as tf:
      for key, rgb, caption, use_json in items:
        data = b"\xff\xd8 not a jpeg" if key == corrupt_key else _png(rgb)
        files = [(f"{key}.{'jpg' if key == corrupt_key else 'png'}", data)]
        if caption is None:
          pass
        elif use_json:
          files.append((f"{key}.json", json.dumps({"caption": caption}).encode()))
        else:
          files.append((f"{key}.txt", caption.encode()))
        for name, blob in files:
          info = tarfile.TarInfo(name)
          info.size = len(blob)
          tf.addfile(info, io.BytesIO(blob))


def write_clipret(folder, parts, dim=8, seed=0, captions=True):
  rng = np.random.default_rng(seed)
  import pyarrow as pa
  import pyarrow.parquet as pq

  for sub in ("img_emb", "text_emb", "metadata"):
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
  out = []
  for i, n in enumerate(parts):
    img = rng.standard_normal((n, dim)).astype(np.float16)
    txt = rng.standard_normal((n, dim)).astype(np.float16)
    np.save(os.path.join(folder, "img_emb", f"img_emb_{i}.npy"), img)
    np.save(os.path.join(folder, "text_emb", f"text_emb_{i}.npy"), txt)
    caps = [f"cap {i}-{j}" for j in range(n)]
    cols = {"image_path": [f"{i}_{j}.jpg" for j in range(n)]}
    if captions:
      cols["caption"] = caps
    pq.write_table(pa.table(cols), os.path.join(folder, "metadata", f"metadata_{i}.parquet"))
    out.append((img, txt, caps))
  return out


def test_source_specs():
  c = common.get_config()
  d = c.data
  assert source_spec.parse_source("downstream", d) == source_spec.labelled("demo", "train")
  assert source_spec.parse_source("demo:val", d).name == "demo:val"
  s = source_spec.parse_source("cc=wds:/data/cc3m/", d)
  assert (s.name, s.kind, s.path) == ("cc", "wds", "/data/cc3m")
  assert source_spec.parse_source("clipret:/x/laion400m", d).name == "emb-laion400m"
  for bad in ("wds:", "nonsense", "a b=wds:/x", "/abs/path"):
    with pytest.raises(source_spec.SourceSpecError):
      source_spec.parse_source(bad, d)

  c.kb.sources = ("downstream", "demo:train")
  with pytest.raises(source_spec.SourceSpecError, match="more than once"):
    source_spec.kb_sources(c)
  c.data.eval_splits = ("test", "train", "val")
  c.train.eval_split = ""
  assert source_spec.query_splits(c) == ["train", "test", "val"]
  c.train.eval_split = "val"
  assert source_spec.query_splits(c) == ["train", "val", "test"]


def test_tfds_source_specs():
  d = common.get_config().data
  parse = lambda entry: source_spec.parse_source(entry, d)  # noqa: E731
  s = parse("tfds:food101:train")
  assert (s.name, s.kind, s.dataset, s.version, s.split) == ("tfds:food101:train", "tfds",
                                                             "food101", "", "train")
  s = parse("tfds:coco_captions/2014:test")
  assert (s.name, s.dataset, s.version, s.split) == ("tfds:coco_captions+2014:test",
                                                     "coco_captions/2014", "", "test")
  s = parse("tfds:cifar10_corrupted/fog_5:1.0.0:test")
  assert (s.name, s.dataset, s.version, s.split) == (
      "tfds:cifar10_corrupted+fog_5:1.0.0:test", "cifar10_corrupted/fog_5", "1.0.0", "test")
  s = parse("food=tfds:food101:2.0.0:validation")
  assert (s.name, s.dataset, s.version, s.split) == ("food", "food101", "2.0.0", "validation")
  for bad, why in (("tfds:food101", "a split is missing"),
                   ("tfds:food101:train[:10%]", "split slices are not supported"),
                   ("tfds:food101:1.0.0:train:x", "too many ':'"),
                   ("tfds:food101:1.0:train", "'1.0' is not a TFDS version"),
                   ("tfds:a/b/c:train", "'a/b/c' is not a TFDS name"),
                   ("tfds:Food101:train", "'Food101' is not a TFDS name"),
                   ("tfds:food101:1.0.0:", "'' is not a TFDS split"),
                   ("tfds::train", "'' is not a TFDS name")):
    with pytest.raises(source_spec.SourceSpecError) as e:
      parse(bad)
    msg = str(e.value)
    assert msg.startswith(f"KB source {bad!r}: ") and why in msg, msg
    assert "tfds:<name>[/<config>][:<version>]:<split>" in msg and "\n" not in msg


def test_webdataset_source(tmp_path):
  folder = str(tmp_path / "wds")
  write_wds(folder, [[("000000010", (255, 0, 0), "a red one", False),
                      ("000000011", (0, 255, 0), "a green one", True)],
                     [("000000012", (0, 0, 255), "blue", False),
                      ("000000013", (9, 9, 9), "broken", False)]], corrupt_key="000000013")
  src = sources.WebDatasetSource(source_spec.parse_source(f"wds:{folder}", None))
  assert len(src) == 4
  ex = src[1]
  assert ex["text"] == "a green one" and ex["id"] == 11 and ex["label"] == -1
  assert ex["image"].shape == (10, 12, 3) and ex["image"].dtype == np.uint8
  assert tuple(ex["image"][0, 0]) == (0, 255, 0)
  assert src[2]["text"] == "blue" and src[2]["id"] == 12
  with pytest.raises(sources.CorruptExampleError, match="00001.tar:000000013"):
    src[3]
  fp = src.fingerprint()
  assert fp["count"] == 4 and len(fp["tars"]) == 2
  with pytest.raises(sources.SourceLayoutError, match="no .tar"):
    sources.WebDatasetSource(source_spec.parse_source(f"wds:{tmp_path}", None))


def test_webdataset_non_numeric_keys_get_positions(tmp_path):
  folder = str(tmp_path / "wds")
  write_wds(folder, [[("cat", (1, 2, 3), "x", False), ("dog", (4, 5, 6), "y", False)]])
  src = sources.WebDatasetSource(source_spec.parse_source(f"wds:{folder}", None))
  assert [src[i]["id"] for i in range(2)] == [0, 1]


def test_webdataset_items_without_caption(tmp_path):
  folder = str(tmp_path / "wds")
  write_wds(folder, [[("a", (1, 2, 3), "fine", False), ("b", (4, 5, 6), None, False),
                      ("c", (7, 8, 9), "  \n", False), ("d", (1, 1, 1), "", True),
                      ("e", (2, 2, 2), "from json", True)]])
  spec = source_spec.parse_source(f"wds:{folder}", None)
  src = sources.WebDatasetSource(spec)  # default: skip
  assert len(src) == 5 and src[0]["text"] == "fine" and src[4]["text"] == "from json"
  for i, why in ((1, "no KEY.txt or KEY.json"), (2, "empty KEY.txt"),
                 (3, "no caption in KEY.json")):
    with pytest.raises(sources.MissingCaptionError, match=f"00000.tar:{'abcd'[i]}: no caption "
                       rf"\({why}\)") as e:
      src[i]
    assert e.value.reason == "missing_caption"
    assert isinstance(e.value, sources.CorruptExampleError)  # skipped like an unreadable image
  with pytest.raises(sources.FatalExampleError, match=r"1 items have no KEY.txt or KEY.json "
                     r"\(first: 00000.tar:b\).*missing_caption=skip"):
    sources.WebDatasetSource(spec, missing_caption="error")
  write_wds(folder, [[("a", (1, 2, 3), "fine", False), ("c", (7, 8, 9), " ", False)]])
  strict = sources.WebDatasetSource(spec, missing_caption="error")
  assert strict[0]["text"] == "fine"
  with pytest.raises(sources.FatalExampleError, match=r"00000.tar:c: no caption \(empty "
                     r"KEY.txt\); add one, or set --config.embed.missing_caption=skip"):
    strict[1]
  with pytest.raises(ValueError, match="missing_caption='drop'"):
    sources.WebDatasetSource(spec, missing_caption="drop")


def test_open_source_passes_the_missing_caption_setting(tmp_path):
  folder = str(tmp_path / "wds")
  write_wds(folder, [[("a", (1, 2, 3), None, False)]])
  c = common.get_config()
  assert c.embed.missing_caption == "skip"
  spec = source_spec.parse_source(f"wds:{folder}", c.data)
  assert sources.open_source(spec, c).missing_caption == "skip"
  c.embed.missing_caption = "error"
  with pytest.raises(sources.FatalExampleError, match="no KEY.txt or KEY.json"):
    sources.open_source(spec, c)


def test_clip_retrieval_source(tmp_path):
  folder = str(tmp_path / "emb")
  parts = write_clipret(folder, [5, 3, 4])
  src = sources.PrecomputedSource(source_spec.parse_source(f"clipret:{folder}", None))
  assert len(src) == 12 and src.dim == 8
  rows = src.read_rows(3, 10)  # spans all three files
  want_img = np.concatenate([p[0] for p in parts])[3:10].astype(np.float32)
  np.testing.assert_array_equal(rows["image"], want_img)
  np.testing.assert_array_equal(rows["text"],
                                np.concatenate([p[1] for p in parts])[3:10].astype(np.float32))
  assert rows["captions"] == ["cap 0-3", "cap 0-4", "cap 1-0", "cap 1-1", "cap 1-2", "cap 2-0",
                              "cap 2-1"]
  np.testing.assert_array_equal(rows["ids"], np.arange(3, 10))
  assert (rows["labels"] == -1).all()
  os.remove(os.path.join(folder, "text_emb", "text_emb_1.npy"))
  with pytest.raises(sources.SourceLayoutError, match="pair one-to-one"):
    sources.PrecomputedSource(source_spec.parse_source(f"clipret:{folder}", None))
  with pytest.raises(sources.SourceLayoutError, match="clip-retrieval layout"):
    sources.PrecomputedSource(source_spec.parse_source(f"clipret:{tmp_path}", None))


def test_labelled_source_uses_captions_then_prompts():
  c = common.get_config()
  c.data.demo.num_classes = 3
  c.data.demo.max_per_class = 4
  src = sources.open_source(source_spec.parse_source("downstream", c.data), c)
  ex = src[0]
  assert ex["image"].dtype == np.uint8 and ex["label"] == 0 and ex["id"] == 0
  assert ex["text"]  # the demo's caption

  class NoCaption:
    def __len__(self):
      return 1

    def __getitem__(self, i):
      return {"image": np.zeros((4, 4, 3), np.uint8), "label": 1, "text": "", "id": 7}

  src._split = NoCaption()
  assert src[0]["text"] == c.clip.prompt.format(name=src._names[1])

  class OutOfRange(NoCaption):
    def __getitem__(self, i):
      return dict(super().__getitem__(i), label=3)

  src._split = OutOfRange()
  with pytest.raises(sources.FatalExampleError, match=r"demo:train\[0\]: no caption and label 3 "
                     "is outside the 3 classes"):
    src[0]
  with pytest.raises(sources.CorruptExampleError, match="uint8"):
    sources.check_image(np.zeros((4, 4), np.uint8), "x")


def _tfds_classification(tmp_path, names, name="food_mini", version="1.0.0", config=""):
  import tensorflow_datasets as tfds

  import fake_tfds

  features = {"image": tfds.features.Image(shape=(None, None, 3)),
              "label": tfds.features.ClassLabel(names=names)}
  records = [{"image": fake_tfds.image(i), "label": i % len(names)} for i in range(5)]
  fake_tfds.write(tmp_path / "tfds", name, version, features, {"train": records}, config=config)
  c = common.get_config()
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  c.data.cache_dir = str(tmp_path / "cache")
  return c


def test_any_prepared_tfds_classification_set(tmp_path):
  names = ["apple_pie", "n01440764", "/b/bakery/shop"]  # a TFDS name, a wnid, a Places path
  readable = ["apple pie", "tench", "bakery shop"]
  c = _tfds_classification(tmp_path, names)
  spec = source_spec.parse_source("tfds:food_mini:train", c.data)
  assert (spec.kind, spec.dataset, spec.split, spec.name) == ("tfds", "food_mini", "train",
                                                               "tfds:food_mini:train")
  src = sources.open_source(spec, c)
  assert len(src) == 5 and src.kind == "tfds"
  examples = [src[i] for i in range(5)]  # TFDS stores records in its own (hashed) order
  assert sorted(e["label"] for e in examples) == [0, 0, 1, 1, 2]
  assert [e["id"] for e in examples] == list(range(5))
  for e in examples:
    assert e["text"] == f"a photo of a {readable[e['label']]}."
    assert e["image"].dtype == np.uint8 and e["image"].shape == (6, 7, 3)
  assert src.fingerprint()["version"] == "1.0.0"
  with pytest.raises(source_spec.SourceSpecError, match="no split 'test'"):
    sources.open_source(source_spec.parse_source("tfds:food_mini:test", c.data), c)


def test_tfds_source_text_uses_the_readers_clean_up(tmp_path):
  names = ["aquarium_fish", "apartment_building/outdoor", "n01688243"]
  c = _tfds_classification(tmp_path, names)
  src = sources.open_source(source_spec.parse_source("tfds:food_mini:train", c.data), c)
  texts = {src[i]["label"]: src[i]["text"] for i in range(5)}
  assert texts == {0: "a photo of a aquarium fish.", 1: "a photo of a apartment building outdoor.",
                   2: "a photo of a frilled-necked lizard."}
  assert [c.clip.prompt.format(name=lt_lists.readable(n)) for n in names] == [
      texts[i] for i in range(3)]
  bad = _tfds_classification(tmp_path / "bad", ["n99999999", "dog"], name="wnid_mini")
  with pytest.raises(sources.SourceLayoutError, match=r"Source 'tfds:wnid_mini:train': Class name "
                     "'n99999999' is a WordNet id"):
    sources.open_source(source_spec.parse_source("tfds:wnid_mini:train", bad.data), bad)


def test_tfds_source_with_a_config_and_a_version(tmp_path):
  c = _tfds_classification(tmp_path, ["fog"], name="corrupt_mini", version="1.0.0",
                           config="fog_5")
  _tfds_classification(tmp_path, ["fog", "snow"], name="corrupt_mini", version="1.1.0",
                       config="fog_5")
  newest = sources.open_source(source_spec.parse_source("tfds:corrupt_mini/fog_5:train", c.data), c)
  assert newest.fingerprint()["version"] == "1.1.0"
  assert newest.fingerprint()["dataset"] == "corrupt_mini/fog_5"
  pinned = sources.open_source(
      source_spec.parse_source("tfds:corrupt_mini/fog_5:1.0.0:train", c.data), c)
  assert pinned.fingerprint()["version"] == "1.0.0"
  assert {pinned[i]["text"] for i in range(5)} == {"a photo of a fog."}
  assert pinned.fingerprint()["class_names_sha256"] != newest.fingerprint()["class_names_sha256"]
  with pytest.raises(tfds_source.DataNotPreparedError,
                     match=r"no prepared version '2.0.0'.*it has \['1.0.0', '1.1.0'\]"):
    sources.open_source(source_spec.parse_source("tfds:corrupt_mini/fog_5:2.0.0:train", c.data), c)
  with pytest.raises(tfds_source.DataNotPreparedError,
                     match=r"It has builder configs \['fog_5'\]: name one as "
                     "'corrupt_mini/<config>'"):
    sources.open_source(source_spec.parse_source("tfds:corrupt_mini:train", c.data), c)


def test_tfds_source_needs_labels_or_captions(tmp_path):
  import tensorflow_datasets as tfds

  import fake_tfds

  # Neither a ClassLabel `label` nor captions (`captions` here holds ids, not text).
  features = {"image": tfds.features.Image(shape=(None, None, 3)), "image/id": np.int64,
              "captions": tfds.features.Sequence({"id": np.int64})}
  fake_tfds.write(tmp_path / "tfds", "boxes_mini", "1.1.0", features,
                  {"test": [{"image": fake_tfds.image(0), "image/id": 7,
                             "captions": [{"id": 1}]}]}, config="2014")
  c = common.get_config()
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  with pytest.raises(sources.SourceLayoutError) as e:
    sources.open_source(source_spec.parse_source("tfds:boxes_mini/2014:test", c.data), c)
  msg = str(e.value)
  assert msg.startswith("Source 'tfds:boxes_mini+2014:test': a TFDS source must be an "
                        "image-classification set (an Image 'image' and a ClassLabel 'label'), "
                        "or an image-caption set (an Image 'image' and 'captions' / 'caption'")
  assert msg.endswith("'boxes_mini/2014' has ['captions', 'image', 'image/id']. Other "
                      "image-text data: write webdataset shards, use a wds: source.")
