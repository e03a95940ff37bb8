"""`QuerySet`s from the KB stages' outputs: a split's store, its neighbours and the KB.

Only the query's image vector is read from its store: its own text (which would name its label)
never reaches the model.
"""

from __future__ import annotations

import numpy as np

from retformer_jax.kb import api, source_spec
from retformer_jax.train import input_pipeline


def query_set_from(store, neighbor_rows: np.ndarray, kb, k: int) -> input_pipeline.QuerySet:
  if neighbor_rows.shape[1] < k:
    raise ValueError(f"The neighbours hold k={neighbor_rows.shape[1]} per query but "
                     f"config.neighbors.k={k}; rerun the neighbors stage with this k.")
  return input_pipeline.QuerySet(image=store.image, labels=np.asarray(store.labels, np.int64),
                                 neighbor_rows=np.asarray(neighbor_rows[:, :k], np.int64), kb=kb)


def query_set(workdir: str, config, split: str, kb) -> input_pipeline.QuerySet:
  if split not in source_spec.query_splits(config):
    raise ValueError(f"Split {split!r} has no query store or neighbours: the embed/neighbors "
                     f"stages cover {source_spec.query_splits(config)}. Add it to "
                     "--config.data.eval_splits (or clear --config.train.eval_split).")
  store = api.open_query_store(workdir, config, split)
  nb = api.load_neighbors(workdir, config, split)
  return query_set_from(store, nb.rows, kb, config.neighbors.k)
