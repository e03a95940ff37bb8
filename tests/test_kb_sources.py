"""Source layouts read from small fixtures: webdataset tars, clip-retrieval embeddings, demo."""

import io
import json
import os
import tarfile

import numpy as np
import pytest

from configs import common
from retformer_jax.kb import layout, sources


def _png(rgb, size=(12, 10)):
  from PIL import Image

  buf = io.BytesIO()
  Image.new("RGB", size, rgb).save(buf, format="PNG")
  return buf.getvalue()


def write_wds(folder, shards, corrupt_key=None):
  """shards: list of lists of (key, rgb, caption, use_json)."""
  os.makedirs(folder, exist_ok=True)
  for si, items in enumerate(shards):
    with tarfile.open(os.path.join(folder, f"{si:05d}.tar"), "w") as tf:
      for key, rgb, caption, use_json in items:
        data = b"\xff\xd8 not a jpeg" if key == corrupt_key else _png(rgb)
        files = [(f"{key}.{'jpg' if key == corrupt_key else 'png'}", data)]
        if use_json:
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
  assert layout.parse_source("downstream", d) == layout.labelled("demo", "train")
  assert layout.parse_source("demo:val", d).name == "demo:val"
  s = layout.parse_source("cc=wds:/data/cc3m/", d)
  assert (s.name, s.kind, s.path) == ("cc", "wds", "/data/cc3m")
  assert layout.parse_source("clipret:/x/laion400m", d).name == "emb-laion400m"
  for bad in ("wds:", "nonsense", "a b=wds:/x", "/abs/path"):
    with pytest.raises(layout.SourceSpecError):
      layout.parse_source(bad, d)
  c.kb.sources = ("downstream", "demo:train")
  with pytest.raises(layout.SourceSpecError, match="more than once"):
    layout.kb_sources(c)
  c.data.eval_splits = ("test", "train", "val")
  c.train.eval_split = ""
  assert layout.query_splits(c) == ["train", "test", "val"]
  c.train.eval_split = "val"
  assert layout.query_splits(c) == ["train", "val", "test"]


def test_webdataset_source(tmp_path):
  folder = str(tmp_path / "wds")
  write_wds(folder, [[("000000010", (255, 0, 0), "a red one", False),
                      ("000000011", (0, 255, 0), "a green one", True)],
                     [("000000012", (0, 0, 255), "blue", False),
                      ("000000013", (9, 9, 9), "broken", False)]], corrupt_key="000000013")
  src = sources.WebDatasetSource(layout.parse_source(f"wds:{folder}", None))
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
    sources.WebDatasetSource(layout.parse_source(f"wds:{tmp_path}", None))


def test_webdataset_non_numeric_keys_get_positions(tmp_path):
  folder = str(tmp_path / "wds")
  write_wds(folder, [[("cat", (1, 2, 3), "x", False), ("dog", (4, 5, 6), "y", False)]])
  src = sources.WebDatasetSource(layout.parse_source(f"wds:{folder}", None))
  assert [src[i]["id"] for i in range(2)] == [0, 1]


def test_clip_retrieval_source(tmp_path):
  folder = str(tmp_path / "emb")
  parts = write_clipret(folder, [5, 3, 4])
  src = sources.PrecomputedSource(layout.parse_source(f"clipret:{folder}", None))
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
    sources.PrecomputedSource(layout.parse_source(f"clipret:{folder}", None))
  with pytest.raises(sources.SourceLayoutError, match="clip-retrieval layout"):
    sources.PrecomputedSource(layout.parse_source(f"clipret:{tmp_path}", None))


def test_labelled_source_uses_captions_then_prompts():
  c = common.get_config()
  c.data.demo.num_classes = 3
  c.data.demo.max_per_class = 4
  src = sources.open_source(layout.parse_source("downstream", c.data), c)
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
  with pytest.raises(sources.CorruptExampleError, match="uint8"):
    sources.check_image(np.zeros((4, 4), np.uint8), "x")


def test_any_prepared_tfds_classification_set(tmp_path):
  import tensorflow_datasets as tfds

  import fake_tfds

  names = ["apple pie", "bibimbap", "churros"]
  features = {"image": tfds.features.Image(shape=(None, None, 3)),
              "label": tfds.features.ClassLabel(names=names)}
  records = [{"image": fake_tfds.image(i), "label": i % 3} for i in range(5)]
  fake_tfds.write(tmp_path / "tfds", "food_mini", "1.0.0", features, {"train": records})
  c = common.get_config()
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  c.data.cache_dir = str(tmp_path / "cache")
  spec = layout.parse_source("tfds:food_mini:train", c.data)
  assert (spec.kind, spec.dataset, spec.split, spec.name) == ("tfds", "food_mini", "train",
                                                               "tfds:food_mini:train")
  src = sources.open_source(spec, c)
  assert len(src) == 5 and src.kind == "tfds"
  examples = [src[i] for i in range(5)]  # TFDS stores records in its own (hashed) order
  assert sorted(e["label"] for e in examples) == [0, 0, 1, 1, 2]
  assert [e["id"] for e in examples] == list(range(5))
  for e in examples:
    assert e["text"] == f"a photo of a {names[e['label']]}."
    assert e["image"].dtype == np.uint8 and e["image"].shape == (6, 7, 3)
  assert src.fingerprint()["version"] == "1.0.0"
  with pytest.raises(layout.SourceSpecError, match="no split 'test'"):
    sources.open_source(layout.parse_source("tfds:food_mini:test", c.data), c)
  with pytest.raises(layout.SourceSpecError, match="tfds:<name>:<split>"):
    layout.parse_source("tfds:food_mini", c.data)
