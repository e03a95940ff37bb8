"""Stage `eval`: top-1 overall / Many / Medium / Few (and top-5) of a RetFormer checkpoint on
each of config.data.eval_splits, with plots, into WORKDIR/eval/<split>/.

The checkpoint is config.checkpoint.step (-1 = best by validation top-1 if recorded, else the
latest; a damaged one is reported and the next newest used), restored straight into this job's
mesh. Only a run that finished training is reported, unless a step is asked for explicitly. A
split whose metrics already match the run, the checkpoint and the neighbours on disk is
skipped. To evaluate against an updated KB, rerun the index and neighbors stages with the new
config.kb.sources, then this stage.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from retformer_jax import atomic_io
from retformer_jax.data import registry
from retformer_jax.evaluation import evaluator
from retformer_jax.kb import api
from retformer_jax.train import checkpointing, from_kb, run_record
from retformer_jax.train.metric_writer import MetricWriter


def _inputs_key(config, run: str, step: int, nb_fingerprint: str) -> dict:
  return {"run": run, "step": step, "neighbors": nb_fingerprint,
          "model": config.model.to_dict(),
          "many_above": config.eval.many_above, "few_below": config.eval.few_below,
          "top5": config.eval.top5}


def run(config, workdir: str) -> None:
  labelled = registry.load(config.data)
  counts = np.asarray(labelled.train_counts, np.int64)
  kb = api.open_kb(workdir, config)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  step = config.checkpoint.step
  record = run_record.for_eval(ckpt_dir, config, explicit_step=step >= 0)
  resolved = checkpointing.resolve_step(ckpt_dir, step)
  restored = None
  writer = MetricWriter(os.path.join(workdir, "eval"))
  try:
    for split in config.data.eval_splits:
      data = from_kb.query_set(workdir, config, split, kb)
      nb_fp = api.load_neighbors(workdir, config, split).fingerprint
      out_dir = os.path.join(workdir, "eval", split)
      key = _inputs_key(config, record["fingerprint"], resolved, nb_fp)
      key_path = os.path.join(out_dir, "inputs.json")
      if os.path.exists(key_path) and os.path.exists(os.path.join(out_dir, "metrics.json")):
        with open(key_path) as f:
          if json.load(f) == key:
            logging.info("eval %s: up to date (step %d), skipped.", split, resolved)
            with open(os.path.join(out_dir, "metrics.json")) as f:
              _print_report(config, split, json.load(f), cached=True)
            continue
      if restored is None:
        restored = evaluator.restore(config, ckpt_dir, labelled.num_classes, data.k,
                                     data.image.shape[1], step)
      if restored.step != resolved:  # the resolved checkpoint was damaged; an older one is used
        key = _inputs_key(config, record["fingerprint"], restored.step, nb_fp)
      store = api.open_query_store(workdir, config, split)
      source = labelled.splits.get(split)
      image = ((lambda row: source[int(store.source_index[row])]["image"])
               if source is not None else (lambda row: None))
      explainer = evaluator.Explainer(captions=kb.captions, kb_labels=kb.labels, image=image)
      report = evaluator.evaluate(config, restored, split, data, counts, labelled.class_names,
                                  out_dir, explainer, writer)
      if jax.process_index() == 0:
        atomic_io.write_json(key_path, key)
      _print_report(config, split, report)
  finally:
    writer.close()


def _print_report(config, split: str, report: dict, cached: bool = False) -> None:
  fmt = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
  line = (f"[eval {config.data.name}:{split}] top-1 {fmt(report['top1'])}  Many "
          f"{fmt(report['many'])}  Medium {fmt(report['medium'])}  Few {fmt(report['few'])}"
          + (f"  top-5 {fmt(report['top5'])}" if config.eval.top5 else "")
          + f"  ({report['num_examples']} examples, step {report['step']}"
          + (", cached)" if cached else ")"))
  logging.info("%s", line)
  print(line, flush=True)
