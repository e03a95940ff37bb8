"""MMEB reader: MMEB-eval/<Subset>/*.parquet + eval_images/, hand-written and demo-written."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench_fixtures import image
from retformer_jax.demo import dataset as demo_dataset, retllm_sets
from retformer_jax.retllm import benchmarks
from retformer_jax.retllm.benchmarks import BenchmarkLayoutError, Item, mmeb


def _parquet(path, rows, drop=()):
  cols = {c: [r[c] for r in rows] for c in mmeb.COLUMNS if c not in drop}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(pa.table(cols), path)


def _write(root):
  image(os.path.join(root, "eval_images", "VisDial", "q0.jpg"), 5)
  image(os.path.join(root, "eval_images", "VisDial", "c1.jpg"), 6)
  rows = [
      {"qry_text": "<|image_1|>\nRepresent the image: what is it?",
       "qry_img_path": "VisDial/q0.jpg",
       "tgt_text": ["a dog", "a cat"], "tgt_img_path": ["", ""]},
      {"qry_text": "Find the image of a dog", "qry_img_path": "",
       "tgt_text": ["<|image_1|>\nRepresent the given image.", "<|image_1|> plain"],
       "tgt_img_path": ["VisDial/c1.jpg", "VisDial/q0.jpg"]},
  ]
  # Two parquet shards: rows are read in file-name order.
  _parquet(os.path.join(root, "MMEB-eval", "VisDial", "test-00000-of-00002.parquet"), rows[:1])
  _parquet(os.path.join(root, "MMEB-eval", "VisDial", "test-00001-of-00002.parquet"), rows[1:])
  _parquet(os.path.join(root, "MMEB-eval", "N24News", "test-00000-of-00001.parquet"),
           [{"qry_text": "headline", "qry_img_path": None, "tgt_text": ["sports"],
             "tgt_img_path": [""]}])


def test_table_has_the_36_subsets_in_four_meta_tasks():
  assert len(mmeb.SUBSETS) == 36
  counts = {t: sum(v == t for v in mmeb.SUBSET_META_TASK.values()) for t in mmeb.META_TASKS}
  assert counts == {"classification": 10, "vqa": 10, "retrieval": 12, "grounding": 4}
  assert mmeb.SUBSET_META_TASK["MSCOCO"] == "grounding"
  assert mmeb.SUBSET_META_TASK["MSCOCO_t2i"] == "retrieval"


def test_reads_mixed_items(tmp_path):
  _write(str(tmp_path))
  assert mmeb.present_subsets(str(tmp_path)) == ["N24News", "VisDial"]
  visdial, news = benchmarks.load("mmeb", str(tmp_path), subsets=["VisDial", "N24News"])
  assert (visdial.name, visdial.meta_task, len(visdial)) == ("VisDial", "retrieval", 2)
  assert news.meta_task == "classification" and not news.queries[0].has_image
  q0, q1 = visdial.queries
  assert q0.has_image and int(q0.load_image()[0, 0, 0]) == 5
  assert q0.segments() == [("image", ""), ("text", "Represent the image: what is it?")]
  assert q0.plain_text == "Represent the image: what is it?"
  assert not q1.has_image and q1.segments() == [("text", "Find the image of a dog")]
  assert [c.text for c in visdial.candidates[0]] == ["a dog", "a cat"]
  assert visdial.positive(0) == 0
  assert [len(c) for c in visdial.candidates[0:2]] == [2, 2]
  pos = visdial.candidates[1][0]
  assert pos.image.endswith(os.path.join("eval_images", "VisDial", "c1.jpg"))
  assert int(pos.load_image()[0, 0, 0]) == 6


def test_segments_put_the_image_where_the_placeholder_is():
  assert Item(text="before <|image_1|> after", image="x").segments() == [
      ("text", "before"), ("image", ""), ("text", "after")]
  assert Item(text="no placeholder", image="x").segments() == [
      ("image", ""), ("text", "no placeholder")]
  assert Item(text="<|image_1|> dropped").segments() == [("text", "dropped")]
  assert Item(image="x").segments() == [("image", "")]


def test_layout_errors(tmp_path):
  with pytest.raises(BenchmarkLayoutError, match="MMEB-eval/ folder"):
    mmeb.load(str(tmp_path))
  _write(str(tmp_path))
  with pytest.raises(BenchmarkLayoutError, match="ImageNet-1K: no MMEB-eval/ImageNet-1K"):
    mmeb.load(str(tmp_path))  # the default asks for all 36
  with pytest.raises(BenchmarkLayoutError, match="Unknown MMEB subset 'Flickr'"):
    mmeb.load(str(tmp_path), subsets=["Flickr"])
  os.remove(tmp_path / "eval_images" / "VisDial" / "c1.jpg")
  with pytest.raises(BenchmarkLayoutError, match="1 of 2 images are missing"):
    mmeb.load(str(tmp_path), subsets=["VisDial"])
  _parquet(str(tmp_path / "MMEB-eval" / "N24News" / "test-00000-of-00001.parquet"),
           [{"qry_text": "h", "qry_img_path": "", "tgt_text": ["s"], "tgt_img_path": [""]}],
           drop=("tgt_img_path",))
  with pytest.raises(BenchmarkLayoutError, match="no column 'tgt_img_path'"):
    mmeb.load(str(tmp_path), subsets=["N24News"])
  _parquet(str(tmp_path / "MMEB-eval" / "N24News" / "test-00000-of-00001.parquet"),
           [{"qry_text": "h", "qry_img_path": "", "tgt_text": ["s", "t"], "tgt_img_path": [""]}])
  with pytest.raises(BenchmarkLayoutError, match="row 0: 2 tgt_text but 1 tgt_img_path"):
    mmeb.load(str(tmp_path), subsets=["N24News"])
  _parquet(str(tmp_path / "MMEB-eval" / "N24News" / "test-00000-of-00001.parquet"),
           [{"qry_text": "h", "qry_img_path": "", "tgt_text": [], "tgt_img_path": []}])
  with pytest.raises(BenchmarkLayoutError, match="query 0 has no candidates"):
    mmeb.load(str(tmp_path), subsets=["N24News"])


def test_demo_set_covers_every_meta_task(tmp_path):
  spec = demo_dataset.DemoSpec(num_classes=5, test_per_class=2)
  folder = retllm_sets.write("mmeb", str(tmp_path / "mmeb"), spec, count=6)
  assert mmeb.present_subsets(folder) == list(retllm_sets.MMEB_SUBSETS)
  tasks = benchmarks.load("mmeb", folder, subsets=mmeb.present_subsets(folder))
  assert {t.meta_task for t in tasks} == set(mmeb.META_TASKS)
  names = demo_dataset.class_names(spec)
  for t in tasks:
    assert len(t) == 6 and all(len(c) >= 2 for c in t.candidates)
  cls = tasks[0]
  assert cls.name == "ImageNet-1K" and cls.candidates[0][0].text in names
  assert sorted(c.text for c in cls.candidates[0]) == sorted(names)
  t2i = next(t for t in tasks if t.name == "MSCOCO_t2i")
  assert not t2i.queries[0].has_image and t2i.candidates[0][0].load_image().shape == (32, 32, 3)
  ground = tasks[-1]
  assert ground.meta_task == "grounding"
  assert ground.candidates[0][0].load_image().shape == (16, 16, 3)
