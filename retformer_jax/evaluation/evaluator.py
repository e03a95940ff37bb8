"""Evaluate a RetFormer checkpoint on a split, on whatever mesh this job has.

Writes to OUT_DIR (= WORKDIR/eval/<split>): metrics.json (top1, many, medium, few, top5,
num_examples, step), predictions.npy, per_class_accuracy.png, explanations.png; appends the
same scalars to WORKDIR/eval/metrics.jsonl and TensorBoard events. Process 0 writes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from retformer_jax import atomic_io
from retformer_jax.data import base
from retformer_jax.evaluation import metrics as metrics_lib
from retformer_jax.evaluation import plots
from retformer_jax.evaluation import predict as predict_lib
from retformer_jax.models import retformer
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.train import checkpointing, input_pipeline
from retformer_jax.train import setup as setup_lib
from retformer_jax.train import state as state_lib
from retformer_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Explainer:
  """Host-side lookups for the explanation sheet (all optional but `captions`)."""

  captions: Callable[[np.ndarray], list[str]]  # KB rows -> captions
  kb_labels: Callable[[np.ndarray], np.ndarray]  # KB rows -> labels (-1 unknown)
  image: Callable[[int], np.ndarray | None] = lambda row: None  # query row -> uint8 HWC


@dataclasses.dataclass
class Restored:
  mesh: Any
  rules: Any
  model: Any
  params: Any
  param_shardings: Any
  step: int


def restore(config, ckpt_dir: str, num_classes: int, k: int, dim: int,
            step: int | None = None) -> Restored:
  """The model and its parameters, restored straight into this job's mesh."""
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.axis_rules(config.mesh)
  model = retformer.build(config.model, num_classes)
  example = state_lib.example_inputs(config.eval.batch_size, k, dim)
  target = state_lib.param_shardings(model, example, mesh, rules)
  step, params = checkpointing.load_params_with_step(ckpt_dir, step, target)
  return Restored(mesh, rules, model, params, jax.tree.map(lambda t: t.sharding, target), step)


def accuracy(config, top: np.ndarray, data: input_pipeline.QuerySet,
             train_counts: np.ndarray) -> dict:
  return metrics_lib.accuracy_report(
      top, data.labels, train_counts, many_above=config.eval.many_above,
      few_below=config.eval.few_below, with_top5=config.eval.top5)


def validation(config, setup: setup_lib.TrainSetup, data: input_pipeline.QuerySet,
               train_counts: np.ndarray):
  """`evaluate(params) -> report` on a held-out split, on the training run's mesh: the
  callback with which the training loop picks its best checkpoint."""
  eval_step = setup.eval_step(topk=min(5, len(train_counts)))

  def evaluate(params) -> dict:
    top = predict_lib.predict(eval_step, params, data, config.eval.batch_size,
                              setup.batch_sharding, what="validation")
    return accuracy(config, top, data, train_counts)

  return evaluate


def _pick_explained(labels, buckets_c, n: int) -> np.ndarray:
  """Up to n examples of distinct classes, taking Few, Medium and Many classes in turn."""
  labels = np.asarray(labels)
  first = {}
  for i, label in enumerate(labels):
    if label >= 0 and int(label) not in first:
      first[int(label)] = i
  pools = [[first[c] for c in sorted(first) if buckets_c[c] == b] for b in (2, 1, 0)]
  out = []
  while len(out) < n and any(pools):
    for pool in pools:
      if pool and len(out) < n:
        out.append(pool.pop(0))
  return np.asarray(out, np.int64)


def evaluate(config, r: Restored, split: str, data: input_pipeline.QuerySet,
             train_counts: np.ndarray, class_names: Sequence[str], out_dir: str,
             explainer: Explainer | None = None, writer=None) -> dict:
  num_classes = len(class_names)
  bsh = mesh_lib.batch_sharding(r.mesh)
  eval_step = step_lib.jit_eval_step(r.model, r.mesh, r.rules, r.param_shardings,
                                     topk=min(5, num_classes))
  top = predict_lib.predict(eval_step, r.params, data, config.eval.batch_size, bsh,
                            what=f"eval {split}")
  report = accuracy(config, top, data, train_counts)
  report["step"] = int(r.step)
  buckets = base.shot_buckets(train_counts, config.eval.many_above, config.eval.few_below)
  explained = None
  if explainer is not None and config.eval.num_explained > 0 and r.model.cfg.use_retrieval:
    explained = _explain(config, r, data, top, buckets, class_names, explainer)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    atomic_io.save_npy(os.path.join(out_dir, "predictions.npy"), top)
    atomic_io.write_json(os.path.join(out_dir, "metrics.json"), report, indent=2)
    labels = np.asarray(data.labels)
    keep = labels >= 0
    acc_c = metrics_lib.per_class_accuracy(top[keep, 0], labels[keep], num_classes)
    plots.per_class_accuracy(
        os.path.join(out_dir, "per_class_accuracy.png"), acc_c, train_counts, buckets,
        f"{config.data.name}:{split} step {r.step}: top-1 {report['top1']:.3f}")
    if explained:
      plots.explanation_sheet(os.path.join(out_dir, "explanations.png"), explained,
                              f"{config.data.name}:{split} step {r.step}: query attention "
                              "over its neighbours (green = neighbour of the true class)")
    if writer is not None:
      writer.write(r.step, {k: v for k, v in report.items() if k not in ("step",)},
                   f"{split}/")
  return report


def _explain(config, r, data, top, buckets, class_names, explainer) -> list[dict]:
  idx = _pick_explained(data.labels, buckets, config.eval.num_explained)
  if idx.size == 0:
    return []
  sub = input_pipeline.QuerySet(image=np.asarray(data.image[idx]), labels=data.labels[idx],
                                neighbor_rows=data.neighbor_rows[idx], kb=data.kb)
  bsh = mesh_lib.batch_sharding(r.mesh)
  step = step_lib.jit_explain_step(r.model, r.mesh, r.rules, r.param_shardings)
  n_data = r.mesh.shape["data"]
  batch_size = -(-len(idx) // n_data) * n_data
  attn = None
  for batch, bidx, mask in input_pipeline.eval_batches(sub, batch_size, bsh):
    _, a = step(r.params, batch)
    attn = np.asarray(a)[mask]
  name = lambda c: class_names[c] if 0 <= c < len(class_names) else "unknown"
  out = []
  for i, row in enumerate(idx):
    rows = data.neighbor_rows[row]
    q = data.image[row]
    sims = np.asarray(data.kb.image(rows), np.float32) @ np.asarray(q, np.float32)
    out.append({
        "image": explainer.image(int(row)), "true": name(int(data.labels[row])),
        "predicted": name(int(top[row, 0])), "attention": attn[i],
        "captions": explainer.captions(rows),
        "neighbor_labels": [name(int(l)) for l in explainer.kb_labels(rows)], "sims": sims})
  return out
