"""Stage `train`: RetFormer on the training split's query vectors and their KB neighbours.

Checkpoints go to WORKDIR/checkpoints (orbax), training curves to WORKDIR/train/metrics.jsonl
and TensorBoard events. Rerunning resumes from the latest checkpoint; a finished run is skipped.
"""

from __future__ import annotations

import os

import numpy as np

from retformer_jax.data import registry
from retformer_jax.train import from_kb, loop


def run(config, workdir: str) -> None:
  from retformer_jax.kb import api

  labelled = registry.load(config.data)
  kb = api.open_kb(workdir, config)
  train = from_kb.query_set(workdir, config, config.data.train_split, kb)
  val = (from_kb.query_set(workdir, config, config.train.eval_split, kb)
         if config.train.eval_split else None)
  counts = np.asarray(labelled.train_counts, np.int64)
  known = np.asarray(train.labels)[np.asarray(train.labels) >= 0]
  if known.size and known.max() >= len(counts):
    raise ValueError(f"Training labels reach {known.max()} but {config.data.name} has "
                     f"{len(counts)} classes; the query store belongs to another data set — "
                     f"delete {os.path.join(workdir, 'store')} entries and rerun embed.")
  fingerprints = {config.data.train_split: api.load_neighbors(
      workdir, config, config.data.train_split).fingerprint}
  if config.train.eval_split:
    fingerprints[config.train.eval_split] = api.load_neighbors(
        workdir, config, config.train.eval_split).fingerprint
  loop.train(config, workdir, loop.TrainData(train=train, val=val, train_counts=counts,
                                             neighbor_fingerprints=fingerprints))
