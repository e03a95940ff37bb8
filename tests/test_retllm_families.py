"""SugarCrepe, MMEB and classification runners on their demo sets (real readers) with a stand-in
encoder and MLLM: metrics follow the scores, CLIP rows follow the embeddings, chunks resume and
split across processes with the metrics of one process."""

from __future__ import annotations

import hashlib
import json
import os
import types

import numpy as np
import pytest

from retformer_jax.demo import dataset as demo_dataset, retllm_sets
from retformer_jax.retllm import (benchmarks, choice_eval, classify_eval, item_embed,
                                  item_scoring, mmeb_eval, pipeline)
from retformer_jax.retllm.benchmarks import Item

SPEC = demo_dataset.DemoSpec(num_classes=5, test_per_class=2)
SETTINGS = pipeline.Settings(top_k=3, chunk_size=2, scorer_identity="fake")


class HashEncoder:
  """Random unit vectors from a hash of the pixels / text (deterministic, unrelated to truth)."""

  identity = "hash-v1"

  def _vec(self, data: bytes):
    seed = int.from_bytes(hashlib.sha256(data).digest()[:4], "little")
    return np.random.default_rng(seed).normal(size=8)

  def embed_images(self, images):
    return np.stack([self._vec(np.asarray(im).tobytes()) for im in images])

  def embed_texts(self, texts):
    return np.stack([self._vec(t.encode()) for t in texts])


class Oracle:
  """Stands in for item_scoring.score: P(True) = 0.9 for the pairs `good(query, cand)` picks."""

  def __init__(self, good):
    self.good, self.pairs = good, 0

  def __call__(self, scorer, queries, cands, pairs, load=None):
    self.pairs += len(pairs)
    hit = np.asarray([self.good(queries[q], cands[c]) for q, c in pairs], bool)
    return np.where(hit, 0.9, 0.3).astype(np.float32), np.full(len(pairs), 0.5, np.float32)


def _no_scorer():
  raise AssertionError("the MLLM was built although every score is stood in for")


def _write(name, tmp_path):
  return retllm_sets.write(name, str(tmp_path / name), SPEC, count=6)


def _chunk_files(folder):
  return [f for _, _, files in os.walk(folder) for f in files if f.startswith("chunk_")]


def _twice_as_two_processes(run, folder):
  """Process 1 then process 0 (each scores its own chunks, c mod 2; a no-op barrier): process
  1 leaves the odd chunks only, process 0 adds the even ones and returns the metrics."""
  assert run((1, 2)) is None
  odd = len(_chunk_files(folder))
  metrics = run((0, 2))
  assert 0 < odd == len(_chunk_files(folder)) // 2
  return metrics


def test_sugarcrepe_pointwise_and_listwise(tmp_path, monkeypatch):
  subsets = benchmarks.load("sugarcrepe", _write("sugarcrepe", tmp_path),
                            subsets=["add_obj", "swap_att"])
  positives = {c for s in subsets for c in s.positives}
  oracle = Oracle(lambda q, c: c.text in positives)
  monkeypatch.setattr(item_scoring, "score", oracle)

  named = {p for s in subsets for p in s.positives[:4]}  # rows 0-3 of each subset

  class Chooser:  # shown [negative, positive]: names the positive of rows 0-3 only
    calls = 0

    def choose_many(self, images, lists):
      Chooser.calls += len(images)
      index = np.asarray([1 if pos in named else 0 for _, pos in lists])
      return types.SimpleNamespace(index=index, probs=np.full((len(images), 2), 0.5),
                                   parsed=np.ones(len(images), bool))

  out = str(tmp_path / "out")
  m = choice_eval.run(subsets, HashEncoder(), lambda: "scorer", lambda s: Chooser(), out,
                      SETTINGS, scoring="both", barrier=lambda name: None, process=(0, 1))
  with open(os.path.join(out, "metrics.json")) as f:
    assert json.load(f)["acc_mean"] == m["acc_mean"]
  for s in ("add_obj", "swap_att"):
    assert m[f"pointwise_acc_{s}"] == 100.0
    assert m[f"listwise_acc_{s}"] == pytest.approx(100 * 4 / 6)
    assert m[f"acc_{s}"] == m[f"listwise_acc_{s}"]
    rows = subsets[0 if s == "add_obj" else 1]
    img = [HashEncoder().embed_images([rows.image(r).load_image()])[0] for r in range(6)]
    pos = HashEncoder().embed_texts(rows.positives)
    neg = HashEncoder().embed_texts(rows.negatives)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    want = np.mean([cos(img[r], pos[r]) > cos(img[r], neg[r]) for r in range(6)])
    assert m[f"clip_acc_{s}"] == pytest.approx(100 * want)
  assert m["clip_acc_mean"] == pytest.approx((m["clip_acc_add_obj"] + m["clip_acc_swap_att"]) / 2)
  assert oracle.pairs == 2 * 6 * 2 and Chooser.calls == 2 * 6
  # A rerun reads every chunk back: nothing is scored again.
  again = choice_eval.run(subsets, HashEncoder(), _no_scorer, None, out, SETTINGS,
                          scoring="pointwise", barrier=lambda name: None, process=(0, 1))
  assert oracle.pairs == 2 * 6 * 2
  assert again["acc_mean"] == again["pointwise_acc_mean"] == 100.0


def test_pointwise_tie_goes_to_lower_entropy_and_full_tie_is_a_miss():
  p = np.array([[0.5, 0.5], [0.5, 0.5], [0.6, 0.5], [0.4, 0.5]])
  e = np.array([[1.0, 2.0], [1.0, 1.0], [9.0, 0.0], [0.0, 9.0]])
  np.testing.assert_array_equal(choice_eval.pointwise_correct(p, e), [True, False, True, False])


