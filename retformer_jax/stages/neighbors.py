"""Stage `neighbors`: top-k KB neighbours of every query split (train split + eval splits).

Splits whose index and query store are unchanged are skipped; config.neighbors.splits limits
the work to some splits (e.g. only "test" after growing the KB, to evaluate a checkpoint).
See retformer_jax/kb/neighbors.py.
"""

from __future__ import annotations

from retformer_jax.kb import api, neighbors, source_spec


def run(config, workdir: str) -> None:
  index = api.open_index(workdir, config)
  kb = api.open_kb(workdir, config)
  splits = list(config.neighbors.splits) or source_spec.query_splits(config)
  for split in splits:
    neighbors.compute_split(workdir, config, split, kb, index)
