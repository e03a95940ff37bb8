"""Stages train and eval end to end on the demo set: retrieval must beat the MLP-only run on
Few-shot classes, and the query's own text never reaches the model while its neighbours'
texts do."""

from __future__ import annotations

import json
import os
import shutil
import types

import jax
import numpy as np
import pytest

from configs import demo as demo_config
from retformer_jax.kb import api
from retformer_jax.kb import neighbors as nb_lib
from retformer_jax.models import retformer as R
from retformer_jax.stages import embed, evaluate, index, neighbors, train
from retformer_jax.train import checkpointing, from_kb, input_pipeline


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_query_text_never_reaches_the_model_but_neighbour_texts_do():
  """The KB holds the query split itself (the training-time "downstream" KB): query q's own
  text sits in KB row q. Its neighbours come from the real self/duplicate-excluding search."""
  r = np.random.default_rng(0)
  n, d, k = 10, 8, 3
  image, text = _unit(r.normal(size=(n, d))), _unit(r.normal(size=(n, d)))
  store = types.SimpleNamespace(image=image, text=text, labels=np.arange(n) % 3)
  kb = input_pipeline.ArrayKB(image, text)  # shares store.text: editing one edits the other

  def brute_force(q, depth):
    s = q @ image.T
    rows = np.argsort(-s, axis=1, kind="stable")[:, :depth]
    return np.take_along_axis(s, rows, 1), rows

  rows, _ = nb_lib.search_excluding(image, np.arange(n), kb, brute_force, k,
                                    exclude_duplicates=True, extra_depth=1)
  m = R.RetFormer(R.ModelConfig(num_classes=3, num_layers=1, num_heads=2))
  apply = jax.jit(m.apply)

  def logits():
    b = from_kb.query_set_from(store, rows, kb, k).read(np.arange(n))
    assert set(b) == {"z", "nb_image", "nb_text", "label"}
    return np.asarray(apply(params, b["z"], b["nb_image"], b["nb_text"]))

  b = from_kb.query_set_from(store, rows, kb, k).read(np.arange(n))
  params = jax.jit(m.init)(jax.random.key(0), b["z"], b["nb_image"], b["nb_text"])
  base = logits()
  checked = 0
  for q in range(n):
    old = text[q].copy()
    text[q] = -3 * old + 1  # e.g. a caption that names the label
    out = logits()
    text[q] = old
    np.testing.assert_array_equal(out[q], base[q])  # its own text: no effect at all
    users = np.nonzero((rows == q).any(1))[0]
    for j in users:  # queries that have q as a neighbour read its text
      assert np.abs(out[j] - base[j]).max() > 1e-2, (q, j)
    checked += len(users)
  assert checked >= n


# ---------------------------------------------------------------- the demo, end to end

# 20 classes, 100 down to 2 training images (imbalance 50, like the README's demo), 6 test
# images per class; Many > 60, Few < 15 as in configs/demo.py. The full demo gives Few 63.81
# with retrieval vs 40.95 MLP-only; this one gives about 60 vs 27 in a fraction of the time.
# The margin fails when queries get other queries' neighbours; that the neighbours' texts are
# read at all is checked separately (image-only retrieval also beats the linear MLP here).


def _config(use_retrieval: bool):
  c = demo_config.get_config()
  c.data.demo.num_classes = 20
  c.data.demo.max_per_class = 100
  c.data.demo.imbalance = 50.0
  c.data.demo.test_per_class = 6
  c.data.demo.val_per_class = 1
  c.data.eval_splits = ("val", "test")
  c.embed.progress = False
  c.neighbors.k = 4
  c.train.eval_split = "val"
  c.train.epochs, c.train.batch_size = 10, 64
  c.eval.num_explained = 3
  c.model.use_retrieval = use_retrieval
  return c


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
  """{"retrieval": workdir, "mlp": workdir}: one set of KB stages, two trained models."""
  ret = str(tmp_path_factory.mktemp("retrieval"))
  c = _config(True)
  for stage in (embed, index, neighbors):
    stage.run(c, ret)
  mlp = str(tmp_path_factory.mktemp("mlp") / "w")
  shutil.copytree(ret, mlp)
  for wd, use in ((ret, True), (mlp, False)):
    for stage in (train, evaluate):
      stage.run(_config(use), wd)
  return {"retrieval": ret, "mlp": mlp}