def test_mmeb_hit1_per_subset_meta_task_and_processes(tmp_path, monkeypatch):
  tasks = benchmarks.load("mmeb", _write("mmeb", tmp_path), subsets=list(retllm_sets.MMEB_SUBSETS))
  positive = {(item_embed.item_key(t.queries[i]), item_embed.item_key(t.candidates[i][0]))
              for t in tasks for i in range(len(t))}
  oracle = Oracle(lambda q, c: (item_embed.item_key(q), item_embed.item_key(c)) in positive)
  monkeypatch.setattr(item_scoring, "score", oracle)
  one = mmeb_eval.run(tasks, HashEncoder(), lambda: "scorer", str(tmp_path / "one"), SETTINGS,
                      barrier=lambda name: None, process=(0, 1))
  two = _twice_as_two_processes(lambda proc: mmeb_eval.run(
      tasks, HashEncoder(), lambda: "scorer", str(tmp_path / "two"), SETTINGS,
      barrier=lambda name: None, process=proc), str(tmp_path / "two"))
  assert one == two
  for t in tasks:
    top = mmeb_eval._coarse(HashEncoder(), list(t.queries), *mmeb_eval._flatten(t.candidates),
                            3, str(tmp_path / "c"), t.name, 8)
    in_top = (top == 0).any(1)
    # The oracle finds the positive whenever CLIP put it among the K.
    assert one[f"hit1_{t.name}"] == pytest.approx(100 * in_top.mean())
    assert one[f"clip_hit1_{t.name}"] == pytest.approx(100 * (top[:, 0] == 0).mean())
  assert one["hit1_retrieval"] == pytest.approx(
      (one["hit1_MSCOCO_t2i"] + one["hit1_MSCOCO_i2t"]) / 2)
  assert one["hit1_classification"] == one["hit1_ImageNet-1K"]
  assert one["hit1_mean"] == pytest.approx(np.mean([one[f"hit1_{t.name}"] for t in tasks]))
  assert 0 < one["clip_hit1_mean"] < one["hit1_mean"]


def test_mixed_items_are_embedded_as_the_reference_mixes_them(tmp_path):
  enc = HashEncoder()
  img = np.zeros((4, 4, 3), np.uint8)
  both = Item(text="<|image_1|> a dog", image=lambda: img)
  v = item_embed.embed(enc, [both], item_embed.QUERY_WEIGHTS, cache_dir=str(tmp_path), tag="q")
  unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
  want = 0.8 * unit(enc.embed_images([img])[0]) + 0.2 * unit(enc.embed_texts(["a dog"])[0])
  np.testing.assert_allclose(v[0], want, rtol=1e-6)


def test_classification_from_our_labelled_readers(tmp_path):
  """class_source=data: config.data through data/registry.py, with Many/Medium/Few."""
  from configs import retllm_demo
  from retformer_jax.retllm import benchmark_data

  c = retllm_demo.get_config()
  c.retllm.dataset, c.retllm.class_source = "classification", "data"
  data = benchmark_data.load(c, "")
  assert data.name == "demo" and data.buckets is not None and data.num_classes == 20
  counts = demo_dataset.train_counts(demo_dataset.DemoSpec.from_config(c.data.demo))
  expect = np.where(counts > c.eval.many_above, 0, np.where(counts < c.eval.few_below, 2, 1))
  np.testing.assert_array_equal(data.buckets, expect)  # the eval stage's Many/Few thresholds
  c.eval.many_above = 10_000
  assert (benchmark_data.load(c, "").buckets > 0).all()
  assert data.prompts[0] == f"a photo of a {data.class_names[0]}."


def test_classification_top1_with_buckets(tmp_path, monkeypatch):
  spec = demo_dataset.DemoSpec(num_classes=6, max_per_class=150, imbalance=30, test_per_class=2)
  import dataclasses

  import ml_collections

  data = benchmarks.classification.from_splits(
      demo_dataset.load(ml_collections.ConfigDict(dataclasses.asdict(spec))), many_above=100,
      few_below=20)
  label_of = {id(it.image): int(y) for it, y in zip(data.images, data.labels)}
  oracle = Oracle(lambda q, c: data.class_names[label_of[id(q.image)]] == c.text)
  monkeypatch.setattr(item_scoring, "score", oracle)
  settings = pipeline.Settings(top_k=6, chunk_size=5, scorer_identity="fake")  # every class
  m = classify_eval.run(data, HashEncoder(), lambda: "scorer", str(tmp_path / "o"), settings,
                        barrier=lambda name: None, process=(0, 1))
  assert m["top1"] == m["many"] == m["medium"] == m["few"] == 100.0
  assert m["clip_top1"] < 100.0 and {"clip_many", "clip_medium", "clip_few"} <= set(m)
  assert oracle.pairs == len(data) * 6


def test_unknown_dataset_and_subset_are_one_line(tmp_path):
  from configs import retllm_demo
  from retformer_jax.retllm import benchmark_data

  c = retllm_demo.get_config()
  c.retllm.dataset = "flickr8k"
  with pytest.raises(benchmarks.BenchmarkLayoutError, match="choose one of flickr30k"):
    benchmark_data.family(c.retllm.dataset)
  c.retllm.dataset = "sugarcrepe"
  c.retllm.subsets = "add_att,swap_dog"
  folder = _write("sugarcrepe", tmp_path)
  with pytest.raises(benchmarks.BenchmarkLayoutError, match="Unknown SugarCrepe subset 'swap_dog'"):
    benchmark_data.load(c, folder)
