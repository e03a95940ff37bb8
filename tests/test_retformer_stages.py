"""Stages train and eval end to end on a small demo set, and the query's own text never
reaching the model through the KB inputs."""

from __future__ import annotations

import json
import os
import types

import jax
import numpy as np

from retformer_jax.models import retformer as R
from retformer_jax.stages import embed, evaluate, index, neighbors, train
from retformer_jax.train import checkpointing, from_kb, input_pipeline
from test_kb_stages import small_config


def test_query_text_of_the_store_never_reaches_the_model():
  r = np.random.default_rng(0)
  n, d, k = 6, 8, 3
  kb = input_pipeline.ArrayKB(r.normal(size=(10, d)).astype(np.float32),
                              r.normal(size=(10, d)).astype(np.float32))
  rows = r.integers(0, 10, (n, k))
  store = types.SimpleNamespace(image=r.normal(size=(n, d)).astype(np.float16),
                                text=r.normal(size=(n, d)).astype(np.float16),
                                labels=np.arange(n) % 3)
  m = R.RetFormer(R.ModelConfig(num_classes=3, num_layers=1, num_heads=2))
  batch = from_kb.query_set_from(store, rows, kb, k).read(np.arange(n))
  assert set(batch) == {"z", "nb_image", "nb_text", "label"}
  v = m.init(jax.random.key(0), batch["z"], batch["nb_image"], batch["nb_text"])
  out = m.apply(v, batch["z"], batch["nb_image"], batch["nb_text"])
  store.text = store.text * -3 + 1  # a different query text (e.g. a caption naming the label)
  again = from_kb.query_set_from(store, rows, kb, k).read(np.arange(n))
  for key in batch:
    np.testing.assert_array_equal(batch[key], again[key])
  np.testing.assert_array_equal(m.apply(v, again["z"], again["nb_image"], again["nb_text"]), out)


def test_train_and_eval_stages_on_the_demo(tmp_path):
  wd = str(tmp_path)
  c = small_config()
  c.data.eval_splits = ("val", "test")
  c.train.eval_split = "val"
  c.model.num_layers, c.model.num_heads, c.model.mlp_ratio = 1, 2, 2
  c.train.batch_size, c.train.epochs, c.train.lr, c.train.loss = 16, 3, 1e-2, "lace"
  c.eval.batch_size, c.eval.num_explained = 8, 3
  for stage in (embed, index, neighbors, train, evaluate):
    stage.run(c, wd)
  for split in ("val", "test"):
    folder = os.path.join(wd, "eval", split)
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    assert set(metrics) == {"top1", "many", "medium", "few", "top5", "num_examples", "step"}
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["num_examples"] > 0
    for png in ("per_class_accuracy.png", "explanations.png"):
      assert os.path.getsize(os.path.join(folder, png)) > 1000
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
  assert params["retrieval_head"]["kernel"].shape[-1] == 4
  assert isinstance(params["backbone_head"]["kernel"], np.ndarray)
