"""SugarCrepe reader: data/<subset>.json over val2017/ images, hand-written and demo-written."""

from __future__ import annotations

import os

import pytest

from bench_fixtures import dump, image
from retformer_jax.demo import dataset as demo_dataset, retllm_sets
from retformer_jax.retllm import benchmarks
from retformer_jax.retllm.benchmarks import BenchmarkLayoutError, sugarcrepe


def _write(root, subsets=("swap_obj", "add_att")):
  for i in range(3):
    image(os.path.join(root, "val2017", f"{i:012d}.jpg"), 40 + i)
  for s in subsets:
    dump(os.path.join(root, "data", f"{s}.json"), {
        str(100 + i): {"filename": f"{i:012d}.jpg", "caption": f"{s} pos {i}",
                       "negative_caption": f"{s} neg {i}"} for i in range(3)})


def test_subsets_in_the_order_asked(tmp_path):
  _write(str(tmp_path))
  sets = benchmarks.load("sugarcrepe", str(tmp_path), subsets=["swap_obj", "add_att"])
  assert [s.subset for s in sets] == ["swap_obj", "add_att"]
  s = sets[0]
  assert len(s) == 3 and list(s.ids) == ["100", "101", "102"]
  pos, neg = s.choices(2)
  assert (pos.text, neg.text) == ("swap_obj pos 2", "swap_obj neg 2")
  assert int(s.image(1).load_image()[0, 0, 0]) == 41
  assert s.image_paths[0] == os.path.join(str(tmp_path), "val2017", "000000000000.jpg")


def test_layout_errors(tmp_path):
  _write(str(tmp_path))
  with pytest.raises(BenchmarkLayoutError, match=r"subset add_obj .*add_obj\.json. not found"):
    sugarcrepe.load(str(tmp_path))  # the default asks for all 7
  with pytest.raises(BenchmarkLayoutError, match="Unknown SugarCrepe subset 'swap'"):
    sugarcrepe.load(str(tmp_path), subsets=["swap"])
  os.remove(tmp_path / "val2017" / "000000000002.jpg")
  with pytest.raises(BenchmarkLayoutError, match="1 of 3 images are missing"):
    sugarcrepe.load(str(tmp_path), subsets=["add_att"])
  dump(str(tmp_path / "data" / "add_att.json"), {"7": {"filename": "x.jpg", "caption": "c"}})
  with pytest.raises(BenchmarkLayoutError, match="entry '7' has no 'negative_caption'"):
    sugarcrepe.load(str(tmp_path), subsets=["add_att"])
  os.rename(tmp_path / "val2017", tmp_path / "val2014")
  with pytest.raises(BenchmarkLayoutError, match="val2017/ folder"):
    sugarcrepe.load(str(tmp_path), subsets=["add_att"])


def test_demo_set_has_all_seven_subsets_with_real_negatives(tmp_path):
  spec = demo_dataset.DemoSpec(num_classes=4, test_per_class=3)
  folder = retllm_sets.write("sugarcrepe", str(tmp_path / "sc"), spec, count=5)
  sets = benchmarks.load("sugarcrepe", folder)
  assert [s.subset for s in sets] == list(sugarcrepe.SUBSETS)
  for s in sets:
    assert len(s) == 5
    assert all(p != n for p, n in zip(s.positives, s.negatives)), s.subset
  assert sets[0].image(0).load_image().shape == (32, 32, 3)