def _metrics(wd, split="test"):
  with open(os.path.join(wd, "eval", split, "metrics.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_retrieval_beats_the_mlp_only_run_on_few(demo_runs):
  ret, mlp = _metrics(demo_runs["retrieval"]), _metrics(demo_runs["mlp"])
  assert ret["num_examples"] == mlp["num_examples"] == 120
  assert ret["few"] >= mlp["few"] + 0.2, (ret, mlp)
  assert ret["top1"] >= mlp["top1"] + 0.2, (ret, mlp)
  assert ret["top1"] >= 0.5  # chance is 0.05
  assert "retrieval_head" not in checkpointing.load_params(
      os.path.join(demo_runs["mlp"], "checkpoints"))


@pytest.mark.slow
def test_train_and_eval_stages_write_their_outputs_and_skip_when_done(demo_runs):
  wd = demo_runs["retrieval"]
  c = _config(True)
  for split in ("val", "test"):
    folder = os.path.join(wd, "eval", split)
    metrics = _metrics(wd, split)
    assert set(metrics) == {"top1", "many", "medium", "few", "top5", "num_examples", "step"}
    for png in ("per_class_accuracy.png", "explanations.png"):
      assert os.path.getsize(os.path.join(folder, png)) > 1000
    top = np.load(os.path.join(folder, "predictions.npy"))
    labels = api.open_query_store(wd, c, split).labels
    assert top.shape == (len(labels), 5)
    assert metrics["top1"] == pytest.approx((top[:, 0] == labels).mean())
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "eval")))
  lines = open(os.path.join(wd, "eval", "metrics.jsonl")).read().splitlines()
  assert {k for l in lines for k in json.loads(l)} >= {"val/top1", "test/few"}
  train_log = [json.loads(l) for l in open(os.path.join(wd, "train", "metrics.jsonl"))]
  assert any("val_top1" in r for r in train_log) and any("grad_norm" in r for r in train_log)
  # The stages skip work that is done; other JAX code can read the parameters alone.
  before = os.stat(os.path.join(wd, "eval", "test", "metrics.json")).st_mtime_ns
  train.run(c, wd)
  evaluate.run(c, wd)
  assert os.stat(os.path.join(wd, "eval", "test", "metrics.json")).st_mtime_ns == before
  params = checkpointing.load_params(os.path.join(wd, "checkpoints"))
  assert params["retrieval_head"]["kernel"].shape[-1] == 20
  assert isinstance(params["backbone_head"]["kernel"], np.ndarray)


def _overwrite_text(store_dir, new_text):
  """Replaces a finished store's text.npy (what a different embedding of its captions would
  leave on disk); the manifest is untouched, so no stage notices."""
  tmp = os.path.join(store_dir, ".text-new.npy")
  np.save(tmp, new_text.astype(np.float16))
  os.replace(tmp, os.path.join(store_dir, "text.npy"))


@pytest.mark.slow
def test_query_texts_on_disk_never_change_predictions_but_kb_texts_do(demo_runs, tmp_path):
  wd = str(tmp_path / "w")
  shutil.copytree(demo_runs["retrieval"], wd)
  c = _config(True)
  params = checkpointing.load_params(os.path.join(wd, "checkpoints"))
  model = R.RetFormer(R.ModelConfig.from_config(c.model, 20))

  def logits():
    data = from_kb.query_set(wd, c, "test", api.open_kb(wd, c))
    b = data.read(np.arange(len(data)))
    return np.asarray(model.apply({"params": params}, b["z"], b["nb_image"], b["nb_text"]))

  def predictions():
    os.remove(os.path.join(wd, "eval", "test", "inputs.json"))  # force a fresh evaluation
    evaluate.run(c, wd)
    return np.load(os.path.join(wd, "eval", "test", "predictions.npy"))

  base, base_top = logits(), predictions()
  # The test split's own texts (its captions name the labels): scrambled, negated, rolled.
  query = api.open_query_store(wd, c, "test")
  r = np.random.default_rng(0)
  _overwrite_text(query.path, -np.roll(np.asarray(query.text, np.float32), 7, axis=0)
                  + r.normal(size=query.text.shape))
  assert not np.array_equal(api.open_query_store(wd, c, "test").text, query.text)
  np.testing.assert_array_equal(logits(), base)
  np.testing.assert_array_equal(predictions(), base_top)
  # The KB texts of the test queries' neighbours (here the training split): each neighbour
  # now carries the caption of another KB row.
  rows = np.unique(api.load_neighbors(wd, c, "test").rows)
  kb_store = api.open_query_store(wd, c, "train")
  kb_text = np.asarray(kb_store.text, np.float32)
  kb_text[rows] = kb_text[np.roll(rows, len(rows) // 2)]
  _overwrite_text(kb_store.path, kb_text)
  changed = logits()
  assert np.abs(changed - base).max() > 0.5
  assert (predictions()[:, 0] != base_top[:, 0]).mean() > 0.1
