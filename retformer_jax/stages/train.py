"""Stage `train`: RetFormer on the training split's query vectors and their KB neighbours.

Checkpoints go to WORKDIR/checkpoints (orbax), training curves to WORKDIR/train/metrics.jsonl
and TensorBoard events. Rerunning resumes from the latest checkpoint; a finished run is skipped.
"""

from __future__ import annotations

import os

import numpy as np

from retformer_jax import errors
from retformer_jax.data import registry
from retformer_jax.evaluation import evaluator
from retformer_jax.kb import api
from retformer_jax.train import from_kb, loop


def run(config, workdir: str) -> None:
  labelled = registry.load(config.data)
  kb = api.open_kb(workdir, config)
  train = from_kb.query_set(workdir, config, config.data.train_split, kb)
  counts = np.asarray(labelled.train_counts, np.int64)
  known = np.asarray(train.labels)[np.asarray(train.labels) >= 0]
  if known.size and known.max() >= len(counts):
    raise errors.UserError(
        f"Training labels reach {known.max()} but {config.data.name} has {len(counts)} "
        f"classes; the query store belongs to another data set. Delete the entries of "
        f"{os.path.join(workdir, 'store')} and rerun embed.")
  fingerprints = {config.data.train_split: api.load_neighbors(
      workdir, config, config.data.train_split).fingerprint}
  data = loop.TrainData(train=train, train_counts=counts, neighbor_fingerprints=fingerprints)
  setup = loop.make_setup(config, data)
  evaluate = None
  if config.train.eval_split:
    split = config.train.eval_split
    fingerprints[split] = api.load_neighbors(workdir, config, split).fingerprint
    evaluate = evaluator.validation(config, setup, from_kb.query_set(workdir, config, split, kb),
                                    counts)
  loop.train(config, workdir, data, evaluate=evaluate, setup=setup)
