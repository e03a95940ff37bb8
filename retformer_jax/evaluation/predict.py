"""Top-k predictions over a whole split, every host running the same padded batches."""

from __future__ import annotations

import numpy as np
from jax.sharding import NamedSharding

from retformer_jax import progress
from retformer_jax.train import input_pipeline


def predict(eval_step, params, data: input_pipeline.QuerySet, global_batch: int,
            sharding: NamedSharding, what: str = "predict") -> np.ndarray:
  """int32 [N, topk] class indices, best first, for every example of `data`."""
  out = None
  bar = progress.Progress(what, len(data), "examples")
  for batch, idx, mask in input_pipeline.eval_batches(data, global_batch, sharding):
    top = np.asarray(eval_step(params, batch))
    if out is None:
      out = np.zeros((len(data), top.shape[1]), np.int32)
    out[idx[mask]] = top[mask]
    bar.update(int(mask.sum()))
  bar.done()
  if out is None:
    raise ValueError("Cannot evaluate an empty split.")
  return out
